"""The database: SQLAlchemy Core (async) over aiosqlite or asyncpg (see storage/engine.py).

Every repository call is ONE transaction run as its own task on its own pooled connection,
and the caller awaits it through `asyncio.shield`. A cancelled caller (a handler timing out,
a shutdown) therefore cannot cut a transaction in half: the task goes on to COMMIT or
ROLLBACK on its own, the caller just does not see the outcome. `close()` waits for such
orphaned transactions before disposing of the pool. Two tasks never share a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage import migrate as _migrate
from storage.broadcasts import Broadcasts
from storage.codes import Codes
from storage.engine import Engines, database_path, make_engines
from storage.fsm import FsmData
from storage.kv import KeyValue
from storage.orders import Orders
from storage.outbox import Outbox
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
        # SQLite has one writer at a time anyway (BEGIN IMMEDIATE): queueing here instead of
        # in SQLite's busy handler keeps the wait short and fair.
        self._write_lock: asyncio.Lock | None = asyncio.Lock() if engines.is_sqlite else None
        self._running: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.users = Users(self)
        self.orders = Orders(self)
        self.codes = Codes(self)
        self.wallet = Wallet(self)
        self.kv = KeyValue(self)
        self.stats = Stats(self)
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
            await _migrate.upgrade(db._engines)
        except BaseException:
            await db._engines.base.dispose()
            raise
        return db

    async def drain(self) -> None:
        """Wait until every transaction started so far has ended, including those whose
        callers were cancelled (they still commit or roll back on their own)."""
        while self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)

    async def close(self) -> None:
        self._closed = True
        await self.drain()
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
        """Run `fn(conn)` as one write transaction (BEGIN IMMEDIATE on SQLite)."""
        return await self._shielded(self._write(fn))

    async def read(self, fn: Tx[T]) -> T:
        """Run `fn(conn)` for reads that need no common snapshot."""
        return await self._shielded(self._in(self._engines.read, fn))

    async def read_snapshot(self, fn: Tx[T]) -> T:
        """Run `fn(conn)` in one read transaction: every SELECT sees the same state."""
        return await self._shielded(self._in(self._engines.snapshot, fn))

    async def schema_version(self) -> str | None:
        """The Alembic revision the database is at."""

        async def q(conn: AsyncConnection) -> str | None:
            return await conn.run_sync(_migrate.current_revision)

        return await self.read(q)

    async def _write(self, fn: Tx[T]) -> T:
        if self._write_lock is None:
            return await self._in(self._engines.write, fn)
        async with self._write_lock:
            return await self._in(self._engines.write, fn)

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
