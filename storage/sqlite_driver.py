"""aiosqlite under SQLAlchemy: ONE thread hop per statement, or none on the connection's thread.

SQLAlchemy's aiosqlite adapter makes a round trip to the connection's thread to create a
cursor, another to execute, another to fetch and another to close it (~70 µs each on a busy
2-core machine, most of a statement's cost). This adapter queues one function on the same
aiosqlite thread that does all four and hands back the rows with the description, rowcount
and lastrowid, so SQLAlchemy sees an ordinary DB-API cursor. It also skips the hop of a
COMMIT or ROLLBACK when SQLite says no transaction is open (single-statement reads run in
autocommit). Everything else (connecting, closing, errors, the thread) is aiosqlite's own.

Inline mode: `on_thread(connection, work)` runs `work()` on the connection's own thread in
one hop, and while it runs every statement, COMMIT and ROLLBACK that SQLAlchemy sends to
that connection from that thread executes right there, synchronously: SQLAlchemy's
execution finishes without awaiting anything, so a whole batch of transactions costs one hop
(storage/inline.py drives them; storage/group_commit.py and storage/reader.py use it).

It relies on `aiosqlite.Connection._execute`, the private queue SQLAlchemy's adapter also
reaches into (its isolation_level setter); aiosqlite is pinned to a tested lower bound.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import Callable
from threading import get_ident
from typing import Any, TypeVar, cast

import aiosqlite
import sqlalchemy
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT

_Outcome = tuple[Any, list[Any], int, int | None, bool]
T = TypeVar("T")

# The adapter builds on the asyncio adapter layout of SQLAlchemy 2.1 (and aiosqlite's
# queue); with anything older, storage.engine keeps SQLAlchemy's own aiosqlite adapter.
SUPPORTED = tuple(int(part) for part in sqlalchemy.__version__.split(".")[:2]) >= (2, 1) and (
    hasattr(aiosqlite.Connection, "_execute")
)


def _run_statement(
    conn: sqlite3.Connection, prelude: list[str], operation: str, parameters: Any
) -> _Outcome:
    """On the connection's thread: the deferred statements, then execute, fetch, close."""
    for statement in prelude:
        conn.execute(statement)
    cursor = conn.cursor()
    try:
        cursor.execute(operation, () if parameters is None else parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, rows, cursor.rowcount, cursor.lastrowid, conn.in_transaction
    finally:
        cursor.close()


class _OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    __slots__ = ("_description", "_lastrowid", "_rowcount")

    # close() must not await anything: there is no aiosqlite cursor left to close.
    _awaitable_cursor_close = False

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection) -> None:
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> Any:
        return self._lastrowid

    @property
    def arraysize(self) -> int:
        return 1

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        pass

    async def _async_soft_close(self) -> None:
        return None

    def close(self) -> None:
        self._rows.clear()

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        adapt = cast("OneHopConnection", self._adapt_connection)
        if adapt.inline_thread == get_ident():  # on the connection's thread: run it now
            self._take(
                _run_statement(adapt._connection._conn, adapt.take_prelude(), operation, parameters)
            )
            adapt.in_transaction = adapt._connection._conn.in_transaction
            return None
        return super().execute(operation, parameters)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        adapt = cast("OneHopConnection", self._adapt_connection)
        if adapt.inline_thread == get_ident():
            conn = adapt._connection._conn
            self._rowcount, adapt.in_transaction = _run_many(
                conn, adapt.take_prelude(), operation, seq_of_parameters
            )
            self._description = None
            return None
        return super().executemany(operation, seq_of_parameters)

    def _take(self, outcome: _Outcome) -> None:
        self._description, rows, self._rowcount, self._lastrowid, _in_tx = outcome
        self._rows = deque(rows)

    async def _execute_async(self, operation: Any, parameters: Any) -> Any:
        adapt = cast("OneHopConnection", self._adapt_connection)
        async with adapt._execute_mutex:
            adapt.in_transaction = True  # unknown until the statement answers
            outcome: _Outcome = await self._connection._execute(
                _run_statement, self._connection._conn, adapt.take_prelude(), operation, parameters
            )
            self._take(outcome)
            adapt.in_transaction = outcome[4]
            return None

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> Any:
        adapt = cast("OneHopConnection", self._adapt_connection)
        async with adapt._execute_mutex:
            adapt.in_transaction = True
            self._rowcount, adapt.in_transaction = await self._connection._execute(
                _run_many,
                self._connection._conn,
                adapt.take_prelude(),
                operation,
                seq_of_parameters,
            )
            self._description = None
            return None


