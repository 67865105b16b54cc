"""Codes: what arrived for an order, and whether the user has been shown it."""

from __future__ import annotations

import sqlite3
import time
from typing import TYPE_CHECKING

from storage import rows
from storage.models import Code, Order
from storage.rows import CODE_COLUMNS_C, ORDER_COLUMNS_O

if TYPE_CHECKING:
    from storage.db import Database


class Codes:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def undelivered(self) -> list[tuple[Code, Order]]:
        """Codes not yet delivered, oldest first, each with its order (resend after restart)."""

        def q(conn: sqlite3.Connection) -> list[tuple[Code, Order]]:
            width = len(CODE_COLUMNS_C.split(","))
            result = []
            for row in conn.execute(
                f"SELECT {CODE_COLUMNS_C}, {ORDER_COLUMNS_O}"
                " FROM codes c INDEXED BY codes_undelivered JOIN orders o ON o.id = c.order_id"
                " WHERE c.delivered_at IS NULL ORDER BY c.id"
            ):
                result.append((rows.code(row[:width]), rows.order(row[width:])))
            return result

        return await self._db.read(q)

    async def mark_delivered(
        self, code_id: int, message_id: int, *, now: float | None = None
    ) -> bool:
        """Record the message that showed the code. False if it was already delivered."""
        ts = time.time() if now is None else now

        def tx(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE codes SET delivered_at = ?, message_id = ?"
                " WHERE id = ? AND delivered_at IS NULL",
                (ts, message_id, code_id),
            )
            return cursor.rowcount == 1

        return await self._db.write(tx)
