"""Schema upgrades with Alembic, run by `Database.open` at every start.

The scripts live in storage/migrations (shipped inside the package). The baseline revision is
the schema the sqlite3-era code made (storage/migrations/legacy/*.sql, tracked in its own
`schema_version` table): on SQLite it applies those very files, only the steps a file lacks,
so a database written by that code upgrades in place with every row kept.

The whole upgrade is one transaction: BEGIN IMMEDIATE on SQLite (with foreign keys off, which
batch-mode table rebuilds need, and a foreign_key_check before COMMIT), an advisory lock on
PostgreSQL. Two processes starting at once therefore never apply a step twice.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.engine import Engines
from storage.errors import MigrationError

_log = logging.getLogger(__name__)
# Alembic says at INFO, every time it looks at a database, which implementation it picked;
# only a step that actually ran is worth a line in the bot's log (logged below).
logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
_ADVISORY_LOCK_ID = 0x5D5_3A11  # any constant shared by every replica of this bot
_LEGACY_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(resources.files("storage") / "migrations"))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(engines: Engines, target: str = "head") -> None:
    engine = engines.base.execution_options(sqlite_begin=None)
    async with engine.connect() as conn:
        if engines.is_sqlite:
            await _upgrade_sqlite(conn, target)
        else:
            await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_ADVISORY_LOCK_ID})")
            await conn.run_sync(_run, target)
            await conn.commit()


async def _upgrade_sqlite(conn: AsyncConnection, target: str) -> None:
    # PRAGMA foreign_keys is a no-op inside a transaction, hence the manual BEGIN here.
    await conn.exec_driver_sql("PRAGMA foreign_keys = OFF")
    await conn.exec_driver_sql("BEGIN IMMEDIATE")
    try:
        await conn.run_sync(_run, target)
        broken = (await conn.exec_driver_sql("PRAGMA foreign_key_check")).all()
        if broken:
            raise MigrationError(f"foreign keys broken by the migration: {broken[:5]}")
        await conn.exec_driver_sql("COMMIT")
    except BaseException:
        await conn.exec_driver_sql("ROLLBACK")
        raise
    finally:
        await conn.exec_driver_sql("PRAGMA foreign_keys = ON")


def _run(connection: Connection, target: str) -> None:
    known = {
        script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()
    }
    current = current_revision(connection)
    if current is not None and current not in known:
        raise MigrationError(
            f"the database is at schema revision {current}, unknown to (newer than?) this code:"
            " refusing to open it"
        )
    command.upgrade(alembic_config(connection), target)
    after = current_revision(connection)
    if after != current:
        _log.info("database schema upgraded from %s to %s", current or "nothing", after)


# -- the sqlite3-era steps, used by the baseline revision -------------------------------


@dataclass(frozen=True, slots=True)
class LegacyStep:
    version: int
    name: str
    sql: str


@cache
def legacy_steps() -> tuple[LegacyStep, ...]:
    folder = resources.files("storage").joinpath("migrations", "legacy")
    found = []
    for entry in folder.iterdir():
        match = _LEGACY_NAME.match(entry.name)
        if match:
            found.append(LegacyStep(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda step: step.version)
    return tuple(found)


def split_statements(text: str) -> list[str]:
    """One SQL string per statement of a legacy file."""
    statements: list[str] = []
    buffer = ""
    for line in text.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip(" \t\r\n;"):
                statements.append(buffer.strip())
            buffer = ""
    leftover = [p for p in buffer.splitlines() if p.strip() and not p.strip().startswith("--")]
    if leftover:
        raise MigrationError(f"incomplete SQL statement at the end of a migration: {leftover!r}")
    return statements


def legacy_version(connection: Connection) -> int:
    """The sqlite3-era schema version of this file (0: none of its tables)."""
    exists = connection.exec_driver_sql(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).first()
    if not exists:
        return 0
    return int(
        connection.exec_driver_sql(
            "SELECT COALESCE(MAX(version), 0) FROM schema_version"
        ).scalar_one()
    )


def apply_legacy_steps(connection: Connection, now: float) -> None:
    """Bring a SQLite file to the last sqlite3-era schema, exactly as that code would."""
    steps = legacy_steps()
    version = legacy_version(connection)
    if version > len(steps):
        raise MigrationError(f"unknown sqlite3-era schema version {version}")
    connection.exec_driver_sql(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    for step in steps[version:]:
        for statement in split_statements(step.sql):
            connection.exec_driver_sql(statement)
        params: Any = (step.version, step.name, now)
        connection.exec_driver_sql(
            "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)", params
        )
