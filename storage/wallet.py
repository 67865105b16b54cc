"""The wallet (shop mode): admin credits/debits, balances, history and the invariant check."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import ledger, payments, rows, sql
from storage.errors import InsufficientFunds, InvalidAmount
from storage.models import LedgerKind, LedgerRow, Money, OrderStatus
from storage.rows import LEDGER_COLUMNS

if TYPE_CHECKING:
    from storage.db import Database

# Which statuses each money state may be seen with.
_MONEY_STATUSES: dict[Money, tuple[OrderStatus, ...]] = {
    Money.HELD: (OrderStatus.PURCHASING, OrderStatus.WAITING),
    Money.CAPTURED: (OrderStatus.RECEIVED, OrderStatus.FINISHED),
    Money.RELEASED: (OrderStatus.FAILED, OrderStatus.CANCELLED, OrderStatus.EXPIRED),
}

_KEY_USED = text("SELECT 1 FROM ledger WHERE idempotency_key = :key")
_BALANCE = text(
    "SELECT (SELECT balance FROM users WHERE id = :user_id),"
    " (SELECT COALESCE(SUM(price), 0) FROM orders"
    "  WHERE user_id = :user_id AND status IN ('purchasing', 'waiting') AND money = 'held')"
)
_HISTORY = text(
    f"SELECT {LEDGER_COLUMNS} FROM ledger WHERE user_id = :user_id ORDER BY id DESC LIMIT :limit"
)
_HOLDS_MONEY = text(
    "SELECT EXISTS (SELECT 1 FROM users WHERE balance <> 0)"
    " OR EXISTS (SELECT 1 FROM orders WHERE money = 'held')"
)
_LAST_ORDER_CURRENCY = text("SELECT currency FROM orders ORDER BY id DESC LIMIT 1")
_BALANCE_MISMATCH = text(
    "SELECT u.id, u.balance, COALESCE(SUM(l.amount), 0) FROM users u"
    " LEFT JOIN ledger l ON l.user_id = u.id GROUP BY u.id, u.balance"
    " HAVING u.balance != COALESCE(SUM(l.amount), 0) ORDER BY u.id"
)
_ORPHAN_LEDGER = text(
    "SELECT DISTINCT l.user_id FROM ledger l LEFT JOIN users u ON u.id = l.user_id"
    " WHERE u.id IS NULL"
)
_BAD_LEDGER_ROWS = text(
    "SELECT id, kind, amount, order_id, idempotency_key FROM ledger WHERE"
    " (kind = 'credit' AND (amount <= 0 OR order_id IS NOT NULL))"
    " OR (kind = 'debit' AND (amount >= 0 OR order_id IS NOT NULL))"
    " OR (kind IN ('hold', 'capture', 'release') AND order_id IS NULL)"
    " OR (kind = 'hold' AND idempotency_key != 'hold:' || order_id)"
    " OR (kind = 'capture' AND idempotency_key != 'capture:' || order_id)"
    " OR (kind = 'release' AND idempotency_key != 'release:' || order_id)"
    " ORDER BY id"
)
_ORDER_BOOKS = text(
    "SELECT o.id, o.status, o.money, o.price,"
    " COUNT(l.id) FILTER (WHERE l.kind = 'hold'),"
    " COUNT(l.id) FILTER (WHERE l.kind = 'capture'),"
    " COUNT(l.id) FILTER (WHERE l.kind = 'release'),"
    " COUNT(l.id) FILTER (WHERE (l.kind = 'hold' AND l.amount != -o.price)"
    "   OR (l.kind = 'capture' AND l.amount != 0)"
    "   OR (l.kind = 'release' AND l.amount != o.price)),"
    " COUNT(l.id) FILTER (WHERE l.user_id != o.user_id)"
    " FROM orders o LEFT JOIN ledger l ON l.order_id = o.id"
    " GROUP BY o.id, o.status, o.money, o.price ORDER BY o.id"
)
# The ledger rows each money state needs: (holds, captures, releases).
_EXPECTED_ROWS: dict[Money, tuple[int, int, int]] = {
    Money.NONE: (0, 0, 0),
    Money.HELD: (1, 0, 0),
    Money.RELEASED: (1, 0, 1),
    Money.CAPTURED: (1, 1, 0),
}


class Wallet:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def credit(
        self,
        user_id: int,
        amount: int,
        *,
        note: str | None,
        idempotency_key: str,
        now: float | None = None,
    ) -> LedgerRow | None:
        """Add `amount` (> 0) to the available balance; creates the user if missing.
        None if the idempotency key was used already (nothing changes)."""
        if amount <= 0:
            raise InvalidAmount(f"a credit must be positive, got {amount}")
        ts = time.time() if now is None else now

        async def tx(conn: AsyncConnection) -> LedgerRow:
            return await ledger.credit(
                conn, user_id=user_id, amount=amount, note=note, now=ts, key=idempotency_key
            )

        try:
            return await self._db.write(tx)
        except ledger.KeyUsed:
            return None  # rolled back whole: nothing changed

    async def debit(
        self,
        user_id: int,
        amount: int,
        *,
        note: str | None,
        idempotency_key: str,
        now: float | None = None,
    ) -> LedgerRow | None:
        """Take `amount` (> 0) off the available balance. InsufficientFunds(available) if
        short; None if the idempotency key was used already."""
        if amount <= 0:
            raise InvalidAmount(f"a debit must be positive, got {amount}")
        ts = time.time() if now is None else now

        async def tx(conn: AsyncConnection) -> LedgerRow | None:
            _banned, balance = await ledger.lock_user(conn, user_id, ts)
            if await _key_used(conn, idempotency_key):
                return None
            if balance < amount:
                raise InsufficientFunds(balance)
            return await ledger.add_row(
                conn,
                user_id=user_id,
                amount=-amount,
                kind=LedgerKind.DEBIT,
                order_id=None,
                note=note,
                now=ts,
                key=idempotency_key,
            )

        return await self._db.write(tx)

    async def balance(self, user_id: int) -> tuple[int, int]:
        """(available, held): held is the total price of the user's orders with money held."""

        async def q(conn: AsyncConnection) -> tuple[int, int]:
            row = await sql.first(conn, _BALANCE, user_id=user_id)
            assert row is not None
            return int(row[0] or 0), int(row[1] or 0)

        # One SELECT sees one state on both engines: no snapshot transaction needed.
        return await self._db.read(q)

    async def holds_money(self) -> bool:
        """True while any wallet has a balance or any order has money on hold: what a
        change of the wallets' currency would silently re-label."""

        async def q(conn: AsyncConnection) -> bool:
            return bool(await sql.scalar(conn, _HOLDS_MONEY))

        return await self._db.read(q)

    async def last_order_currency(self) -> str | None:
        """The currency of the newest order, if any: what the money was in before the
        wallets' currency was recorded (databases older than that record)."""

        async def q(conn: AsyncConnection) -> str | None:
            found = await sql.scalar(conn, _LAST_ORDER_CURRENCY)
            return None if found is None else str(found)

        return await self._db.read(q)

    async def history(self, user_id: int, limit: int = 10) -> list[LedgerRow]:
        """The user's ledger rows, newest first."""

        async def q(conn: AsyncConnection) -> list[LedgerRow]:
            found = await sql.rows(conn, _HISTORY, user_id=user_id, limit=limit)
            return [rows.ledger(row) for row in found]

        return await self._db.read(q)

    async def check_invariant(self) -> list[str]:
        """Every way the money books disagree, one readable line each; [] when consistent."""
        return await self._db.read_snapshot(invariant_violations)


