"""Runtime settings and flags (markup override, "low balance alerted", ...)."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from storage.db import Database


class KeyValue:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, key: str) -> str | None:
        def q(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
            return str(row[0]) if row else None

        return await self._db.read(q)

    async def set(self, key: str, value: str) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO kv (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

        await self._db.write(tx)

    async def set_if_absent(self, key: str, value: str) -> bool:
        """Set only if the key is missing. True if this call set it (a once-only flag)."""

        def tx(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                (key, value),
            )
            return cursor.rowcount == 1

        return await self._db.write(tx)

    async def delete(self, key: str) -> bool:
        """True if the key existed."""

        def tx(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM kv WHERE key = ?", (key,)).rowcount == 1

        return await self._db.write(tx)