def _run_many(
    conn: sqlite3.Connection, prelude: list[str], operation: str, seq_of_parameters: Any
) -> tuple[int, bool]:
    for statement in prelude:
        conn.execute(statement)
    cursor = conn.executemany(operation, seq_of_parameters)
    try:
        return cursor.rowcount, conn.in_transaction
    finally:
        cursor.close()


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ("in_transaction", "inline_thread", "prelude")

    _cursor_cls = _OneHopCursor  # type: ignore[assignment]

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        # Not known yet: the first COMMIT/ROLLBACK goes to the thread and finds out.
        self.in_transaction = True
        # Statements without results (BEGIN, SAVEPOINT) that ride along with the next one.
        self.prelude: list[str] = []
        # The connection's thread while `on_thread` runs there: statements run inline.
        self.inline_thread: int | None = None

    def defer(self, statement: str) -> None:
        """Run `statement` just before the next one, in the same hop. If it fails, the
        next statement fails with its error; if none follows, it never runs."""
        self.prelude.append(statement)

    def undefer(self, statement: str) -> bool:
        """Take back `statement` if it has not run yet. True if it was still pending."""
        if self.prelude and self.prelude[-1] == statement:
            self.prelude.pop()
            return True
        return False

    def take_prelude(self) -> list[str]:
        prelude, self.prelude = self.prelude, []
        return prelude

    def commit(self) -> None:
        self.prelude.clear()  # a BEGIN with nothing after it: nothing to commit
        if self.inline_thread == get_ident():
            self._end_inline("COMMIT")
        elif self.in_transaction:
            super().commit()
            self.in_transaction = False

    def rollback(self) -> None:
        self.prelude.clear()
        if self.inline_thread == get_ident():
            self._end_inline("ROLLBACK")
        elif self.in_transaction:
            super().rollback()
            self.in_transaction = False

    def close(self) -> None:
        if self.inline_thread == get_ident():
            # SQLAlchemy gives up on the connection (it invalidates it after a fatal
            # error): aiosqlite closes it and stops its thread once this hop is over.
            self._connection.stop()
            return
        super().close()

    def _end_inline(self, statement: str) -> None:
        conn = self._connection._conn
        try:
            if conn.in_transaction:
                conn.execute(statement)
        finally:
            self.in_transaction = conn.in_transaction


async def on_thread(connection: OneHopConnection, work: Callable[[], T]) -> T:
    """`work()` on the connection's own thread, in one hop; the connection's statements,
    COMMITs and ROLLBACKs run inline meanwhile. The hop runs to its end even if the
    awaiting task is cancelled (aiosqlite's queue), like every statement here."""
    result: T = await connection._connection._execute(_inline, connection, work)
    return result


def _inline(connection: OneHopConnection, work: Callable[[], T]) -> T:
    connection.inline_thread = get_ident()
    try:
        return work()
    finally:
        connection.inline_thread = None


class OneHopDbapi(AsyncAdapt_aiosqlite_dbapi):
    """Pass as `module=` to create_async_engine for a `sqlite+aiosqlite` URL."""

    def connect(self, *arg: Any, **kw: Any) -> OneHopConnection:
        adapted = super().connect(*arg, **kw)
        return OneHopConnection(self, adapted._connection)


def dbapi() -> OneHopDbapi:
    return OneHopDbapi(aiosqlite, sqlite3)
