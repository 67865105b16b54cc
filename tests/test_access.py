"""Who may use the bot: the private allow-list, bans, and admin commands for admins only."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal

import pytest

from bot.settings import Settings
from sandbox.smsman import FakeSmsMan
from sandbox.telegram import FakeTelegram
from tests.inprocess import running
from tests.test_shop import ADMIN, SHOP, buy, credit, reach_confirm, say

pytestmark = pytest.mark.asyncio

SettingsFactory = Callable[..., Settings]
STRANGER = 424242
# Buttons a stranger could forge: menu, a country, a service, Buy with a quote, Cancel.
FORGED = ("m:buy", "m:bal", "m:orders", "c:1", "s:1:1", "b:1:1:2500:2500:0", "o:cancel:1")


async def settled(smsman: FakeSmsMan, quiet: float = 0.3) -> int:
    """Wait until the bot's background start-up calls to SMS-Man are over."""
    count = -1
    while count != len(smsman.calls):
        count = len(smsman.calls)
        await asyncio.sleep(quiet)
    return count


async def test_stranger_in_private_mode_is_refused_and_causes_no_provider_call(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings()) as app:
        before = await settled(smsman)
        stranger = telegram.user(STRANGER)
        for text in ("/start", "/buy", "/balance", "/orders", "Russia", "/credit 1 100"):
            refusal = await say(stranger, text)
            assert "private" in refusal.text and str(STRANGER) in refusal.text
            assert refusal.buttons == []
        menu = stranger.last
        for data in FORGED:
            callback_id = await stranger.click_data(data, message_id=menu.message_id)
            answer = await stranger.wait_answered(callback_id)
            assert str(STRANGER) in answer["text"] and answer.get("show_alert") is True
        await telegram.wait_idle()
        assert len(smsman.calls) == before, smsman.calls[before:]
        assert await app.db.orders.list_for_user(STRANGER) == []
    assert telegram.errors == []


async def test_private_balance_is_the_operators_smsman_balance(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    smsman.balance = Decimal("123.45")
    async with running(bot_settings()):
        for user_id in (1, ADMIN):  # an allowed user and an admin
            reply = await say(telegram.user(user_id), "/balance", "balance")
            assert "SMS-Man balance: 123.45" in reply.text
    assert telegram.errors == []


async def test_ban_refuses_everything_until_unban(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings(**SHOP)) as app:
        admin, user = telegram.user(ADMIN), telegram.user(2)
        await credit(telegram, 2, "100")
        card = await buy(user)  # a waiting order the ban leaves alone
        order = (await app.db.orders.list_for_user(2))[0]
        get_numbers = len(smsman.calls_to("get-number"))

        reply = await say(admin, "/ban 2", "banned")
        assert "2" in reply.text
        again = await say(admin, "/ban 2", "banned already")
        assert "2" in again.text
        for text in ("/start", "/buy", "/balance", "/orders", "hello"):
            refusal = await say(user, text)
            assert "suspended" in refusal.text
        for data in (*FORGED, f"o:cancel:{order.id}"):
            callback_id = await user.click_data(data, message_id=card.message_id)
            answer = await user.wait_answered(callback_id)
            assert "suspended" in answer["text"]
        await telegram.wait_idle()
        assert len(smsman.calls_to("get-number")) == get_numbers
        assert smsman.calls_to("set-status") == []
        assert (await app.db.users.get(2)).banned  # type: ignore[union-attr]

        await say(admin, "/unban 2", "unbanned")
        await say(admin, "/unban 2", "was not banned")
        await say(user, "/start", "Hi")
        await user.click("Cancel", message_id=card.message_id)
        await user.wait_for("cancelled")
        assert await app.db.wallet.balance(2) == (100_00, 0)
        assert await app.db.wallet.check_invariant() == []
    assert telegram.errors == []


async def test_ban_in_private_mode_refuses_an_allowed_user_and_admins_cannot_be_banned(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings()) as app:
        admin = telegram.user(ADMIN)
        await say(admin, "/ban 3", "banned")
        before = await settled(smsman)
        refusal = await say(telegram.user(3), "/buy")
        assert "suspended" in refusal.text
        reply = await say(admin, f"/ban {ADMIN}", "cannot be banned")
        assert "ADMIN_IDS" in reply.text
        assert not (await app.db.users.get(ADMIN)).banned  # type: ignore[union-attr]
        await say(admin, "/start", "Hi")  # still served
        assert len(smsman.calls) == before
    assert telegram.errors == []


@pytest.mark.parametrize("mode", ["shop", "private"])
async def test_admin_commands_do_not_exist_for_others(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory, mode: str
) -> None:
    settings = bot_settings(**SHOP) if mode == "shop" else bot_settings()
    async with running(settings) as app:
        before = await settled(smsman)
        user = telegram.user(1)  # allowed in private mode, a customer in shop mode
        for text in (
            "/credit 1 100",
            "/debit 2 5",
            "/user 2",
            "/stats",
            "/ban 2",
            "/unban 2",
            "/markup 0",
        ):
            reply = await say(user, text)
            assert reply.text.startswith("Hi"), (text, reply.text)  # the stray-text answer
        await telegram.wait_idle()
        assert len(smsman.calls) == before  # /stats did not even ask for the balance
        assert await app.db.wallet.history(1) == []
        assert await app.db.wallet.balance(1) == (0, 0)
        user2 = await app.db.users.get(2)
        assert user2 is None or not user2.banned
        assert await app.db.kv.get("markup_percent") is None
        confirm = await reach_confirm(user)
        price = "29.00 ₽" if mode == "shop" else "25.00 ₽"  # MARKUP_PERCENT, not /markup 0
        assert price in confirm.text
    assert telegram.errors == []
