"""Background loops log and go on; cosmetic calls never stop a start (issue 11, point 4)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from bot.settings import Settings
from sandbox.smsman import FakeSmsMan
from sandbox.telegram import FakeTelegram
from tests.flows import say
from tests.inprocess import running

pytestmark = pytest.mark.asyncio

SettingsFactory = Callable[..., Settings]
ADMIN = 1000


async def test_the_balance_watch_survives_a_failed_check(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    """A check that raises something other than an SMS-Man error (here a locked database)
    is logged; the next check still runs and the admins hear of the low balance."""
    admin = telegram.user(ADMIN, started=True)
    async with running(bot_settings(low_balance_alert="50")) as app:
        await app.db.users.upsert(ADMIN, "en")
        smsman.balance = Decimal("10.00")
        real_get = app.db.kv.get
        failures = 0

        async def flaky_get(key: str) -> Any:
            nonlocal failures
            if failures < 2:
                failures += 1
                raise sqlite3.OperationalError("database is locked")
            return await real_get(key)

        app.db.kv.get = flaky_get  # type: ignore[method-assign]
        watch = asyncio.create_task(app.admin.watch_balance(every=0.05))
        try:
            alert = await admin.wait_for("balance is low", timeout=5)
            assert failures == 2 and "10.00" in alert.text
            assert not watch.done()
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch


@pytest.mark.parametrize("status", [400, 500])
async def test_a_failed_commands_menu_does_not_stop_the_start(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory, status: int
) -> None:
    telegram.fail_next("setMyCommands", status=status, times=10)
    async with running(bot_settings()):
        reply = await say(telegram.user(1), "/start", "Hi")
        assert reply.has_keyboard
    assert telegram.injected, "setMyCommands was tried"
