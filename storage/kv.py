"""Runtime settings and flags (markup override, "low balance alerted", ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import sql

if TYPE_CHECKING:
    from storage.db import Database

_GET = text("SELECT value FROM kv WHERE key = :key")
_SET = text(
    "INSERT INTO kv (key, value) VALUES (:key, :value)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
_SET_IF_ABSENT = text(
    "INSERT INTO kv (key, value) VALUES (:key, :value) ON CONFLICT (key) DO NOTHING"
)
_DELETE = text("DELETE FROM kv WHERE key = :key")


class KeyValue:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, key: str) -> str | None:
        async def q(conn: AsyncConnection) -> str | None:
            value = await sql.scalar(conn, _GET, key=key)
            return None if value is None else str(value)

        return await self._db.read(q)

    async def set(self, key: str, value: str) -> None:
        async def tx(conn: AsyncConnection) -> None:
            await conn.execute(_SET, {"key": key, "value": value})

        await self._db.write(tx)

    async def set_if_absent(self, key: str, value: str) -> bool:
        """Set only if the key is missing. True if this call set it (a once-only flag)."""

        async def tx(conn: AsyncConnection) -> bool:
            return await sql.count(conn, _SET_IF_ABSENT, key=key, value=value) == 1

        return await self._db.write(tx)

    async def delete(self, key: str) -> bool:
        """True if the key existed."""

        async def tx(conn: AsyncConnection) -> bool:
            return await sql.count(conn, _DELETE, key=key) == 1

        return await self._db.write(tx)
