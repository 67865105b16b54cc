"""The update_ids already handled: Telegram hands an update out again after a crash (or a
webhook retry); it is acted on once. Bounded: ids older than KEEP seconds are pruned."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import sql

if TYPE_CHECKING:
    from storage.db import Database

KEEP = 86_400.0  # Telegram keeps an unconfirmed update for 24 hours
_CLAIM = text(
    "INSERT INTO handled_updates (update_id, handled_at) VALUES (:update_id, :now)"
    " ON CONFLICT (update_id) DO NOTHING"
)
_PRUNE = text("DELETE FROM handled_updates WHERE handled_at < :cutoff")


class HandledUpdates:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._claims = 0

    async def claim(self, update_id: int, *, now: float | None = None) -> bool:
        """True the first time an update_id is seen; False ever after (within KEEP)."""
        ts = time.time() if now is None else now
        self._claims += 1
        prune = self._claims % 1000 == 1

        async def tx(conn: AsyncConnection) -> bool:
            if prune:
                await conn.execute(_PRUNE, {"cutoff": ts - KEEP})
            return await sql.count(conn, _CLAIM, update_id=update_id, now=ts) == 1

        return await self._db.write(tx)
