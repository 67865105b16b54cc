"""Telegram Stars top-ups: one row per payment, keyed by its telegram_payment_charge_id.

A payment's life is a small state machine, each move a guarded UPDATE ... WHERE status = ...
in the same transaction as its ledger row (kinds credit/debit, UNIQUE keys):

    (new) --credit, key stars:{charge}--> credited
    credited --debit, key stars-refund:{charge}:{n}--> refunding   (before refundStarPayment)
    refunding --> refunded                                         (Telegram refunded)
    refunding --credit, key stars-restore:{charge}:{n}--> credited (Telegram refused)
    credited --debit, may go negative--> refunded                  (refunded elsewhere)

`n` counts refund attempts, so a refused refund can be tried again with fresh keys while
each attempt's money moves at most once. Every money move first takes the user's row lock
(`ledger.lock_user`), so on PostgreSQL a refund and a purchase of one user queue.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import ledger, sql
from storage.errors import InsufficientFunds, InvalidAmount
from storage.models import LedgerKind

if TYPE_CHECKING:
    from storage.db import Database


class PaymentStatus(StrEnum):
    CREDITED = "credited"  # the wallet holds the money
    REFUNDING = "refunding"  # taken off the wallet, refundStarPayment in flight
    REFUNDED = "refunded"  # the Stars went back to the user


class PaymentSource(StrEnum):
    UPDATE = "update"  # the successful_payment message
    RECONCILED = "reconciled"  # found in getStarTransactions, its update lost


@dataclass(frozen=True, slots=True)
class Payment:
    id: int
    charge_id: str
    user_id: int
    stars: int
    amount: int  # credited, minor units
    currency: str
    payload: str
    source: PaymentSource
    status: PaymentStatus
    refund_attempts: int
    created_at: float
    updated_at: float
    refund_seen_at: float | None


@dataclass(frozen=True, slots=True)
class PaymentSummary:
    """Top-ups paid and refunds made since `since` (by the time each happened)."""

    topups: int
    topped_up: int  # minor units credited
    topup_stars: int
    refunds: int
    refunded: int  # minor units taken back
    refund_stars: int


_COLUMNS = (
    "id, charge_id, user_id, stars, amount, currency, payload, source, status,"
    " refund_attempts, created_at, updated_at, refund_seen_at"
)
CREDIT_KEY = "stars:{charge}"
REFUND_KEY = "stars-refund:{charge}:{attempt}"
RESTORE_KEY = "stars-restore:{charge}:{attempt}"
MAX_CHARGE_ID = 256  # Telegram's ids are far shorter; anything longer is not one

_GET = text(f"SELECT {_COLUMNS} FROM payments WHERE charge_id = :charge_id")
_INSERT = text(
    "INSERT INTO payments (charge_id, user_id, stars, amount, currency, payload, source,"
    " status, refund_attempts, created_at, updated_at)"
    " VALUES (:charge_id, :user_id, :stars, :amount, :currency, :payload, :source,"
    " 'credited', 0, :now, :now)"
    " ON CONFLICT (charge_id) DO NOTHING RETURNING id"
)
_MOVE = text(
    f"UPDATE payments SET status = :new, updated_at = :now,"
    f" refund_attempts = refund_attempts + :attempt"
    f" WHERE charge_id = :charge_id AND status = :old RETURNING {_COLUMNS}"
)
_KNOWN = text("SELECT charge_id FROM payments WHERE charge_id IN :ids").bindparams(
    bindparam("ids", expanding=True)
)
_OF_USER = text(
    f"SELECT {_COLUMNS} FROM payments WHERE user_id = :user_id"
    " ORDER BY created_at DESC, id DESC LIMIT :limit"
)
_SEEN = text(
    "UPDATE payments SET refund_seen_at = COALESCE(refund_seen_at, :now)"
    " WHERE charge_id = :charge_id"
)
_STUCK = text(
    f"SELECT {_COLUMNS} FROM payments WHERE status = 'refunding' AND updated_at < :before"
    " ORDER BY updated_at"
)
_TOPUPS = text(
    "SELECT COUNT(*), COALESCE(SUM(amount), 0), COALESCE(SUM(stars), 0)"
    " FROM payments WHERE created_at >= :since"
)
_REFUNDS = text(
    "SELECT COUNT(*), COALESCE(SUM(amount), 0), COALESCE(SUM(stars), 0)"
    " FROM payments WHERE status = 'refunded' AND updated_at >= :since"
)
# Each payment's ledger rows: its one credit, and the sum of all of them.
_BOOKS = text(
    "SELECT p.charge_id, p.status, p.amount,"
    " (SELECT COUNT(*) FROM ledger l WHERE l.idempotency_key = 'stars:' || p.charge_id"
    "   AND l.user_id = p.user_id AND l.kind = 'credit' AND l.amount = p.amount),"
    " (SELECT COALESCE(SUM(l.amount), 0) FROM ledger l WHERE l.user_id = p.user_id AND ("
    "   l.idempotency_key = 'stars:' || p.charge_id"
    "   OR substr(l.idempotency_key, 1, length(p.charge_id) + 14)"
    "      = 'stars-refund:' || p.charge_id || ':'"
    "   OR substr(l.idempotency_key, 1, length(p.charge_id) + 15)"
    "      = 'stars-restore:' || p.charge_id || ':'))"
    " FROM payments p ORDER BY p.id"
)
_ORPHAN_CREDITS = text(
    "SELECT l.idempotency_key FROM ledger l WHERE substr(l.idempotency_key, 1, 6) = 'stars:'"
    " AND NOT EXISTS (SELECT 1 FROM payments p"
    "   WHERE 'stars:' || p.charge_id = l.idempotency_key) ORDER BY l.id"
)


def _payment(row: Sequence[Any]) -> Payment:
    return Payment(
        id=int(row[0]),
        charge_id=row[1],
        user_id=int(row[2]),
        stars=int(row[3]),
        amount=int(row[4]),
        currency=row[5],
        payload=row[6],
        source=PaymentSource(row[7]),
        status=PaymentStatus(row[8]),
        refund_attempts=int(row[9]),
        created_at=float(row[10]),
        updated_at=float(row[11]),
        refund_seen_at=None if row[12] is None else float(row[12]),
    )


async def _get(conn: AsyncConnection, charge_id: str) -> Payment | None:
    row = await sql.first(conn, _GET, charge_id=charge_id)
    return _payment(row) if row else None


async def _book(
    conn: AsyncConnection, moved: Payment, sign: int, note: str, key: str, now: float
) -> None:
    """The ledger row of a refund step: the payment's amount out (-1) or back in (+1),
    keyed by the charge and the refund attempt."""
    await ledger.add_row(
        conn,
        user_id=moved.user_id,
        amount=sign * moved.amount,
        kind=LedgerKind.DEBIT if sign < 0 else LedgerKind.CREDIT,
        order_id=None,
        note=note,
        now=now,
        key=key.format(charge=moved.charge_id, attempt=moved.refund_attempts),
    )


async def _move(
    conn: AsyncConnection,
    charge_id: str,
    old: PaymentStatus,
    new: PaymentStatus,
    now: float,
    *,
    count_attempt: bool = False,
) -> Payment | None:
    """The guarded move; the payment as moved, or None if it was not in `old`."""
    row = await sql.first(
        conn,
        _MOVE,
        new=new.value,
        now=now,
        attempt=1 if count_attempt else 0,
        charge_id=charge_id,
        old=old.value,
    )
    return _payment(row) if row else None


class Payments:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def credit(
        self,
        *,
        charge_id: str,
        user_id: int,
        stars: int,
        amount: int,
        currency: str,
        payload: str,
        source: PaymentSource,
        now: float | None = None,
    ) -> tuple[Payment, bool]:
        """Record the payment and credit the wallet, once per charge id.

        Returns (the payment, True) when this call credited it, (the payment as it was
        recorded before, False) when the charge was known already: nothing changes then.
        """
        if stars <= 0 or amount <= 0:
            raise InvalidAmount(f"a top-up must be positive, got {stars} Stars, {amount}")
        if not 0 < len(charge_id) <= MAX_CHARGE_ID:
            raise InvalidAmount("a charge id is 1..256 characters")
        ts = time.time() if now is None else now

        async def tx(conn: AsyncConnection) -> tuple[Payment, bool]:
            await ledger.lock_user(conn, user_id, ts)
            inserted = await sql.first(
                conn,
                _INSERT,
                charge_id=charge_id,
                user_id=user_id,
                stars=stars,
                amount=amount,
                currency=currency,
                payload=payload,
                source=source.value,
                now=ts,
            )
            if inserted is not None:
                await ledger.add_row(
                    conn,
                    user_id=user_id,
                    amount=amount,
                    kind=LedgerKind.CREDIT,
                    order_id=None,
                    note=f"{stars} Stars ({source.value})",
                    now=ts,
                    key=CREDIT_KEY.format(charge=charge_id),
                )
            payment = await _get(conn, charge_id)
            assert payment is not None  # inserted now, or by the transaction we waited for
            return payment, inserted is not None

        return await self._db.write(tx)

    async def get(self, charge_id: str) -> Payment | None:
        async def q(conn: AsyncConnection) -> Payment | None:
            return await _get(conn, charge_id)

        return await self._db.read(q)

    async def known(self, charge_ids: Iterable[str]) -> set[str]:
        """Which of these charge ids are recorded (whatever their status)."""
        wanted = list(dict.fromkeys(charge_ids))

        async def q(conn: AsyncConnection) -> set[str]:
            found: set[str] = set()
            for start in range(0, len(wanted), 500):  # SQLite's bound-parameter limit
                chunk = wanted[start : start + 500]
                found.update(row[0] for row in await sql.rows(conn, _KNOWN, ids=chunk))
            return found

        return await self._db.read(q) if wanted else set()

    async def list_for_user(self, user_id: int, limit: int = 5) -> list[Payment]:
        """The user's payments, newest first."""

        async def q(conn: AsyncConnection) -> list[Payment]:
            return [
                _payment(row)
                for row in await sql.rows(conn, _OF_USER, user_id=user_id, limit=limit)
            ]

        return await self._db.read(q)

    async def begin_refund(self, charge_id: str, *, now: float | None = None) -> Payment | None:
        """credited -> refunding, taking the amount off the available balance first.

        InsufficientFunds(available) if the wallet no longer holds it (nothing changes).
        Returns the payment now refunding, or None if it was not credited (unknown,
        refunding or refunded already: look it up to say which).
        """
        ts = time.time() if now is None else now

        async def tx(conn: AsyncConnection) -> Payment | None:
            payment = await _get(conn, charge_id)
            if payment is None or payment.status is not PaymentStatus.CREDITED:
                return None
            _banned, available = await ledger.lock_user(conn, payment.user_id, ts)
            moved = await _move(
                conn,
                charge_id,
                PaymentStatus.CREDITED,
                PaymentStatus.REFUNDING,
                ts,
                count_attempt=True,
            )
            if moved is None:
                return None
            if available < moved.amount:
                raise InsufficientFunds(available)  # rolls the move back
            await _book(conn, moved, -1, f"{moved.stars} Stars refund", REFUND_KEY, ts)
            return moved

        return await self._db.write(tx)

    async def finish_refund(self, charge_id: str, *, now: float | None = None) -> bool:
        """refunding -> refunded: Telegram gave the Stars back. True if this call moved it."""
        ts = time.time() if now is None else now

        async def tx(conn: AsyncConnection) -> bool:
            moved = await _move(
                conn, charge_id, PaymentStatus.REFUNDING, PaymentStatus.REFUNDED, ts
            )
            return moved is not None

        return await self._db.write(tx)

    async def cancel_refund(self, charge_id: str, *, now: float | None = None) -> bool:
        """refunding -> credited: Telegram refused, the money goes back to the wallet."""
        ts = time.time() if now is None else now

        async def tx(conn: AsyncConnection) -> bool:
            payment = await _get(conn, charge_id)
            if payment is None:
                return False
            await ledger.lock_user(conn, payment.user_id, ts)
            moved = await _move(
                conn, charge_id, PaymentStatus.REFUNDING, PaymentStatus.CREDITED, ts
            )
            if moved is None:
                return False
            await _book(conn, moved, 1, f"{moved.stars} Stars refund refused", RESTORE_KEY, ts)
            return True

        return await self._db.write(tx)

    async def refunded_elsewhere(self, charge_id: str, *, now: float | None = None) -> bool:
        """credited -> refunded without our /refund (Telegram says the Stars went back):
        the wallet loses the amount even if that takes it below zero, since the user has
        the money back. True if this call moved it."""
        ts = time.time() if now is None else now

        async def tx(conn: AsyncConnection) -> bool:
            payment = await _get(conn, charge_id)
            if payment is None:
                return False
            await ledger.lock_user(conn, payment.user_id, ts)
            moved = await _move(
                conn,
                charge_id,
                PaymentStatus.CREDITED,
                PaymentStatus.REFUNDED,
                ts,
                count_attempt=True,
            )
            if moved is None:
                return False
            await _book(
                conn, moved, -1, f"{moved.stars} Stars refunded by Telegram", REFUND_KEY, ts
            )
            return True

        return await self._db.write(tx)

    async def note_refund_seen(self, charge_id: str, *, now: float | None = None) -> bool:
        """Record that Telegram reported the refund (first report kept). True if known."""
        ts = time.time() if now is None else now

        async def tx(conn: AsyncConnection) -> bool:
            return await sql.count(conn, _SEEN, now=ts, charge_id=charge_id) == 1

        return await self._db.write(tx)

    async def stuck_refunds(self, older_than: float) -> list[Payment]:
        """Refunds whose outcome was never recorded (a crash mid-way), oldest first."""

        async def q(conn: AsyncConnection) -> list[Payment]:
            return [_payment(row) for row in await sql.rows(conn, _STUCK, before=older_than)]

        return await self._db.read(q)

    async def summary(self, since: float) -> PaymentSummary:
        async def q(conn: AsyncConnection) -> PaymentSummary:
            topups = await sql.first(conn, _TOPUPS, since=since)
            refunds = await sql.first(conn, _REFUNDS, since=since)
            assert topups is not None and refunds is not None
            return PaymentSummary(*(int(v) for v in topups), *(int(v) for v in refunds))

        return await self._db.read_snapshot(q)

    async def check(self) -> list[str]:
        """Every way the payments and the ledger disagree; [] when consistent."""
        return await self._db.read_snapshot(violations)


async def violations(conn: AsyncConnection) -> list[str]:
    """Each payment has one credit row of its amount; its rows sum to the amount while
    credited and to zero once refunding or refunded; no stars row without a payment."""
    problems: list[str] = []
    for charge_id, status, amount, credits, net in await sql.rows(conn, _BOOKS):
        expected = amount if status == PaymentStatus.CREDITED else 0
        if credits != 1 or net != expected:
            problems.append(
                f"payment {charge_id}: {status} of {amount} but its ledger rows sum to {net}"
                f" ({credits} credit row(s))"
            )
    for (key,) in await sql.rows(conn, _ORPHAN_CREDITS):
        problems.append(f"ledger row {key!r} without its payment")
    return problems
