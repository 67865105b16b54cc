"""The delivery queue: what the bot still owes a chat, durable until Telegram took it.

A row is written before the push and deleted (with whatever the push completes: a code
marked delivered, a broadcast counted) in one transaction after Telegram accepted it, so
a crash in between repeats at most that one push. A row with a `dedupe` key exists once:
enqueueing it again bumps `version` (and raises the priority), so a card's newer state
replaces an unsent older one, and a row is only deleted at the version that was sent.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import rows, sql

if TYPE_CHECKING:
    from storage.db import Database

COLUMNS = "id, chat_id, priority, kind, ref, payload, dedupe, version, created_at, lease_owner"
_COLUMNS = COLUMNS
# A row is leased to whoever queued it (storage/leases.py). Queued again while another
# replica's lease on it is live, it stays theirs: they send its newest state.
_FREE = "(outbox.lease_until IS NULL OR outbox.lease_until < :now)"
_ENQUEUE = text(
    "INSERT INTO outbox (chat_id, priority, kind, ref, payload, dedupe, created_at,"
    " lease_owner, lease_until)"
    " VALUES (:chat_id, :priority, :kind, :ref, :payload, :dedupe, :now, :owner, :until)"
    " ON CONFLICT (dedupe) DO UPDATE SET version = outbox.version + 1,"
    " priority = CASE WHEN excluded.priority < outbox.priority"
    " THEN excluded.priority ELSE outbox.priority END,"
    " payload = CASE WHEN excluded.payload = '{}' THEN outbox.payload ELSE excluded.payload END,"
    f" lease_owner = CASE WHEN {_FREE} THEN excluded.lease_owner ELSE outbox.lease_owner END,"
    f" lease_until = CASE WHEN {_FREE} THEN excluded.lease_until ELSE outbox.lease_until END"
    f" RETURNING {_COLUMNS}"
)
_ENQUEUE_PLAIN = text(
    "INSERT INTO outbox (chat_id, priority, kind, ref, payload, created_at, lease_owner,"
    " lease_until) VALUES (:chat_id, :priority, :kind, :ref, :payload, :now, :owner, :until)"
    f" RETURNING {_COLUMNS}"
)
_GET = text(f"SELECT {_COLUMNS} FROM outbox WHERE id = :id")
_ALL = text(f"SELECT {_COLUMNS} FROM outbox ORDER BY priority, id")
_OF_BROADCAST = text(
    f"SELECT {_COLUMNS} FROM outbox WHERE kind = 'broadcast' AND ref = :bid ORDER BY id"
)
_DONE = text("DELETE FROM outbox WHERE id = :id AND version = :version")
_DROP = text("DELETE FROM outbox WHERE id = :id")
_MARK_CODE = text(
    "UPDATE codes SET delivered_at = :now, message_id = :message_id"
    " WHERE id = :code_id AND delivered_at IS NULL"
)
_SET_CARD = text("UPDATE orders SET message_id = :message_id, card_text = :card WHERE id = :id")
_ENQUEUE_UNDELIVERED = text(
    "INSERT INTO outbox (chat_id, priority, kind, ref, payload, dedupe, created_at)"
    " SELECT o.chat_id, :priority, 'code', c.id, '{\"order\": ' || o.id || '}',"
    " 'code:' || c.id, :now"
    " FROM codes c JOIN orders o ON o.id = c.order_id JOIN users u ON u.id = o.user_id"
    " WHERE c.delivered_at IS NULL AND u.blocked = 0 AND (:user_id = 0 OR u.id = :user_id)"
    " ON CONFLICT (dedupe) DO NOTHING"
)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    chat_id: int
    priority: int
    kind: str
    ref: int | None
    payload: dict[str, Any]
    dedupe: str | None
    version: int
    created_at: float
    lease_owner: str | None = None  # the replica sending it (storage/leases.py)


def row_of(row: Any) -> OutboxRow:
    return OutboxRow(
        id=int(row[0]),
        chat_id=int(row[1]),
        priority=int(row[2]),
        kind=str(row[3]),
        ref=None if row[4] is None else int(row[4]),
        payload=json.loads(row[5]) if row[5] else {},
        dedupe=row[6],
        version=int(row[7]),
        created_at=float(row[8]),
        lease_owner=row[9],
    )


_row = row_of


class Outbox:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def enqueue(
        self,
        *,
        chat_id: int,
        priority: int,
        kind: str,
        ref: int | None = None,
        payload: dict[str, Any] | None = None,
        dedupe: str | None = None,
        now: float | None = None,
        lease: tuple[str, float] | None = None,
    ) -> OutboxRow:
        """Add a push (or, with a `dedupe` key already queued, bump that row: the newest
        state wins, the higher priority of the two stays). `lease`: (replica id, until),
        the row is leased to that replica unless another one's lease on it is live (the
        row's `lease_owner` says who has it)."""
        owner, until = lease if lease is not None else (None, None)
        params = {
            "chat_id": chat_id,
            "priority": priority,
            "kind": kind,
            "ref": ref,
            "payload": json.dumps(payload or {}, sort_keys=True),
            "dedupe": dedupe,
            "now": time.time() if now is None else now,
            "owner": owner,
            "until": until,
        }
        stmt = _ENQUEUE if dedupe is not None else _ENQUEUE_PLAIN

        async def tx(conn: AsyncConnection) -> OutboxRow:
            row = await sql.first(conn, stmt, **params)
            assert row is not None
            return _row(row)

        return await self._db.write(tx)

    async def enqueue_undelivered_codes(
        self, priority: int, *, user_id: int = 0, now: float | None = None
    ) -> int:
        """Queue every stored code not yet delivered (of one user, or of all with 0) whose
        user has not blocked the bot: after a crash between storing and queueing, or when
        a user comes back. Already queued ones stay as they are."""
        ts = time.time() if now is None else now

        async def tx(conn: AsyncConnection) -> int:
            return await sql.count(
                conn, _ENQUEUE_UNDELIVERED, priority=priority, user_id=user_id, now=ts
            )

        return await self._db.write(tx)

    async def get(self, row_id: int) -> OutboxRow | None:
        async def q(conn: AsyncConnection) -> OutboxRow | None:
            row = await sql.first(conn, _GET, id=row_id)
            return _row(row) if row else None

        return await self._db.read(q)

    async def pending(self) -> list[OutboxRow]:
        """Everything still owed, in sending order (at start)."""

        async def q(conn: AsyncConnection) -> list[OutboxRow]:
            return [_row(row) for row in await sql.rows(conn, _ALL)]

        return await self._db.read(q)

    async def of_broadcast(self, bid: int) -> list[OutboxRow]:
        async def q(conn: AsyncConnection) -> list[OutboxRow]:
            return [_row(row) for row in await sql.rows(conn, _OF_BROADCAST, bid=bid)]

        return await self._db.read(q)

    async def done(self, row: OutboxRow) -> bool:
        """Telegram took the row's push. False if a newer state was queued meanwhile (the
        row stays, to be sent again)."""

        async def tx(conn: AsyncConnection) -> bool:
            return await sql.count(conn, _DONE, id=row.id, version=row.version) == 1

        return await self._db.write(tx)

    async def drop(self, row_id: int) -> None:
        """Give the row up (nothing to send any more, or Telegram refused it for good)."""

        async def tx(conn: AsyncConnection) -> None:
            await conn.execute(_DROP, {"id": row_id})

        await self._db.write(tx)

    async def code_sent(self, row: OutboxRow, code_id: int, message_id: int, now: float) -> bool:
        """The code's message was accepted: mark it delivered and drop the row, at once.
        False if it had been marked already."""

        async def tx(conn: AsyncConnection) -> bool:
            await conn.execute(_DROP, {"id": row.id})
            marked = await sql.count(
                conn, _MARK_CODE, now=now, message_id=message_id, code_id=code_id
            )
            return marked == 1

        return await self._db.write(tx)

    async def card_sent(
        self, row: OutboxRow | None, order_id: int, message_id: int | None, card: str | None
    ) -> bool:
        """The card shows `card` in `message_id` now; the row (if any) is done at its
        version. False if a newer state was queued meanwhile (that row stays)."""

        async def tx(conn: AsyncConnection) -> bool:
            card_text = rows.encode_card_text(card)
            await conn.execute(
                _SET_CARD, {"message_id": message_id, "card": card_text, "id": order_id}
            )
            if row is None:
                return True
            return await sql.count(conn, _DONE, id=row.id, version=row.version) == 1

        return await self._db.write(tx)
