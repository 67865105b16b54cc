"""The database: one writer connection, one reader connection, each on its own thread.

Every repository call is ONE hop to a connection's thread running a plain synchronous
function, so a write transaction (BEGIN IMMEDIATE ... COMMIT) runs from start to end on that
thread: its statements never interleave with another task's, and cancelling the awaiting
task cannot leave it half-done (it runs whole or not at all; once started it commits or rolls
back, the cancelled caller just does not see the outcome). Writes are also serialised by an
asyncio.Lock, and BEGIN IMMEDIATE plus a busy timeout keep them safe against other processes
on the same file.
Reads run on the second connection (WAL), so they never wait for writes.

This is the aiosqlite model (a thread per connection) without its hop per statement:
the stdlib sqlite3 module is driven directly from the worker thread.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from storage import migrate as _migrate
from storage.codes import Codes
from storage.kv import KeyValue
from storage.orders import Orders
from storage.payments import Payments
from storage.stats import Stats
from storage.users import Users
from storage.wallet import Wallet

T = TypeVar("T")

BUSY_TIMEOUT_MS = 5000
_URL_PREFIX = "sqlite:///"


def database_path(url_or_path: str | Path) -> Path:
    """`sqlite:///relative/path`, `sqlite:////absolute/path`, or a plain path."""
    if isinstance(url_or_path, Path):
        return url_or_path
    text = url_or_path.removeprefix(_URL_PREFIX)
    if not text or text == ":memory:" or text.startswith("file:"):
        raise ValueError(f"need a database file path, got {url_or_path!r}")
    return Path(text)


class _Connection:
    """One sqlite3 connection owned by one dedicated thread."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._conn: sqlite3.Connection | None = None

    async def open(self, path: Path, setup: Callable[[sqlite3.Connection], None]) -> None:
        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, cached_statements=256
            )
            try:
                setup(conn)
            except BaseException:
                conn.close()
                raise
            return conn

        loop = asyncio.get_running_loop()
        self._conn = await loop.run_in_executor(self._executor, connect)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise RuntimeError(f"database connection {self._name!r} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, conn)

    async def close(self, before: Callable[[sqlite3.Connection], None] | None = None) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:

            def finish() -> None:
                try:
                    if before is not None:
                        before(conn)
                finally:
                    conn.close()

            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, finish)
        self._executor.shutdown(wait=False)


def _in_write_transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _in_read_transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    conn.execute("BEGIN")  # deferred: one consistent snapshot for several SELECTs
    try:
        return fn(conn)
    finally:
        conn.execute("COMMIT")


def _setup_writer(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise RuntimeError(f"could not switch the database to WAL mode (got {mode!r})")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA temp_store = MEMORY")


def _setup_reader(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA query_only = ON")


class Database:
    """Open with `await Database.open(url)`; close with `await db.close()` (or `async with`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = _Connection("db-writer")
        self._reader = _Connection("db-reader")
        self._write_lock = asyncio.Lock()
        self.users = Users(self)
        self.orders = Orders(self)
        self.codes = Codes(self)
        self.wallet = Wallet(self)
        self.kv = KeyValue(self)
        self.stats = Stats(self)
        self.payments = Payments(self)

    @classmethod
    async def open(cls, url_or_path: str | Path, *, target_version: int | None = None) -> Database:
        """Open (creating folders and file as needed) and migrate.

        `target_version` stops the migrations at that version (tests of the upgrade path);
        the repositories expect the latest schema.
        """
        path = database_path(url_or_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        db = cls(path)

        def setup_and_migrate(conn: sqlite3.Connection) -> None:
            _setup_writer(conn)
            _migrate.migrate(conn, target_version)

        try:
            await db._writer.open(path, setup_and_migrate)
            await db._reader.open(path, _setup_reader)
        except BaseException:
            await db._reader.close()
            await db._writer.close()
            raise
        return db

    async def close(self) -> None:
        async with self._write_lock:
            await self._reader.close()
            await self._writer.close(before=_optimize)

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` inside one write transaction (BEGIN IMMEDIATE ... COMMIT)."""
        async with self._write_lock:
            return await self._writer.run(lambda conn: _in_write_transaction(conn, fn))

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` on the read-only connection (single statements: autocommit)."""
        return await self._reader.run(fn)

    async def read_snapshot(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` inside one read transaction: every SELECT sees the same state."""
        return await self._reader.run(lambda conn: _in_read_transaction(conn, fn))

    async def schema_version(self) -> int:
        return await self.read(_migrate.current_version)


def _optimize(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA optimize")
