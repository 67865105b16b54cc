"""The wallet (shop mode): admin credits/debits, balances, history and the invariant check."""

from __future__ import annotations

import sqlite3
import time
from typing import TYPE_CHECKING

from storage import ledger, payments, rows
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

        def tx(conn: sqlite3.Connection) -> LedgerRow | None:
            if _key_used(conn, idempotency_key):
                return None
            ledger.ensure_user(conn, user_id, ts)
            return ledger.add_row(
                conn,
                user_id=user_id,
                amount=amount,
                kind=LedgerKind.CREDIT,
                order_id=None,
                note=note,
                now=ts,
                key=idempotency_key,
            )

        return await self._db.write(tx)

    async def debit(
        self,
        user_id: int,
        amount: int,
        *,
        note: str | None,
        idempotency_key: str,
        allow_negative: bool = False,
        now: float | None = None,
    ) -> LedgerRow | None:
        """Take `amount` (> 0) off the available balance. InsufficientFunds(available) if short
        (unless allow_negative); None if the idempotency key was used already."""
        if amount <= 0:
            raise InvalidAmount(f"a debit must be positive, got {amount}")
        ts = time.time() if now is None else now

        def tx(conn: sqlite3.Connection) -> LedgerRow | None:
            if _key_used(conn, idempotency_key):
                return None
            if allow_negative:
                ledger.ensure_user(conn, user_id, ts)
            elif ledger.available(conn, user_id) < amount:
                raise InsufficientFunds(ledger.available(conn, user_id))
            return ledger.add_row(
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

        def q(conn: sqlite3.Connection) -> tuple[int, int]:
            row = conn.execute(
                "SELECT (SELECT balance FROM users WHERE id = ?),"
                " (SELECT COALESCE(SUM(price), 0) FROM orders INDEXED BY orders_active"
                "  WHERE user_id = ? AND status IN ('purchasing', 'waiting') AND money = 'held')",
                (user_id, user_id),
            ).fetchone()
            return int(row[0] or 0), int(row[1])

        return await self._db.read(q)

    async def holds_money(self) -> bool:
        """True while any wallet has a balance or any order has money on hold: what a
        change of the wallets' currency would silently re-label."""

        def q(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM users WHERE balance <> 0)"
                " OR EXISTS (SELECT 1 FROM orders WHERE money = 'held')"
            ).fetchone()
            return bool(row[0])

        return await self._db.read(q)

    async def last_order_currency(self) -> str | None:
        """The currency of the newest order, if any: what the money was in before the
        wallets' currency was recorded (databases older than that record)."""

        def q(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT currency FROM orders ORDER BY id DESC LIMIT 1").fetchone()
            return str(row[0]) if row else None

        return await self._db.read(q)

    async def history(self, user_id: int, limit: int = 10) -> list[LedgerRow]:
        """The user's ledger rows, newest first."""

        def q(conn: sqlite3.Connection) -> list[LedgerRow]:
            return [
                rows.ledger(row)
                for row in conn.execute(
                    f"SELECT {LEDGER_COLUMNS} FROM ledger WHERE user_id = ?"
                    " ORDER BY id DESC LIMIT ?",
                    (user_id, limit),
                )
            ]

        return await self._db.read(q)

    async def check_invariant(self) -> list[str]:
        """Every way the money books disagree, one readable line each; [] when consistent."""
        return await self._db.read_snapshot(invariant_violations)


def _key_used(conn: sqlite3.Connection, key: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM ledger WHERE idempotency_key = ?", (key,)).fetchone()
        is not None
    )


def invariant_violations(conn: sqlite3.Connection) -> list[str]:
    problems: list[str] = []

    # 1. users.balance == SUM(ledger.amount), for every user (and no ledger row without one).
    for user_id, balance, total in conn.execute(
        "SELECT u.id, u.balance, COALESCE(SUM(l.amount), 0) FROM users u"
        " LEFT JOIN ledger l ON l.user_id = u.id GROUP BY u.id"
        " HAVING u.balance != COALESCE(SUM(l.amount), 0) ORDER BY u.id"
    ):
        problems.append(f"user {user_id}: balance {balance} != ledger sum {total}")
    for (user_id,) in conn.execute(
        "SELECT DISTINCT l.user_id FROM ledger l LEFT JOIN users u ON u.id = l.user_id"
        " WHERE u.id IS NULL"
    ):
        problems.append(f"ledger rows for unknown user {user_id}")

    # 2. Each ledger row's kind, sign, order and key agree.
    for row_id, kind, amount, order_id, key in conn.execute(
        "SELECT id, kind, amount, order_id, idempotency_key FROM ledger WHERE"
        " (kind = 'credit' AND (amount <= 0 OR order_id IS NOT NULL))"
        " OR (kind = 'debit' AND (amount >= 0 OR order_id IS NOT NULL))"
        " OR (kind IN ('hold', 'capture', 'release') AND order_id IS NULL)"
        " OR (kind = 'hold' AND idempotency_key NOT IN"
        "     ('hold:' || order_id, 'rehold:' || order_id))"
        " OR (kind = 'capture' AND idempotency_key != 'capture:' || order_id)"
        " OR (kind = 'release' AND idempotency_key != 'release:' || order_id)"
        " ORDER BY id"
    ):
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
    ) in conn.execute(
        "SELECT o.id, o.status, o.money, o.price,"
        " COUNT(l.id) FILTER (WHERE l.kind = 'hold'),"
        " COUNT(l.id) FILTER (WHERE l.kind = 'capture'),"
        " COUNT(l.id) FILTER (WHERE l.kind = 'release'),"
        " COUNT(l.id) FILTER (WHERE (l.kind = 'hold' AND l.amount != -o.price)"
        "   OR (l.kind = 'capture' AND l.amount != 0)"
        "   OR (l.kind = 'release' AND l.amount != o.price)),"
        " COUNT(l.id) FILTER (WHERE l.user_id != o.user_id)"
        " FROM orders o LEFT JOIN ledger l ON l.order_id = o.id"
        " GROUP BY o.id ORDER BY o.id"
    ):
        counts = (holds, captures, releases)
        state = Money(money)
        if state is Money.NONE:
            ok = counts == (0, 0, 0)
        elif state is Money.HELD:
            ok = counts == (1, 0, 0)
        elif state is Money.RELEASED:
            ok = counts == (1, 0, 1)
        else:  # captured: hold+capture, or hold+release+rehold+capture (revived)
            ok = counts in ((1, 1, 0), (2, 1, 1))
        if not ok:
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
    problems += payments.violations(conn)  # Stars top-ups and their refunds
    return problems
