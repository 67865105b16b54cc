"""aiosqlite under SQLAlchemy with ONE thread hop per statement instead of four.

SQLAlchemy's aiosqlite adapter makes a round trip to the connection's thread to create a
cursor, another to execute, another to fetch and another to close it (~70 µs each on a busy
2-core machine, most of a statement's cost). This adapter queues one function on the same
aiosqlite thread that does all four and hands back the rows with the description, rowcount
and lastrowid, so SQLAlchemy sees an ordinary DB-API cursor. It also skips the hop of a
COMMIT or ROLLBACK when SQLite says no transaction is open (single-statement reads run in
autocommit). Everything else (connecting, closing, errors, the thread) is aiosqlite's own.

It relies on `aiosqlite.Connection._execute`, the private queue SQLAlchemy's adapter also
reaches into (its isolation_level setter); aiosqlite is pinned to a tested lower bound.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from typing import Any

import aiosqlite
import sqlalchemy
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT

_Outcome = tuple[Any, list[Any], int, int | None, bool]

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

    async def _execute_async(self, operation: Any, parameters: Any) -> Any:
        adapt = self._adapt_connection
        assert isinstance(adapt, OneHopConnection)
        async with adapt._execute_mutex:
            adapt.in_transaction = True  # unknown until the statement answers
            prelude, adapt.prelude = adapt.prelude, []
            outcome: _Outcome = await self._connection._execute(
                _run_statement, self._connection._conn, prelude, operation, parameters
            )
            self._description, rows, self._rowcount, self._lastrowid, in_tx = outcome
            adapt.in_transaction = in_tx
            self._rows = deque(rows)
            return None

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> Any:
        adapt = self._adapt_connection
        assert isinstance(adapt, OneHopConnection)
        async with adapt._execute_mutex:
            adapt.in_transaction = True
            conn = self._connection._conn
            prelude, adapt.prelude = adapt.prelude, []

            def run() -> tuple[int, bool]:
                for statement in prelude:
                    conn.execute(statement)
                cursor = conn.executemany(operation, seq_of_parameters)
                try:
                    return cursor.rowcount, conn.in_transaction
                finally:
                    cursor.close()

            self._rowcount, adapt.in_transaction = await self._connection._execute(run)
            self._description = None
            return None


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ("in_transaction", "prelude")

    _cursor_cls = _OneHopCursor  # type: ignore[assignment]

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        # Not known yet: the first COMMIT/ROLLBACK goes to the thread and finds out.
        self.in_transaction = True
        # Statements without results (BEGIN, SAVEPOINT) that ride along with the next one.
        self.prelude: list[str] = []

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

    def commit(self) -> None:
        self.prelude.clear()  # a BEGIN with nothing after it: nothing to commit
        if self.in_transaction:
            super().commit()
            self.in_transaction = False

    def rollback(self) -> None:
        self.prelude.clear()
        if self.in_transaction:
            super().rollback()
            self.in_transaction = False


class OneHopDbapi(AsyncAdapt_aiosqlite_dbapi):
    """Pass as `module=` to create_async_engine for a `sqlite+aiosqlite` URL."""

    def connect(self, *arg: Any, **kw: Any) -> OneHopConnection:
        adapted = super().connect(*arg, **kw)
        return OneHopConnection(self, adapted._connection)


def dbapi() -> OneHopDbapi:
    return OneHopDbapi(aiosqlite, sqlite3)
