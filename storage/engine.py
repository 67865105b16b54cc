"""The two engines, and the ONE place that says where they differ.

Every query in storage/ is written once (`text()` with named parameters) and runs on both
SQLite (aiosqlite, one process) and PostgreSQL (asyncpg, several replicas). Correctness never
rests on `SELECT ... FOR UPDATE` (SQLAlchemy drops it on SQLite); it rests on what both
engines do alike: guarded `UPDATE ... WHERE status = ... RETURNING`, `UNIQUE` ledger keys, and
a write transaction that first writes the row it depends on (`ledger.lock_user`), which on
PostgreSQL takes that row's lock until COMMIT.

Where they differ (and nowhere else):

- Write transaction. SQLite: `BEGIN IMMEDIATE` (WRITE_BEGIN) takes the file's write lock at
  BEGIN, so writers run one at a time: one writer task per process runs the queued write
  calls, several per COMMIT, a SAVEPOINT each, and sends that BEGIN itself
  (storage/group_commit.py); any other write connection gets it from the `write` engine.
  PostgreSQL: READ COMMITTED; writers of one user queue on that user's row lock (taken by
  `ledger.lock_user`'s UPDATE), other users' writes run in parallel, each call on its own
  pooled connection.
- Single-statement read (`read`). SQLite: autocommit on one dedicated reader connection
  (storage/reader.py). PostgreSQL: AUTOCOMMIT on a pooled connection. One statement sees one
  state on both.
- Consistent read (`read_snapshot`). SQLite: deferred `BEGIN` (a WAL snapshot).
  PostgreSQL: REPEATABLE READ.
- Durability. SQLite: WAL with `synchronous=FULL`, so a committed ledger row survives a
  power cut. PostgreSQL: the server's fsync.
- Connection setup. SQLite: busy_timeout, WAL, foreign_keys, and the driver's own BEGIN
  switched off; aiosqlite under a one-hop adapter (storage/sqlite_driver.py). PostgreSQL:
  nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from storage import sqlite_driver

BUSY_TIMEOUT_MS = 10_000
# How a SQLite write transaction starts: it takes the file's write lock at once.
WRITE_BEGIN = "BEGIN IMMEDIATE"

_SQLITE_PREFIXES = ("sqlite+aiosqlite:///", "sqlite:///")
_POSTGRES_PREFIXES = ("postgresql+asyncpg://", "postgresql://", "postgres://")


def normalize_url(url_or_path: str | Path) -> str:
    """The SQLAlchemy URL for a DATABASE_URL in any accepted spelling (or a plain file path)."""
    if isinstance(url_or_path, Path):
        return f"sqlite+aiosqlite:///{url_or_path}"
    text = url_or_path.strip()
    if text in ("", ":memory:"):
        raise ValueError(f"need a database file path, got {url_or_path!r}")
    for prefix in _SQLITE_PREFIXES:
        if text.startswith(prefix):
            path = text.removeprefix(prefix)
            if not path or path == ":memory:" or path.startswith("file:"):
                raise ValueError(f"need a database file path, got {url_or_path!r}")
            return f"sqlite+aiosqlite:///{path}"
    for prefix in _POSTGRES_PREFIXES:
        if text.startswith(prefix):
            return "postgresql+asyncpg://" + text.removeprefix(prefix)
    if "://" in text:
        raise ValueError(f"unsupported database URL {url_or_path!r}")
    return normalize_url(Path(text))


def database_path(url_or_path: str | Path) -> Path:
    """The file of a SQLite DATABASE_URL."""
    url = make_url(normalize_url(url_or_path))
    if url.get_backend_name() != "sqlite" or not url.database:
        raise ValueError(f"not a SQLite database file: {url_or_path!r}")
    return Path(url.database)


@dataclass(frozen=True, slots=True)
class Engines:
    """One pool, three ways in: writes, single-statement reads, consistent multi-reads."""

    base: AsyncEngine
    write: AsyncEngine
    read: AsyncEngine
    snapshot: AsyncEngine
    is_sqlite: bool


def make_engines(url_or_path: str | Path) -> Engines:
    url = make_url(normalize_url(url_or_path))
    if url.get_backend_name() == "sqlite":
        assert url.database
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        # The pool's ROLLBACK on return stays: it costs no thread hop when SQLite says no
        # transaction is open (storage/sqlite_driver.py), and it is what ends a transaction
        # whose COMMIT failed (a deferred constraint, a full disk) before the next checkout.
        # 8 kept: a connection beyond the pool is a new thread and file handle each time.
        one_hop: dict[str, Any] = (
            {"module": sqlite_driver.dbapi()} if sqlite_driver.SUPPORTED else {}
        )
        base = create_async_engine(url, pool_size=8, max_overflow=8, **one_hop)
        event.listen(base.sync_engine, "connect", _sqlite_connect)
        # The BEGIN hook only where a connection needs it: a hook on an engine makes
        # SQLAlchemy dispatch events around every statement on it (~10 µs each). Without it
        # SQLAlchemy's begin sends nothing: autocommit, each statement its own transaction.
        write = base.execution_options(sqlite_begin=WRITE_BEGIN)
        snapshot = base.execution_options(sqlite_begin="BEGIN")
        for begins in (write, snapshot):
            event.listen(begins.sync_engine, "begin", _sqlite_begin)
        return Engines(
            base=base,
            write=write,
            # A single SELECT is its own transaction in autocommit: no BEGIN, no COMMIT.
            read=base,
            snapshot=snapshot,
            is_sqlite=True,
        )
    # 16 kept: a connection beyond the pool is a new PostgreSQL backend each time, and a
    # busy bot has that many calls in flight. Prepared statements are cached per connection.
    base = create_async_engine(
        url,
        pool_size=16,
        max_overflow=8,
        connect_args={"prepared_statement_cache_size": 256},
    )
    return Engines(
        base=base,
        write=base,
        # A single SELECT needs no transaction around it: no BEGIN and COMMIT round trips.
        read=base.execution_options(isolation_level="AUTOCOMMIT"),
        snapshot=base.execution_options(isolation_level="REPEATABLE READ"),
        is_sqlite=False,
    )


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # The driver must not BEGIN on its own: the "begin" hook below, or the writer task
    # (storage/group_commit.py), says which BEGIN.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        mode = cursor.fetchone()[0]
        if str(mode).lower() != "wal":
            raise RuntimeError(f"could not switch the database to WAL mode (got {mode!r})")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA temp_store = MEMORY")
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    begin = conn.get_execution_options().get("sqlite_begin")
    if begin is None:  # the caller BEGINs itself (storage.migrate)
        return
    dbapi_connection = conn.connection.dbapi_connection
    if isinstance(dbapi_connection, sqlite_driver.OneHopConnection):
        dbapi_connection.defer(begin)  # goes with the first statement: one hop less
    else:
        conn.exec_driver_sql(begin)
