"""Stars payments in storage, on both engines: credited once per charge, the refund state
machine, the books."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.db import Database
from storage.errors import InsufficientFunds
from storage.payments import PaymentSource, PaymentStatus


async def _credit(db: Database, charge: str, user: int = 7, amount: int = 135_00) -> bool:
    _payment, new = await db.payments.credit(
        charge_id=charge,
        user_id=user,
        stars=100,
        amount=amount,
        currency="RUB",
        payload="p",
        source=PaymentSource.UPDATE,
    )
    return new


async def test_a_charge_is_credited_once_even_when_raced(database_url: str) -> None:
    async with await Database.open(database_url) as db:
        results = await asyncio.gather(*(_credit(db, "ch-1") for _ in range(10)))
        assert results.count(True) == 1
        assert await db.wallet.balance(7) == (135_00, 0)
        assert await db.payments.known(["ch-1", "ch-2"]) == {"ch-1"}
        assert await db.wallet.check_invariant() == []


async def test_refund_moves_are_guarded_and_keep_the_books(database_url: str) -> None:
    async with await Database.open(database_url) as db:
        await _credit(db, "ch-1")
        started = await db.payments.begin_refund("ch-1")
        assert started is not None and started.status is PaymentStatus.REFUNDING
        assert await db.payments.begin_refund("ch-1") is None  # not twice
        assert await db.wallet.balance(7) == (0, 0)
        assert await db.wallet.check_invariant() == []
        assert await db.payments.cancel_refund("ch-1")  # Telegram refused
        assert not await db.payments.cancel_refund("ch-1")
        assert await db.wallet.balance(7) == (135_00, 0)
        assert await db.wallet.check_invariant() == []
        again = await db.payments.begin_refund("ch-1")  # a second attempt, fresh keys
        assert again is not None and again.refund_attempts == 2
        assert await db.payments.finish_refund("ch-1")
        assert not await db.payments.finish_refund("ch-1")
        assert not await db.payments.cancel_refund("ch-1")
        assert not await db.payments.refunded_elsewhere("ch-1")
        payment = await db.payments.get("ch-1")
        assert payment is not None and payment.status is PaymentStatus.REFUNDED
        assert await db.wallet.balance(7) == (0, 0)
        assert await db.wallet.check_invariant() == []


async def test_a_refund_of_spent_money_is_refused_and_changes_nothing(database_url: str) -> None:
    async with await Database.open(database_url) as db:
        await _credit(db, "ch-1")
        await db.wallet.debit(7, 1, note=None, idempotency_key="spend")
        with pytest.raises(InsufficientFunds) as refused:
            await db.payments.begin_refund("ch-1")
        assert refused.value.available == 135_00 - 1
        payment = await db.payments.get("ch-1")
        assert payment is not None and payment.status is PaymentStatus.CREDITED
        assert payment.refund_attempts == 0
        assert await db.wallet.check_invariant() == []


async def test_refunded_elsewhere_may_take_the_wallet_below_zero(database_url: str) -> None:
    async with await Database.open(database_url) as db:
        await _credit(db, "ch-1")
        await db.wallet.debit(7, 100_00, note=None, idempotency_key="spend")
        assert await db.payments.refunded_elsewhere("ch-1")
        assert await db.wallet.balance(7) == (-100_00, 0)
        assert await db.wallet.check_invariant() == []


async def test_the_invariant_sees_a_payment_without_its_money(database_url: str) -> None:
    async with await Database.open(database_url) as db:
        await _credit(db, "ch-1")

        async def tamper(conn: AsyncConnection) -> None:
            await conn.execute(text("UPDATE payments SET status = 'refunded'"))

        await db.write(tamper)
        problems = await db.wallet.check_invariant()
        assert problems and "ch-1" in problems[0]
