"""Codes: what arrived for an order, and whether the user has been shown it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import rows, sql
from storage.models import Code, Order
from storage.rows import CODE_COLUMNS_C, ORDER_COLUMNS_O

if TYPE_CHECKING:
    from storage.db import Database

_CODE_WIDTH = len(CODE_COLUMNS_C.split(","))
_UNDELIVERED = text(
    f"SELECT {CODE_COLUMNS_C}, {ORDER_COLUMNS_O}"
    " FROM codes c JOIN orders o ON o.id = c.order_id"
    " WHERE c.delivered_at IS NULL ORDER BY c.id"
)
_MARK_DELIVERED = text(
    "UPDATE codes SET delivered_at = :now, message_id = :message_id"
    " WHERE id = :code_id AND delivered_at IS NULL"
)


class Codes:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def undelivered(self) -> list[tuple[Code, Order]]:
        """Codes not yet delivered, oldest first, each with its order (resend after restart)."""

        async def q(conn: AsyncConnection) -> list[tuple[Code, Order]]:
            return [
                (rows.code(row[:_CODE_WIDTH]), rows.order(row[_CODE_WIDTH:]))
                for row in await sql.rows(conn, _UNDELIVERED)
            ]

        return await self._db.read(q)

    async def mark_delivered(
        self, code_id: int, message_id: int, *, now: float | None = None
    ) -> bool:
        """Record the message that showed the code. False if it was already delivered."""
        ts = time.time() if now is None else now

        async def tx(conn: AsyncConnection) -> bool:
            count = await sql.count(
                conn, _MARK_DELIVERED, now=ts, message_id=message_id, code_id=code_id
            )
            return count == 1

        return await self._db.write(tx)
