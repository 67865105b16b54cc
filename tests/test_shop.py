"""Shop mode end to end: wallets, markup, hold -> capture / release, anti-abuse.

The bot runs in-process against both fakes over real HTTP; money is checked in the ledger.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from bot.app import App
from bot.settings import Settings
from sandbox.smsman import FakeSmsMan
from sandbox.telegram import FakeMessage, FakeTelegram
from storage.models import LedgerKind, Money, OrderStatus
from tests.flows import buy, reach_confirm, say
from tests.inprocess import running

pytestmark = pytest.mark.asyncio

SettingsFactory = Callable[..., Settings]
ADMIN = 1000
# Russia/Telegram costs 25.00 at SMS-Man: x 1.125 = 28.125, rounded up to a whole unit.
SHOP: dict[str, Any] = {"access_mode": "shop", "markup_percent": "12.5", "price_step": "1"}
COST = 25_00
PRICE = 29_00


async def credit(telegram: FakeTelegram, user_id: int, amount: str) -> FakeMessage:
    return await say(telegram.user(ADMIN), f"/credit {user_id} {amount}", "Credited")


async def only_order(app: App, user_id: int) -> Any:
    orders = await app.db.orders.list_for_user(user_id)
    assert len(orders) == 1, orders
    return orders[0]


async def releases(app: App, user_id: int, order_id: int) -> int:
    history = await app.db.wallet.history(user_id, limit=1000)
    return sum(1 for r in history if r.kind is LedgerKind.RELEASE and r.order_id == order_id)


def rejects(smsman: FakeSmsMan) -> int:
    return sum(1 for c in smsman.calls_to("set-status") if c.params["status"] == "reject")


async def test_credit_buy_at_cost_times_markup_and_capture_on_code(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings(**SHOP)) as app:
        user = telegram.user(1)
        reply = await credit(telegram, 1, "100")
        assert "100.00 ₽" in reply.text
        balance = await say(user, "/balance", "balance")
        assert "100.00 ₽" in balance.text

        confirm = await reach_confirm(user)
        assert "29.00 ₽" in confirm.text  # the price, not the provider's 25.00
        await user.click("Buy", message_id=confirm.message_id)
        card = await user.wait_for("Number: +")
        assert "29.00 ₽" in card.text
        calls = smsman.calls_to("get-number")
        assert len(calls) == 1
        assert Decimal(calls[0].params["maxPrice"]) == Decimal("25.00")
        assert calls[0].params["currency"] == "RUB"
        assert await app.db.wallet.balance(1) == (100_00 - PRICE, PRICE)

        balance = await say(user, "/balance", "balance")
        assert "71.00 ₽" in balance.text and "On hold" in balance.text
        assert "29.00 ₽" in balance.text

        order = await only_order(app, 1)
        assert (order.price, order.cost, order.money) == (PRICE, COST, Money.HELD)
        code = smsman.deliver_code(order.request_id, "424242")
        await user.wait_for(code)
        order = await only_order(app, 1)
        assert order.money is Money.CAPTURED
        assert await app.db.wallet.balance(1) == (100_00 - PRICE, 0)
        kinds = [r.kind for r in reversed(await app.db.wallet.history(1))]
        assert kinds == [LedgerKind.CREDIT, LedgerKind.HOLD, LedgerKind.CAPTURE]
        assert await app.db.wallet.check_invariant() == []
    assert telegram.errors == []


async def test_short_wallet_is_told_to_top_up_and_never_reaches_get_number(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings(**SHOP)) as app:
        user = telegram.user(1)
        await credit(telegram, 1, "28.99")  # one kopeck short of the price
        confirm = await reach_confirm(user)
        await user.click("Buy", message_id=confirm.message_id)
        refusal = await user.wait_for("top up")
        assert "29.00 ₽" in refusal.text and "28.99 ₽" in refusal.text
        await telegram.wait_idle()
        assert smsman.calls_to("get-number") == []
        assert await app.db.orders.list_for_user(1) == []
        assert await app.db.wallet.balance(1) == (28_99, 0)

        # A stranger to the wallet (never credited) is refused the same way.
        other = telegram.user(2)
        confirm = await reach_confirm(other)
        await other.click("Buy", message_id=confirm.message_id)
        refusal = await other.wait_for("top up")
        assert "0.00 ₽" in refusal.text
        assert smsman.calls_to("get-number") == []
        assert await app.db.wallet.check_invariant() == []
    assert telegram.errors == []


async def test_cancel_refunds_once(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings(**SHOP)) as app:
        user = telegram.user(1)
        await credit(telegram, 1, "100")
        card = await buy(user)
        order = await only_order(app, 1)
        await user.click("Cancel", message_id=card.message_id)
        await user.wait_for("cancelled")
        assert await app.db.wallet.balance(1) == (100_00, 0)
        # Cancel again with the old button data: refused, nothing moves.
        callback_id = await user.click_data(f"o:cancel:{order.id}", message_id=card.message_id)
        answer = await user.wait_answered(callback_id)
        assert "can no longer be cancelled" in answer.get("text", "")
        await telegram.wait_idle()
        assert await releases(app, 1, order.id) == 1
        assert rejects(smsman) == 1
        assert await app.db.wallet.balance(1) == (100_00, 0)
        assert await app.db.wallet.check_invariant() == []
    assert telegram.errors == []


@pytest.mark.parametrize("expiry_delay", [0.0, 0.01, 0.05])
async def test_double_cancel_racing_expiry_releases_exactly_once(
    telegram: FakeTelegram,
    smsman: FakeSmsMan,
    bot_settings: SettingsFactory,
    expiry_delay: float,
) -> None:
    async with running(bot_settings(**SHOP)) as app:
        user = telegram.user(1)
        await credit(telegram, 1, "100")
        card = await buy(user)
        order = await only_order(app, 1)

        async def expire() -> None:
            await asyncio.sleep(expiry_delay)
            await app.orders.expire_due(order.id)

        with telegram.hold_updates():  # both clicks reach the bot in one batch
            first = await user.click("Cancel", message_id=card.message_id)
            second = await user.click("Cancel", message_id=card.message_id)
            expiry = asyncio.create_task(expire())
        await asyncio.gather(expiry, user.wait_answered(first), user.wait_answered(second))
        await telegram.wait_idle()

        order = await only_order(app, 1)
        assert order.status in (OrderStatus.CANCELLED, OrderStatus.EXPIRED)
        assert order.money is Money.RELEASED
        assert await releases(app, 1, order.id) == 1
        assert rejects(smsman) == 1
        assert await app.db.wallet.balance(1) == (100_00, 0)
        assert await app.db.wallet.check_invariant() == []
    assert telegram.errors == []


async def test_code_racing_cancel_is_delivered_and_charged_once(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings(**SHOP)) as app:
        user = telegram.user(1)
        await credit(telegram, 1, "100")
        card = await buy(user)
        order = await only_order(app, 1)
        code = smsman.deliver_code(order.request_id, "777111")  # SMS-Man now refuses reject
        with telegram.hold_updates():
            await user.click("Cancel", message_id=card.message_id)
            await user.click("Cancel", message_id=card.message_id)
            expiry = asyncio.create_task(app.orders.expire_due(order.id))
        await expiry
        await user.wait_for(code)
        await telegram.wait_idle()
        order = await only_order(app, 1)
        assert order.money is Money.CAPTURED
        assert await releases(app, 1, order.id) == 0
        assert await app.db.wallet.balance(1) == (100_00 - PRICE, 0)
        code_messages = [m for m in user.messages if m.text.startswith("🔔") and code in m.text]
        assert len(code_messages) == 1, user.transcript()
        assert await app.db.wallet.check_invariant() == []
    assert telegram.errors == []


async def test_failed_purchase_releases_the_hold(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings(**SHOP)) as app:
        user = telegram.user(1)
        await credit(telegram, 1, "50")
        confirm = await reach_confirm(user)
        smsman.fail_next("get-number", "http500")
        await user.click("Buy", message_id=confirm.message_id)
        await user.wait_for("did not go through")
        order = await only_order(app, 1)
        assert (order.status, order.money) == (OrderStatus.FAILED, Money.RELEASED)
        assert await releases(app, 1, order.id) == 1
        assert await app.db.wallet.balance(1) == (50_00, 0)
        assert await app.db.wallet.check_invariant() == []
    assert telegram.errors == []


async def test_expiry_by_the_poller_releases_the_hold(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings(**SHOP)) as app:
        user = telegram.user(1)
        await credit(telegram, 1, "100")
        await buy(user)
        order = await only_order(app, 1)
        await app.orders.expire_due(order.id)
        await user.wait_for("No code came")
        assert await releases(app, 1, order.id) == 1
        assert await app.db.wallet.balance(1) == (100_00, 0)
        assert await app.db.wallet.check_invariant() == []
    assert telegram.errors == []


async def test_markup_command_sets_the_price_and_outlives_a_restart(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    settings = bot_settings(**SHOP)
    admin = telegram.user(ADMIN)
    user = telegram.user(1)
    async with running(settings):
        reply = await say(admin, "/markup 50", "Markup")
        assert "50%" in reply.text and "150.00 ₽" in reply.text
        confirm = await reach_confirm(user)
        assert "38.00 ₽" in confirm.text  # 25.00 x 1.5 = 37.50, rounded up to the step 1
    async with running(settings) as app:
        confirm = await reach_confirm(user)
        assert "38.00 ₽" in confirm.text
        shown = await say(admin, "/markup", "Markup")
        assert "50%" in shown.text
        reset = await say(admin, "/markup reset", "Markup")
        assert "12.5%" in reset.text
        assert await app.db.kv.get("markup_percent") is None
        confirm = await reach_confirm(user)
        assert "29.00 ₽" in confirm.text
    assert telegram.errors == []


async def test_max_active_orders_and_purchases_per_minute(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    settings = bot_settings(**SHOP, max_active_orders=1, purchases_per_minute=2)
    async with running(settings) as app:
        user = telegram.user(1)
        await credit(telegram, 1, "500")
        card = await buy(user)
        confirm = await reach_confirm(user, "India")
        await user.click("Buy", message_id=confirm.message_id)
        await user.wait_for("waiting order")
        assert len(smsman.calls_to("get-number")) == 1

        await user.click("Cancel", message_id=card.message_id)
        await user.wait_for("cancelled")
        await buy(user, "India")  # the second purchase this minute
        order = (await app.db.orders.list_for_user(1))[0]
        await app.orders.cancel(1, order.id)
        confirm = await reach_confirm(user, "Philippines")
        await user.click("Buy", message_id=confirm.message_id)
        await user.wait_for("Too many purchases")
        assert len(smsman.calls_to("get-number")) == 2
        assert await app.db.wallet.balance(1) == (500_00, 0)
        assert await app.db.wallet.check_invariant() == []
    assert telegram.errors == []


async def test_markup_raised_after_the_quote_is_refused_not_charged(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings(**SHOP)) as app:
        admin, user = telegram.user(ADMIN), telegram.user(1)
        await credit(telegram, 1, "500")
        confirm = await reach_confirm(user)
        assert "29.00 ₽" in confirm.text
        await say(admin, "/markup 50", "Markup")
        await user.click("Buy", message_id=confirm.message_id)
        await user.wait_for("price has changed", new_only=True)
        assert smsman.calls_to("get-number") == []
        assert await app.db.wallet.balance(1) == (500_00, 0)


async def test_purchases_per_minute_hold_under_concurrent_buys(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    settings = bot_settings(**SHOP, purchases_per_minute=1, max_active_orders=10)
    async with running(settings) as app:
        telegram.user(1, started=True)
        await credit(telegram, 1, "500")
        results = await asyncio.gather(
            *(
                app.orders.buy(
                    user_id=1,
                    chat_id=1,
                    country_id=1,
                    service_id=1,
                    quoted_cost=COST,
                    quoted_price=PRICE,
                    multiple_sms=False,
                    idempotency_key=f"rush:{n}",
                )
                for n in range(4)
            )
        )
        outcomes = sorted(r.outcome.value for r in results)
        assert outcomes == ["bought", "too_fast", "too_fast", "too_fast"]
        assert len(smsman.calls_to("get-number")) == 1
        assert await app.db.wallet.check_invariant() == []
