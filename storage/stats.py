"""Admin statistics over a period."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import sql

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


_ORDERS = text(
    "SELECT COUNT(*),"
    " COUNT(*) FILTER (WHERE status IN ('received', 'finished')),"
    " COUNT(*) FILTER (WHERE status IN ('purchasing', 'waiting', 'received')),"
    " COUNT(*) FILTER (WHERE status = 'cancelled'),"
    " COUNT(*) FILTER (WHERE status = 'expired'),"
    " COUNT(*) FILTER (WHERE status = 'failed')"
    " FROM orders WHERE created_at >= :since"
)
_REFUNDS = text(
    "SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM ledger"
    " WHERE kind = 'release' AND created_at >= :since"
)
_SALES = text(
    "SELECT COUNT(*), COALESCE(SUM(o.price), 0), COALESCE(SUM(o.cost), 0)"
    " FROM ledger l JOIN orders o ON o.id = l.order_id"
    " WHERE l.kind = 'capture' AND l.created_at >= :since"
)

_ORDERS_BY_STATUS = text("SELECT status, COUNT(*) FROM orders GROUP BY status")


class Stats:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def summary(self, since: float) -> Summary:
        async def q(conn: AsyncConnection) -> Summary:
            # int(): PostgreSQL sums BIGINT as NUMERIC (a Decimal here).
            orders = await _one_row(conn, _ORDERS, since)
            refunds, refunded = await _one_row(conn, _REFUNDS, since)
            sales, revenue, cost = await _one_row(conn, _SALES, since)
            created, with_code, open_, cancelled, expired, failed = orders
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

        async def q(conn: AsyncConnection) -> dict[str, int]:
            found = await sql.rows(conn, _ORDERS_BY_STATUS)
            return {str(status): int(count) for status, count in found}

        return await self._db.read(q)


async def _one_row(conn: AsyncConnection, stmt: TextClause, since: float) -> list[int]:
    row = await sql.first(conn, stmt, since=since)
    assert row is not None
    return [int(value or 0) for value in row]
