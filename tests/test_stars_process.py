"""The real process (`python -m bot`): a Stars payment whose update was lost in a SIGKILL
is credited by the reconciler at the next start, once."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from sandbox.smsman import FakeSmsMan
from sandbox.telegram import FakeTelegram
from storage.db import Database, database_path
from storage.payments import PaymentSource, PaymentStatus
from tests.botproc import BotProcess, wait_until
from tests.test_stars import CREDIT_100, invoice_for


async def test_payment_update_lost_in_a_crash_is_credited_after_restart(
    telegram: FakeTelegram, smsman: FakeSmsMan, tmp_path: Path
) -> None:
    bot = BotProcess.for_fakes(
        telegram, smsman, tmp_path, access_mode="shop", stars_rate="0.30", topup_stars="100"
    )
    url = bot.database_url
    try:
        await bot.start()
        user = telegram.user(1)
        invoice = await invoice_for(user, 100)
        payment = await user.pay(invoice, deliver=False)  # the Stars are taken
        assert payment.ok

        # Keep the database's write lock, so the bot can take the update but not record it.
        lock = sqlite3.connect(database_path(url), isolation_level=None, timeout=10)
        lock.execute("BEGIN IMMEDIATE")
        try:
            update_id = telegram.deliver_payment(payment)

            def handed_out() -> bool:  # fetched and confirmed: Telegram will not resend it
                return all(u["update_id"] != update_id for u in telegram.pending_updates)

            await wait_until(handed_out, timeout=10)
            await asyncio.sleep(0.3)  # the handler is waiting for the lock
            assert await bot.kill() == -9
        finally:
            lock.execute("ROLLBACK")
            lock.close()

        async with await Database.open(url) as db:
            assert await db.payments.get(str(payment.charge_id)) is None, "lost, as intended"
            assert await db.wallet.balance(1) == (0, 0)

        await bot.start()

        async def credited() -> bool:
            async with await Database.open(url) as db:
                return await db.payments.get(str(payment.charge_id)) is not None

        await wait_until(credited, timeout=10, interval=0.2)
        await bot.restart()  # the reconciler runs again at start: nothing more
        await asyncio.sleep(1.0)
        assert await bot.terminate() == 0
    finally:
        await bot.stop()
    async with await Database.open(url) as db:
        stored = await db.payments.get(str(payment.charge_id))
        assert stored is not None
        assert stored.source is PaymentSource.RECONCILED
        assert stored.status is PaymentStatus.CREDITED
        assert await db.wallet.balance(1) == (CREDIT_100, 0)
        assert await db.wallet.check_invariant() == []
    log = bot.log_text()
    assert f"payment {payment.charge_id} user 1: reconciled" in log
    assert log.count(": reconciled,") == 1
    assert "Traceback" not in log
    assert telegram.token not in log
