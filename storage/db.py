"""The database: SQLAlchemy Core (async) over aiosqlite or asyncpg (see storage/engine.py).

Every repository call is ONE transaction that no caller runs itself, so a cancelled caller
(a handler timing out, a shutdown) cannot cut it in half: it goes on to COMMIT or ROLLBACK,
the caller just does not see the outcome, and `close()` waits for it.

- SQLite writes: one writer task, several calls per COMMIT, a SAVEPOINT each
  (storage/group_commit.py); single-statement reads: one reader task on its own connection
  (storage/reader.py). Each task owns its connection, and runs each batch of calls in one
  hop to that connection's thread (storage/inline.py): there a call may await only its
  statements.
- Everything else (PostgreSQL, snapshot reads): a task of its own on its own pooled
  connection, awaited through `asyncio.shield`. Two tasks never share a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage import migrate as _migrate
from storage.broadcasts import Broadcasts
from storage.codes import Codes
from storage.engine import Engines, database_path, make_engines
from storage.errors import DatabaseUnavailable
from storage.fsm import FsmData
from storage.group_commit import GroupCommit
from storage.kv import KeyValue
from storage.orders import Orders
from storage.outbox import Outbox
from storage.payments import Payments
from storage.reader import SerialReader
from storage.stats import Stats
from storage.updates import HandledUpdates
from storage.users import Users
from storage.wallet import Wallet

T = TypeVar("T")
Tx = Callable[[AsyncConnection], Awaitable[T]]

__all__ = ["Database", "database_path"]


class Database:
    """Open with `await Database.open(url)`; close with `await db.close()` (or `async with`)."""

    def __init__(self, engines: Engines) -> None:
        self._engines = engines
        self.is_sqlite = engines.is_sqlite
        # SQLite has one writer at a time anyway (BEGIN IMMEDIATE): one writer task runs the
        # queued write calls, several per COMMIT (storage/group_commit.py). It BEGINs itself,
        # on a connection without SQLAlchemy's per-statement event dispatch.
        self._group = GroupCommit(engines.base) if engines.is_sqlite else None
        # ... and one reader task answers single-statement reads (storage/reader.py).
        self._reader = SerialReader(engines.read) if engines.is_sqlite else None
        self._running: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.users = Users(self)
        self.orders = Orders(self)
        self.codes = Codes(self)
        self.wallet = Wallet(self)
        self.kv = KeyValue(self)
        self.stats = Stats(self)
        self.payments = Payments(self)
        self.fsm = FsmData(self)
        self.outbox = Outbox(self)
        self.broadcasts = Broadcasts(self)
        self.updates = HandledUpdates(self)

    @property
    def engine(self) -> AsyncEngine:
        return self._engines.base

    @property
    def path(self) -> Path:
        """The SQLite file (ValueError on PostgreSQL)."""
        database = self._engines.base.url.database
        if not self.is_sqlite or not database:
            raise ValueError("not a SQLite database")
        return Path(database)

    @classmethod
    async def open(cls, url_or_path: str | Path) -> Database:
        """Open (creating folders and file as needed) and upgrade the schema to the latest.

        `url_or_path`: DATABASE_URL in any accepted spelling (`sqlite:///path`,
        `sqlite+aiosqlite:///path`, `postgresql://...`, `postgresql+asyncpg://...`) or a path.
        """
        db = cls(make_engines(url_or_path))
        try:
            await _reach(db._engines.base)
            await _migrate.upgrade(db._engines)
        except BaseException:
            await db._engines.base.dispose()
            raise
        return db

    async def drain(self) -> None:
        """Wait until every transaction started so far has ended, including those whose
        callers were cancelled (they still commit or roll back on their own)."""
        while self._running or (self._group is not None and self._group.busy):
            await asyncio.gather(*list(self._running), return_exceptions=True)
            if self._group is not None:
                await self._group.drain()

    async def close(self) -> None:
        self._closed = True
        await self.drain()
        if self._group is not None:
            await self._group.close()
        if self._reader is not None:
            await self._reader.close()
        if self.is_sqlite:
            with contextlib.suppress(Exception):
                async with self._engines.base.connect() as conn:
                    await conn.exec_driver_sql("PRAGMA optimize")
        await self._engines.base.dispose()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def write(self, fn: Tx[T]) -> T:
        """Run `fn(conn)` as one write transaction: whole or not at all, and done (on disk)
        when this returns. SQLite: in the writer's BEGIN IMMEDIATE batch, after a SAVEPOINT
        of its own (storage/group_commit.py)."""
        if self._group is None:
            return await self._shielded(self._in(self._engines.write, fn))
        if self._closed:
            raise RuntimeError("the database is closed")
        # Not shielded: a cancelled caller cancels only its future; the writer runs the call
        # whole anyway and does not tell it the outcome.
        result: T = await self._group.submit(fn)
        return result

    async def read(self, fn: Tx[T]) -> T:
        """Run `fn(conn)` for ONE statement's read (autocommit: no transaction around it)."""
        if self._reader is None:
            return await self._shielded(self._in(self._engines.read, fn))
        if self._closed:
            raise RuntimeError("the database is closed")
        result: T = await self._reader.submit(fn)
        return result

    async def read_snapshot(self, fn: Tx[T]) -> T:
        """Run `fn(conn)` in one read transaction: every SELECT sees the same state."""
        return await self._shielded(self._in(self._engines.snapshot, fn))

    async def schema_version(self) -> str | None:
        """The Alembic revision the database is at."""

        async def q(conn: AsyncConnection) -> str | None:
            return await conn.run_sync(_migrate.current_revision)

        return await self.read(q)

    @staticmethod
    async def _in(engine: AsyncEngine, fn: Tx[T]) -> T:
        async with engine.begin() as conn:
            return await fn(conn)

    async def _shielded(self, work: Awaitable[T]) -> T:
        if self._closed:
            if asyncio.iscoroutine(work):
                work.close()
            raise RuntimeError("the database is closed")
        task: asyncio.Task[T] = asyncio.ensure_future(work)
        self._running.add(task)
        task.add_done_callback(_forget(self._running))
        return await asyncio.shield(task)


def _forget(running: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        running.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a caller that was cancelled never will

    return done


async def _reach(engine: AsyncEngine) -> None:
    """Connect once: an operator's wrong host, port, user or database is one clear line
    at start, not a traceback from deep inside the first migration."""
    try:
        async with engine.connect():
            pass
    except OSError as exc:  # refused, unknown host, timed out
        raise DatabaseUnavailable(f"cannot reach the database (DATABASE_URL): {exc}") from exc
    except DBAPIError as exc:  # refused by the server: no such role or database, auth
        reason = str(exc.orig).splitlines()[0] if exc.orig is not None else type(exc).__name__
        raise DatabaseUnavailable(
            f"the database refused the connection (DATABASE_URL): {reason}"
        ) from exc
