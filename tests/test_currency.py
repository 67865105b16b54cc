"""CURRENCY is the currency of SMS-Man's prices and of the wallets (issue 11, point 5).

The fake's account is in RUB; with CURRENCY=USD every call that takes `currency` must name
it, so costs come converted instead of RUB figures re-labelled as dollars. The wallets'
currency is recorded at first start; a change while money is held is refused.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from bot.services.currency import CURRENCY_KEY, CurrencyChanged
from bot.settings import Settings
from sandbox.smsman import FakeSmsMan
from sandbox.telegram import FakeTelegram
from storage.db import Database
from tests.flows import buy, reach_confirm, say
from tests.inprocess import running
from tests.test_settings import ROOT, _env_without_settings

pytestmark = pytest.mark.asyncio

SettingsFactory = Callable[..., Settings]
ADMIN = 1000


async def test_prices_balance_and_purchase_are_in_currency(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    assert smsman.account_currency == "RUB"
    settings = bot_settings(access_mode="shop", currency="USD")
    async with running(settings) as app:
        user = telegram.user(1)
        await say(telegram.user(ADMIN), "/credit 1 10", "Credited")
        confirm = await reach_confirm(user)  # Russia/Telegram: 25.00 RUB = 0.25 USD
        assert "0.25 $" in confirm.text and "25.00" not in confirm.text
        await user.click("Buy", message_id=confirm.message_id)
        await user.wait_for("Number: +")
        [call] = smsman.calls_to("get-number")
        assert call.params["currency"] == "USD"
        assert Decimal(call.params["maxPrice"]) == Decimal("0.25")
        assert await app.db.wallet.balance(1) == (10_00 - 25, 25)
        assert all(c.params.get("currency") == "USD" for c in smsman.calls_to("get-prices"))
        stats = await say(telegram.user(ADMIN), "/stats", "SMS-Man balance")
        assert "SMS-Man balance: 0.75" in stats.text  # 100 - 25 RUB, in USD
        assert smsman.calls_to("get-balance")[-1].params["currency"] == "USD"


async def test_currency_is_recorded_and_may_change_while_no_money_is_held(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings(access_mode="shop")) as app:
        assert await app.db.kv.get(CURRENCY_KEY) == "RUB"
    async with running(bot_settings(access_mode="shop", currency="EUR")) as app:
        assert await app.db.kv.get(CURRENCY_KEY) == "EUR"  # wallets were empty


async def test_a_currency_change_while_money_is_held_refuses_to_start(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bot.sqlite3'}"
    db = await Database.open(url)
    try:
        await db.kv.set(CURRENCY_KEY, "RUB")
        await db.wallet.credit(7, 150_00, note=None, idempotency_key="credit:test")
    finally:
        await db.close()
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bot"],
        cwd=tmp_path,
        env={
            **_env_without_settings(),
            "PYTHONPATH": str(ROOT),
            "BOT_TOKEN": "1:supersecret",
            "SMSMAN_TOKEN": "alsosecret",
            "TELEGRAM_API_URL": "http://127.0.0.1:9",
            "SMSMAN_API_URL": "http://127.0.0.1:9/control",
            "DATABASE_URL": url,
            "ACCESS_MODE": "shop",
            "CURRENCY": "USD",
        },
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("CURRENCY is invalid") and "RUB" in lines[0]
    db = await Database.open(url)
    try:
        assert await db.kv.get(CURRENCY_KEY) == "RUB"  # nothing changed
        assert await db.wallet.balance(7) == (150_00, 0)
    finally:
        await db.close()


async def test_a_database_from_before_the_record_is_judged_by_its_orders(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    """No record yet, but an order in RUB holds money: USD is refused, RUB is recorded."""
    async with running(bot_settings(access_mode="shop")) as app:
        await say(telegram.user(ADMIN), "/credit 1 100", "Credited")
        await buy(telegram.user(1))
        assert await app.db.kv.delete(CURRENCY_KEY)
    with pytest.raises(CurrencyChanged, match="hold money in RUB"):
        async with running(bot_settings(access_mode="shop", currency="USD")):
            pass
    async with running(bot_settings(access_mode="shop")) as app:
        assert await app.db.kv.get(CURRENCY_KEY) == "RUB"