async def _key_used(conn: AsyncConnection, key: str) -> bool:
    return await sql.scalar(conn, _KEY_USED, key=key) is not None


async def invariant_violations(conn: AsyncConnection) -> list[str]:
    problems: list[str] = []

    # 1. users.balance == SUM(ledger.amount), for every user (and no ledger row without one).
    for user_id, balance, total in await sql.rows(conn, _BALANCE_MISMATCH):
        problems.append(f"user {user_id}: balance {balance} != ledger sum {int(total)}")
    for (user_id,) in await sql.rows(conn, _ORPHAN_LEDGER):
        problems.append(f"ledger rows for unknown user {user_id}")

    # 2. Each ledger row's kind, sign, order and key agree.
    for row_id, kind, amount, order_id, key in await sql.rows(conn, _BAD_LEDGER_ROWS):
        problems.append(
            f"ledger row {row_id}: {kind} of {amount} for order {order_id} with key {key!r}"
        )

    # 3. Each order's money state matches its ledger rows and its status.
    for (
        order_id,
        status,
        money,
        price,
        holds,
        captures,
        releases,
        bad_amounts,
        other_user,
    ) in await sql.rows(conn, _ORDER_BOOKS):
        state = Money(money)
        if (holds, captures, releases) != _EXPECTED_ROWS[state]:
            problems.append(
                f"order {order_id}: money={money} but ledger has hold={holds}"
                f" capture={captures} release={releases}"
            )
        if state in _MONEY_STATUSES and OrderStatus(status) not in _MONEY_STATUSES[state]:
            problems.append(f"order {order_id}: money={money} with status={status}")
        if bad_amounts:
            problems.append(
                f"order {order_id}: {bad_amounts} ledger row(s) not matching price {price}"
            )
        if other_user:
            problems.append(f"order {order_id}: {other_user} ledger row(s) of another user")
    problems += await payments.violations(conn)  # Stars top-ups and their refunds
    return problems
