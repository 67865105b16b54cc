"""Versioned migrations: storage/migrations/NNNN_name.sql, applied in order, one transaction each.

`schema_version` holds one row per applied step. A step's statements and its version row
commit together, so a crash leaves the database at the previous version, never half-way.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass
from functools import cache
from importlib import resources

from storage.errors import MigrationError

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


@cache
def migrations() -> tuple[Migration, ...]:
    """Every step shipped in storage/migrations, by version (1, 2, ... with no gaps)."""
    folder = resources.files("storage").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise MigrationError(f"migration versions must be 1..n: {[m.version for m in found]}")
    return tuple(found)


def latest_version() -> int:
    return len(migrations())


def split_statements(sql: str) -> list[str]:
    """One SQL string per statement (sqlite3's `execute` runs exactly one)."""
    statements: list[str] = []
    buffer = ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip(" \t\r\n;"):
                statements.append(buffer.strip())
            buffer = ""
    # Whatever is left must be comments/whitespace only.
    leftover = "\n".join(
        part for part in buffer.splitlines() if part.strip() and not part.strip().startswith("--")
    )
    if leftover:
        raise MigrationError(f"incomplete SQL statement at the end of a migration: {leftover!r}")
    return statements


def current_version(conn: sqlite3.Connection) -> int:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if not exists:
        return 0
    row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
    return int(row[0])


def migrate(conn: sqlite3.Connection, target: int | None = None) -> int:
    """Apply the missing steps up to `target` (default: all). Returns the version reached.

    `conn` must be in autocommit mode (isolation_level=None). Each step runs inside
    BEGIN IMMEDIATE, and the version is re-read inside it, so two processes opening the
    same file at once cannot apply a step twice.
    """
    steps = migrations()
    goal = len(steps) if target is None else target
    if not 0 <= goal <= len(steps):
        raise MigrationError(f"no such schema version {goal} (latest is {len(steps)})")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    version = current_version(conn)
    if version > len(steps):
        raise MigrationError(
            f"the database is at schema version {version}, newer than this code "
            f"({len(steps)}): refusing to open it"
        )
    for step in steps[version:goal]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if current_version(conn) < step.version:
                for statement in split_statements(step.sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                    (step.version, step.name, time.time()),
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return max(current_version(conn), version)
