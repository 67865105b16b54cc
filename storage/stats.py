"""Admin statistics over a period."""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from storage.db import Database


@dataclass(frozen=True, slots=True)
class Summary:
    """Counts are of orders created since `since`; money is of ledger rows written since then.

    Amounts are minor units summed over orders whatever their currency.
    """

    since: float
    created: int  # orders created
    with_code: int  # ... that got a code (received or finished)
    open: int  # ... still purchasing/waiting/received
    cancelled: int
    expired: int
    failed: int
    refunds: int  # release rows (holds returned)
    refunded: int  # their total
    sales: int  # capture rows
    revenue: int  # sum of the captured orders' prices
    cost: int  # sum of the captured orders' SMS-Man costs
    margin: int  # revenue - cost

    def as_dict(self) -> dict[str, int | float]:
        return asdict(self)


class Stats:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def summary(self, since: float) -> Summary:
        def q(conn: sqlite3.Connection) -> Summary:
            created, with_code, open_, cancelled, expired, failed = conn.execute(
                "SELECT COUNT(*),"
                " COUNT(*) FILTER (WHERE status IN ('received', 'finished')),"
                " COUNT(*) FILTER (WHERE status IN ('purchasing', 'waiting', 'received')),"
                " COUNT(*) FILTER (WHERE status = 'cancelled'),"
                " COUNT(*) FILTER (WHERE status = 'expired'),"
                " COUNT(*) FILTER (WHERE status = 'failed')"
                " FROM orders WHERE created_at >= ?",
                (since,),
            ).fetchone()
            refunds, refunded = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM ledger"
                " WHERE kind = 'release' AND created_at >= ?",
                (since,),
            ).fetchone()
            sales, revenue, cost = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(o.price), 0), COALESCE(SUM(o.cost), 0)"
                " FROM ledger l JOIN orders o ON o.id = l.order_id"
                " WHERE l.kind = 'capture' AND l.created_at >= ?",
                (since,),
            ).fetchone()
            return Summary(
                since=since,
                created=created,
                with_code=with_code,
                open=open_,
                cancelled=cancelled,
                expired=expired,
                failed=failed,
                refunds=refunds,
                refunded=refunded,
                sales=sales,
                revenue=revenue,
                cost=cost,
                margin=revenue - cost,
            )

        return await self._db.read_snapshot(q)

    async def orders_by_status(self) -> dict[str, int]:
        """How many orders are in each state now (a state with none is absent)."""

        def q(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute("SELECT status, COUNT(*) FROM orders GROUP BY status")
            return {str(status): int(count) for status, count in rows}

        return await self._db.read(q)
