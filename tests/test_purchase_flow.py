"""The purchase path end to end: the bot in-process, both fakes over real HTTP."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest

from bot.settings import Settings
from sandbox.smsman import FakeSmsMan
from sandbox.telegram import FakeTelegram
from storage.models import OrderStatus
from tests.flows import labels, reach_confirm
from tests.inprocess import running

pytestmark = pytest.mark.asyncio

SettingsFactory = Callable[..., Settings]


async def test_start_menu_and_commands(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings()):
        user = telegram.user(1)
        await user.send("/start")
        menu = await user.wait_for(predicate=lambda m: any("Buy" in b for b in labels(m)))
        assert {"📋 My orders", "💰 Balance", "❓ Help", "🌐 Language"} <= set(labels(menu))
        await user.click("Language", message_id=menu.message_id)
        await user.wait_for("Choose your language")
        commands = telegram.calls_to("setMyCommands")
        assert commands, "commands were registered"
        names = {c["command"] for c in commands[0].params["commands"]}
        assert {"start", "buy", "orders", "balance", "help"} <= names
    assert telegram.errors == []


async def test_whole_path_to_a_number_and_cancel(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings()) as app:
        user = telegram.user(1)
        await reach_confirm(user)
        confirm = user.last
        assert "Telegram" in confirm.text and "Russia" in confirm.text
        await user.click("Buy")
        card = await user.wait_for("Number: +")
        assert "Cancel" in " ".join(labels(card))
        calls = smsman.calls_to("get-number")
        assert len(calls) == 1
        assert calls[0].http_method == "POST" and calls[0].form == {}
        request = next(iter(smsman.requests.values()))
        assert Decimal(calls[0].params["maxPrice"]) == request.cost
        assert request.number in card.text

        await user.click("Cancel", message_id=card.message_id)
        await user.wait_for("cancelled")
        rejects = [c for c in smsman.calls_to("set-status") if c.params["status"] == "reject"]
        assert len(rejects) == 1
        orders = await app.db.orders.list_for_user(1)
        assert [o.status for o in orders] == [OrderStatus.CANCELLED]
    assert telegram.errors == []


async def test_last_of_150_countries_by_paging_and_by_typing(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    for n in range(150):
        smsman.add_country(1000 + n, f"Country {n:03d}", None)
        smsman.set_price(1000 + n, 1, "10.00", 5)
    smsman.add_country(2000, "Zanzibar Last", None)
    smsman.set_price(2000, 1, "10.00", 5)
    async with running(bot_settings(popular_countries="")):
        user = telegram.user(1)
        await user.send("/buy")
        page = await user.wait_for("Pick a country")
        for _ in range(30):
            if any("Zanzibar Last" in label for label in labels(page)):
                break
            before = labels(page)
            await user.click("›", message_id=page.message_id)
            page = await user.wait_for(
                predicate=lambda m, before=before, mid=page.message_id: (
                    m.message_id == mid and labels(m) != before
                )
            )
        assert any("Zanzibar Last" in label for label in labels(user.last))
        assert len(user.messages) == 1, "pagination edits the same message"

        await user.send("zanzibar")
        found = await user.wait_for("matching", new_only=True)
        assert any("Zanzibar Last" in label for label in labels(found))
        await user.click("Zanzibar Last", message_id=found.message_id)
        await user.wait_for("pick a service")
    assert telegram.errors == []


async def test_service_title_is_escaped(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    smsman.add_application(777, "Tom & Jerry <VIP>")
    smsman.set_price(1, 777, "5.50", 3)
    async with running(bot_settings()):
        user = telegram.user(1)
        await reach_confirm(user, service="Tom & Jerry")
        assert "Tom & Jerry <VIP>" in user.last.text
        await user.click("Buy")
        card = await user.wait_for("Number: +")
        assert "Tom & Jerry <VIP>" in card.text
    assert telegram.errors == []


async def test_buy_pressed_twice_in_one_batch_buys_once(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings()) as app:
        user = telegram.user(1)
        await reach_confirm(user)
        confirm = user.last
        with telegram.hold_updates():
            await user.click("Buy", message_id=confirm.message_id)
            await user.click("Buy", message_id=confirm.message_id)
        await user.wait_for("Number: +")
        await telegram.wait_idle(2.0)
        assert len(smsman.calls_to("get-number")) == 1
        assert len(await app.db.orders.list_for_user(1)) == 1
    assert telegram.errors == []


async def test_forged_cancel_from_another_user_changes_nothing(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings()) as app:
        owner, thief = telegram.user(1), telegram.user(2)
        await reach_confirm(owner)
        await owner.click("Buy")
        card = await owner.wait_for("Number: +")
        order = (await app.db.orders.list_for_user(1))[0]
        await thief.send("/start")
        await thief.wait_for("Hi")
        callback_id = await thief.click_data(f"o:cancel:{order.id}", message_id=card.message_id)
        await thief.wait_answered(callback_id)
        assert smsman.calls_to("set-status") == []
        assert (await app.db.orders.get(order.id)).status is OrderStatus.WAITING  # type: ignore[union-attr]
    assert telegram.errors == []


async def test_stale_callback_gets_a_fresh_menu(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings()):
        user = telegram.user(1)
        await user.send("/start")
        menu = await user.wait_for("Hi")
        for data in ("zz:1", "c:notanumber", "o:explode:1", "b:1:1:-5:-5:0"):
            callback_id = await user.click_data(data, message_id=menu.message_id)
            await user.wait_answered(callback_id)
        await user.wait_for("outdated")
        assert smsman.calls_to("get-number") == []
    assert telegram.errors == []


async def test_no_numbers_leaves_no_active_order(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings()) as app:
        user = telegram.user(1)
        await reach_confirm(user)
        smsman.fail_next("get-number", "rate_limit")
        await user.click("Buy")
        answer = await user.wait_for("No numbers left")
        assert "Another country" in " ".join(labels(answer))
        orders = await app.db.orders.list_for_user(1)
        assert [o.status for o in orders] == [OrderStatus.FAILED]
    assert telegram.errors == []


async def test_provider_balance_tells_user_and_alerts_admins(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    smsman.balance = Decimal("0.00")
    async with running(bot_settings()) as app:
        admin = telegram.user(1000)
        await admin.send("/start")
        await admin.wait_for("Hi")
        user = telegram.user(1)
        await reach_confirm(user)
        await user.click("Buy")
        await user.wait_for("temporarily unavailable")
        await admin.wait_for("SMS-Man balance is too low")
        orders = await app.db.orders.list_for_user(1)
        assert [o.status for o in orders] == [OrderStatus.FAILED]
    assert telegram.errors == []


async def test_my_orders_lists_waiting_and_finished_and_brings_a_card_back(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings()) as app:
        user = telegram.user(1)
        await reach_confirm(user)
        await user.click("Buy")
        first = await user.wait_for("Number: +")
        await user.click("Cancel", message_id=first.message_id)
        await user.wait_for("cancelled")
        await reach_confirm(user, country="India", service="WhatsApp")
        await user.click("Buy")
        await user.wait_for("Number: +", new_only=True)
        waiting = next(o for o in await app.db.orders.list_for_user(1) if o.is_open)

        await user.send("/orders")
        listing = await user.wait_for("Waiting", new_only=True)
        assert f"#{waiting.id}" in listing.text and "Recent" in listing.text
        before = len(user.messages)
        await user.click(f"#{waiting.id}", message_id=listing.message_id)
        card = await user.wait_for(
            predicate=lambda m: m.message_id > listing.message_id and "Number: +" in m.text
        )
        assert len(user.messages) == before + 1
        assert "Cancel" in " ".join(labels(card))


async def test_buy_again_after_a_failed_purchase_makes_a_new_attempt(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    """Issue 11.7: SMS-Man's rate limiter answers no_numbers; tapping Buy again on the
    same confirm screen tries again (and buys); a double tap after that still buys once."""
    async with running(bot_settings()) as app:
        user = telegram.user(1)
        confirm = await reach_confirm(user)
        buy_data = next(data for label, data in confirm.buttons[0] if "Buy" in label)
        assert buy_data is not None
        smsman.fail_next("get-number", "rate_limit")
        await user.click("Buy", message_id=confirm.message_id)
        await user.wait_for("No numbers left")
        await user.click("Buy", message_id=confirm.message_id)
        await user.wait_for(
            predicate=lambda m: m.message_id == confirm.message_id and "Number: +" in m.text
        )
        assert len(smsman.calls_to("get-number")) == 2
        orders = await app.db.orders.list_for_user(1)
        assert sorted(o.status for o in orders) == sorted([OrderStatus.FAILED, OrderStatus.WAITING])
        with telegram.hold_updates():  # the old Buy button, tapped twice more
            await user.click_data(buy_data, message_id=confirm.message_id)
            await user.click_data(buy_data, message_id=confirm.message_id)
        await telegram.wait_idle(2.0)
        assert len(smsman.calls_to("get-number")) == 2, "the bought order is found"
        assert len(await app.db.orders.list_for_user(1)) == 2
    assert telegram.errors == []


async def test_provider_balance_alert_once_per_crossing_sent_in_the_background(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    """Issue 11.14: purchases failing on the SMS-Man balance alert the admins once, until a
    purchase goes through again; the user's answer never waits for the alert."""
    smsman.balance = Decimal("0.00")
    async with running(bot_settings()):
        admin = telegram.user(1000)
        await admin.send("/start")
        await admin.wait_for("Hi")

        def alerts() -> list[str]:
            return [m.text for m in admin.messages if "balance is too low" in m.text]

        telegram.fail_next("sendMessage", chat_id=1000, status=429, retry_after=1)
        user = telegram.user(1)
        await reach_confirm(user)
        await user.click("Buy")
        await user.wait_for("temporarily unavailable")
        await admin.wait_for("balance is too low", timeout=5)
        sends = [c for c in telegram.calls_to("sendMessage") if c.ok]
        to_user = next(
            i for i, c in enumerate(sends) if "temporarily unavailable" in c.params["text"]
        )
        to_admin = next(i for i, c in enumerate(sends) if "too low" in c.params["text"])
        assert to_user < to_admin, "the user was answered before the alert went out"

        for _ in range(2):  # still short: no more alerts
            await reach_confirm(user, country="India")
            await user.click("Buy")
            await user.wait_for("temporarily unavailable", new_only=True)
        await telegram.wait_idle(1.0)
        assert len(alerts()) == 1

        smsman.balance = Decimal("100.00")  # topped up: a purchase goes through
        await reach_confirm(user)
        await user.click("Buy")
        await user.wait_for("Number: +", new_only=True)
        smsman.balance = Decimal("0.00")  # and short again: a new crossing
        await reach_confirm(user, country="India")
        await user.click("Buy")
        await user.wait_for("temporarily unavailable", new_only=True)
        await admin.wait_for(predicate=lambda m: len(alerts()) == 2, timeout=5)
    assert telegram.errors == []
