"""Broadcasts: one row each with its counters, and one outbox row per recipient.

Starting one queues every recipient in the same transaction (users who have not blocked
the bot, nor been banned); each delivery deletes its recipient's row and counts it in one
transaction, so a restart resumes with exactly the recipients still owed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import sql

if TYPE_CHECKING:
    from storage.db import Database

_COLUMNS = "id, admin_chat_id, progress_message_id, text, status, total, sent, blocked"
_CREATE = text(
    "INSERT INTO broadcasts (admin_chat_id, text, created_at)"
    " VALUES (:admin_chat_id, :text, :now) RETURNING id"
)
_RECIPIENTS = text(
    "INSERT INTO outbox (chat_id, priority, kind, ref, payload, dedupe, created_at)"
    " SELECT id, :priority, 'broadcast', :bid, '{}', 'bc:' || :bid_text || ':' || id, :now"
    " FROM users WHERE blocked = 0 AND banned = 0 ORDER BY id"
)
_SET_TOTAL = text("UPDATE broadcasts SET total = :total WHERE id = :bid")
_GET = text(f"SELECT {_COLUMNS} FROM broadcasts WHERE id = :bid")
_RUNNING = text(f"SELECT {_COLUMNS} FROM broadcasts WHERE status = 'running' ORDER BY id")
_LEFT = text("SELECT COUNT(*) FROM outbox WHERE kind = 'broadcast' AND ref = :bid")
_COUNT = {
    "sent": text("UPDATE broadcasts SET sent = sent + 1 WHERE id = :bid"),
    "blocked": text("UPDATE broadcasts SET blocked = blocked + 1 WHERE id = :bid"),
}
_DROP_ROW = text("DELETE FROM outbox WHERE id = :id")
_CANCEL = text(
    "UPDATE broadcasts SET status = 'cancelled' WHERE status = 'running'"
    " AND (:bid = 0 OR id = :bid) RETURNING id"
)
_DROP_LEFT = text("DELETE FROM outbox WHERE kind = 'broadcast' AND ref = :bid")
_FINISH = text("UPDATE broadcasts SET status = 'done' WHERE id = :bid AND status = 'running'")
_SET_PROGRESS = text("UPDATE broadcasts SET progress_message_id = :mid WHERE id = :bid")


@dataclass(frozen=True, slots=True)
class Broadcast:
    id: int
    admin_chat_id: int
    progress_message_id: int | None
    text: str
    status: str
    total: int
    sent: int
    blocked: int
    left: int = 0


def _bc(row: Any, left: int) -> Broadcast:
    return Broadcast(
        int(row[0]),
        int(row[1]),
        None if row[2] is None else int(row[2]),
        str(row[3]),
        str(row[4]),
        int(row[5]),
        int(row[6]),
        int(row[7]),
        left,
    )


class Broadcasts:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def start(
        self, admin_chat_id: int, body: str, *, priority: int, now: float | None = None
    ) -> Broadcast:
        """Record the broadcast and queue every recipient, in one transaction."""
        ts = time.time() if now is None else now

        async def tx(conn: AsyncConnection) -> Broadcast:
            bid = int(
                await sql.scalar(conn, _CREATE, admin_chat_id=admin_chat_id, text=body, now=ts)
            )
            total = await sql.count(
                conn, _RECIPIENTS, priority=priority, bid=bid, bid_text=str(bid), now=ts
            )
            await conn.execute(_SET_TOTAL, {"total": total, "bid": bid})
            row = await sql.first(conn, _GET, bid=bid)
            return _bc(row, total)

        return await self._db.write(tx)

    async def get(self, bid: int) -> Broadcast | None:
        async def q(conn: AsyncConnection) -> Broadcast | None:
            row = await sql.first(conn, _GET, bid=bid)
            if row is None:
                return None
            return _bc(row, int(await sql.scalar(conn, _LEFT, bid=bid)))

        return await self._db.read_snapshot(q)

    async def running(self) -> list[Broadcast]:
        async def q(conn: AsyncConnection) -> list[Broadcast]:
            found = []
            for row in await sql.rows(conn, _RUNNING):
                found.append(_bc(row, int(await sql.scalar(conn, _LEFT, bid=row[0]))))
            return found

        return await self._db.read_snapshot(q)

    async def delivered(self, bid: int, row_id: int, outcome: str) -> None:
        """One recipient settled (`sent` or `blocked`): its row goes, the counter moves."""

        async def tx(conn: AsyncConnection) -> None:
            if await sql.count(conn, _DROP_ROW, id=row_id) == 1:
                await conn.execute(_COUNT[outcome], {"bid": bid})

        await self._db.write(tx)

    async def cancel(self, bid: int = 0) -> list[int]:
        """Cancel one running broadcast (or all with 0): recipients not reached are
        dropped. The ids cancelled."""

        async def tx(conn: AsyncConnection) -> list[int]:
            ids = [int(row[0]) for row in await sql.rows(conn, _CANCEL, bid=bid)]
            for cancelled in ids:
                await conn.execute(_DROP_LEFT, {"bid": cancelled})
            return ids

        return await self._db.write(tx)

    async def finish(self, bid: int) -> bool:
        async def tx(conn: AsyncConnection) -> bool:
            return await sql.count(conn, _FINISH, bid=bid) == 1

        return await self._db.write(tx)

    async def set_progress_message(self, bid: int, message_id: int) -> None:
        async def tx(conn: AsyncConnection) -> None:
            await conn.execute(_SET_PROGRESS, {"mid": message_id, "bid": bid})

        await self._db.write(tx)
