"""The SMS poller end to end: the bot in-process, both fakes over real HTTP.

Codes, deadlines, refunds, faults at SMS-Man and at Telegram, more codes on one number,
the countdown, the circuit breaker and the SMS-Man caps. The restart cases (a real
process SIGKILLed and started again) are in test_restart.py.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import sqlite3
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from bot.app import App
from bot.poller import Breaker, CircuitBreaker, Poller
from bot.services.orders import PollOutcome, StepResult
from bot.settings import Settings
from bot.smsman.errors import ProviderUnavailable
from sandbox.smsman import FakeSmsMan
from sandbox.telegram import FakeTelegram
from storage.models import LedgerKind, Money, OrderStatus
from tests.botproc import (
    arrive,
    buy,
    code_messages,
    code_sends,
    request_of,
    set_status_calls,
    wait_until,
)
from tests.flows import reach_confirm
from tests.inprocess import running

SettingsFactory = Callable[..., Settings]
SHOP: dict[str, Any] = {"access_mode": "shop"}
PRICE = 25_00  # Russia / Telegram in the default catalogue, no markup


async def credit(app: App, user_id: int, amount: int = 100_00) -> None:
    await app.db.wallet.credit(user_id, amount, note=None, idempotency_key=f"test:{user_id}")


async def only_order(app: App, user_id: int) -> Any:
    orders = await app.db.orders.list_for_user(user_id)
    assert len(orders) == 1, orders
    return orders[0]


async def releases(app: App, order_id: int) -> int:
    order = await app.db.orders.get(order_id)
    assert order is not None
    rows = await app.db.wallet.history(order.user_id, limit=10_000)
    return sum(row.kind is LedgerKind.RELEASE and row.order_id == order_id for row in rows)


async def bulk_buy(app: App, telegram: FakeTelegram, smsman: FakeSmsMan, count: int) -> list[int]:
    """`count` orders of users 1..5 through the order service (not the chat); their
    request ids. The users have started the bot, so codes can be sent to them."""
    smsman.balance = Decimal(10_000)
    requests = []
    for n in range(count):
        user_id = 1 + n % 5
        telegram.user(user_id, started=True)
        result = await app.orders.buy(
            user_id=user_id,
            chat_id=user_id,
            country_id=1,
            service_id=1,
            quoted_cost=PRICE,
            quoted_price=PRICE,
            multiple_sms=False,
            idempotency_key=f"bulk:{n}",
        )
        assert result.order is not None and result.order.status is OrderStatus.WAITING
        assert result.order.request_id is not None
        requests.append(result.order.request_id)
    return requests


def errors_logged(caplog: pytest.LogCaptureFixture, name: str = "bot") -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name.startswith(name)
    ]


# -- a code ------------------------------------------------------------------------------


async def test_code_is_stored_then_sent_then_shown_on_the_card(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    settings = bot_settings()
    async with running(settings) as app:
        user = telegram.user(1)
        card = await buy(user)
        request_id = request_of(smsman, card.text)
        came = arrive(smsman, request_id, "482913")
        message = await user.wait_for("482913", predicate=lambda m: m.text.startswith("🔔"))
        latency = code_sends(telegram, 1, "482913")[0] - came
        assert latency <= settings.sms_poll_interval + 1.0
        assert "Telegram" in message.text and request_of(smsman, message.text) == request_id
        assert "<code>482913</code>" in message.html  # tap to copy
        await user.wait_for(
            predicate=lambda m: m.message_id == card.message_id and "482913" in m.text
        )
        order = await only_order(app, 1)
        assert order.status is OrderStatus.RECEIVED
        [code] = await app.db.orders.codes_of(order.id)
        assert code.delivered_at is not None and code.message_id == message.message_id
        await asyncio.sleep(5 * settings.sms_poll_interval)
        assert len(code_messages(user, "482913")) == 1
        polls = len(smsman.calls_to("get-sms"))
        await asyncio.sleep(5 * settings.sms_poll_interval)
        assert len(smsman.calls_to("get-sms")) == polls, "a received order is not polled"
    assert telegram.errors == []


async def test_unexpected_error_is_logged_and_the_order_retried(
    telegram: FakeTelegram,
    smsman: FakeSmsMan,
    bot_settings: SettingsFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running(bot_settings()) as app:
        user = telegram.user(1)
        card = await buy(user)
        real_add_code = app.db.orders.add_code
        failures = 0

        async def broken_once(*args: Any, **kwargs: Any) -> Any:
            nonlocal failures
            if failures == 0:
                failures += 1
                raise RuntimeError("disk on fire")
            return await real_add_code(*args, **kwargs)

        app.db.orders.add_code = broken_once  # type: ignore[method-assign]
        arrive(smsman, request_of(smsman, card.text), "551234")
        await user.wait_for("551234", predicate=lambda m: m.text.startswith("🔔"), timeout=8)
        assert failures == 1
        assert any("disk on fire" in (r.exc_text or "") or r.exc_info for r in caplog.records)
        assert app.poller.running
        assert len(code_messages(user, "551234")) == 1
    assert telegram.errors == []


# -- deadlines ---------------------------------------------------------------------------


async def test_timeout_rejects_at_smsman_and_refunds_once(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    """Two orders run out of time; the first reject's answer is lost after it took effect
    (so the retry finds the request gone): both end expired, each refunded exactly once."""
    async with running(bot_settings(activation_timeout=2, **SHOP)) as app:
        ann, bob = telegram.user(1), telegram.user(2)
        await credit(app, 1)
        await credit(app, 2)
        card_a = await buy(ann)
        card_b = await buy(bob)
        req_a, req_b = request_of(smsman, card_a.text), request_of(smsman, card_b.text)
        assert await app.db.wallet.balance(1) == (100_00 - PRICE, PRICE)
        smsman.fail_next("set-status", "http500", after_effect=True)
        await ann.wait_for("No code came", timeout=8)
        await bob.wait_for("No code came", timeout=8)
        await telegram.wait_idle()
        assert set_status_calls(smsman, req_a, "reject") == 2  # the lost answer, the retry
        assert set_status_calls(smsman, req_b, "reject") == 1
        assert smsman.requests[req_a].status == smsman.requests[req_b].status == "rejected"
        for user_id in (1, 2):
            order = await only_order(app, user_id)
            assert order.status is OrderStatus.EXPIRED and order.money is Money.RELEASED
            assert await releases(app, order.id) == 1
            assert await app.db.wallet.balance(user_id) == (100_00, 0)
        assert await app.db.wallet.check_invariant() == []
        card = ann.message(card_a.message_id)
        assert "expired" in card.text and card.labels == []
        polls = len(smsman.calls_to("get-sms"))
        await asyncio.sleep(0.6)
        assert len(smsman.calls_to("get-sms")) == polls, "an expired order is not polled"
        assert len([m for m in ann.messages if "No code came" in m.text]) == 1
    assert telegram.errors == []


async def test_deadline_with_a_code_closes_the_number(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings(activation_timeout=2, **SHOP)) as app:
        user = telegram.user(1)
        await credit(app, 1)
        card = await buy(user)
        request_id = request_of(smsman, card.text)
        arrive(smsman, request_id, "777000")
        await user.wait_for("777000", predicate=lambda m: m.text.startswith("🔔"))
        order = await only_order(app, 1)
        await wait_until(lambda: smsman.requests[request_id].status == "closed", timeout=5)
        assert set_status_calls(smsman, request_id, "close") == 1
        assert set_status_calls(smsman, request_id, "reject") == 0
        await wait_until(lambda: app.db.orders.get(order.id), timeout=1)  # the row is there
        finished = await app.db.orders.get(order.id)
        assert finished is not None and finished.status is OrderStatus.FINISHED
        assert finished.money is Money.CAPTURED
        assert await app.db.wallet.balance(1) == (100_00 - PRICE, 0)
        assert await app.db.wallet.check_invariant() == []
        assert not [m for m in user.messages if "No code came" in m.text]
    assert telegram.errors == []


async def test_request_gone_ends_the_order_refunded_only_without_a_code(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    """SMS-Man forgets requests after `lifetime`: "Current request not exists"."""
    async with running(bot_settings(activation_timeout=60, **SHOP)) as app:
        ann, bob = telegram.user(1), telegram.user(2)
        await credit(app, 1)
        await credit(app, 2)
        smsman.lifetime = 1.5
        card_a = await buy(ann)
        card_b = await buy(bob, several=True)
        arrive(smsman, request_of(smsman, card_b.text), "909090")
        await bob.wait_for("909090", predicate=lambda m: m.text.startswith("🔔"))
        await bob.wait_for(predicate=lambda m: "Another code" in " ".join(m.labels))
        await bob.click("Another code", message_id=card_b.message_id)  # keeps it polled
        await ann.wait_for("No code came", timeout=6)
        order_a = await only_order(app, 1)
        assert order_a.status is OrderStatus.EXPIRED
        assert await releases(app, order_a.id) == 1
        assert await app.db.wallet.balance(1) == (100_00, 0)
        await ann.wait_for(
            predicate=lambda m: m.message_id == card_a.message_id and "expired" in m.text
        )

        async def bob_done() -> bool:
            order = await only_order(app, 2)
            return order.status is OrderStatus.FINISHED

        await wait_until(bob_done, timeout=6)
        order_b = await only_order(app, 2)
        assert order_b.money is Money.CAPTURED and await releases(app, order_b.id) == 0
        assert await app.db.wallet.balance(2) == (100_00 - PRICE, 0)
        assert await app.db.wallet.check_invariant() == []
        assert not [m for m in bob.messages if "No code came" in m.text]
    assert telegram.errors == []


# -- more codes --------------------------------------------------------------------------


async def test_another_code_delivers_a_second_code_and_finish_closes(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings()) as app:
        user = telegram.user(1)
        card = await buy(user, several=True)
        request_id = request_of(smsman, card.text)
        assert smsman.calls_to("get-number")[0].params["hasMultipleSms"] == "true"
        arrive(smsman, request_id, "111111")
        await user.wait_for("111111", predicate=lambda m: m.text.startswith("🔔"))
        await user.wait_for(
            predicate=lambda m: m.message_id == card.message_id and "Another code" in m.labels[0]
        )
        await user.click("Another code", message_id=card.message_id)
        await wait_until(lambda: set_status_calls(smsman, request_id, "retrysms") == 1)
        await asyncio.sleep(0.5)  # polled again meanwhile: still the old code, nothing new
        assert len([m for m in user.messages if m.text.startswith("🔔")]) == 1
        arrive(smsman, request_id, "222222")
        await user.wait_for("222222", predicate=lambda m: m.text.startswith("🔔"))
        shown = await user.wait_for(
            predicate=lambda m: m.message_id == card.message_id and "222222" in m.text
        )
        assert "111111" in shown.text, "the card lists every code"
        order = await only_order(app, 1)
        assert [c.code for c in await app.db.orders.codes_of(order.id)] == ["111111", "222222"]
        await user.click("Finish", message_id=card.message_id)
        await wait_until(lambda: smsman.requests[request_id].status == "closed")
        assert set_status_calls(smsman, request_id, "close") == 1
        await user.wait_for(
            predicate=lambda m: m.message_id == card.message_id and "finished" in m.text
        )
        assert len(code_messages(user, "111111")) == len(code_messages(user, "222222")) == 1
    assert telegram.errors == []


async def test_multiple_sms_setting_buys_every_number_with_several_sms(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings(multiple_sms=True)):
        user = telegram.user(1)
        await user.send("/buy")
        countries = await user.wait_for("Pick a country", new_only=True)
        await user.click("Russia", message_id=countries.message_id)
        services = await user.wait_for("pick a service", new_only=True)
        await user.click("Telegram", message_id=services.message_id)
        confirm = await user.wait_for("Check your order", new_only=True)
        assert not any("several" in label for label in confirm.labels)
        await user.click("✅ Buy", message_id=confirm.message_id)
        await user.wait_for("Number: +")
        assert smsman.calls_to("get-number")[0].params["hasMultipleSms"] == "true"
    assert telegram.errors == []


# -- faults at SMS-Man -------------------------------------------------------------------


async def test_thirty_percent_provider_faults_of_every_kind_still_deliver(
    telegram: FakeTelegram,
    smsman: FakeSmsMan,
    bot_settings: SettingsFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    smsman.rng.seed(5)
    smsman.hang_seconds = 1.5  # beyond the bot's 1 s timeout
    async with running(bot_settings()) as app:
        users = [telegram.user(n) for n in (1, 2, 3)]
        cards = [await buy(user) for user in users]
        smsman.fault_rate = 0.3  # every kind: 500, HTML, malformed JSON, hang, reset
        smsman.fault_methods = {"get-sms", "set-status"}
        smsman.fault_after_effect_rate = 0.5
        rng = random.Random(7)
        codes = [f"{rng.randrange(10**6):06d}" for _ in users]
        for card, code in zip(cards, codes, strict=True):
            smsman.schedule_code(request_of(smsman, card.text), rng.uniform(0.2, 1.5), code)
        for user, code in zip(users, codes, strict=True):
            await user.wait_for(code, predicate=lambda m: m.text.startswith("🔔"), timeout=20)
        await asyncio.sleep(1.0)
        for user, code in zip(users, codes, strict=True):
            assert len(code_messages(user, code)) == 1
        assert sum(smsman.faults_injected.values()) > 0
        assert errors_logged(caplog, "bot.poller") == [], "faults are expected, not errors"
        assert app.poller.running
    assert telegram.errors == []


async def test_circuit_breaker_pauses_polling_and_probes_back(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings()) as app:
        requests = await bulk_buy(app, telegram, smsman, 5)
        smsman.override("get-sms", "<html>502 Bad Gateway</html>", 502, "text/html")
        await wait_until(lambda: app.poller.breaker.opened >= 1, timeout=10)
        opened_at = time.monotonic()
        steps = app.poller.steps
        await asyncio.sleep(1.5)  # the first pause is 2 s
        # Five orders polled every 0.2 s would take > 30 steps in 1.5 s. (Steps that were
        # running when it opened may still finish their own retries.)
        assert app.poller.steps == steps, "no step starts while the breaker is open"
        await wait_until(lambda: app.poller.breaker.state is Breaker.PROBING, timeout=3)
        assert app.poller.steps == steps + 1, "one probe, the others wait for its answer"
        smsman.clear_override("get-sms")  # the probe's own retry gets through
        await wait_until(lambda: app.poller.breaker.state is Breaker.CLOSED, timeout=3)
        assert time.monotonic() - opened_at >= 1.9
        arrive(smsman, requests[0], "313131")
        user = telegram.user(1)
        await user.wait_for("313131", predicate=lambda m: m.text.startswith("🔔"), timeout=3)
        assert app.poller.breaker.opened == 1
    assert telegram.errors == []


async def test_caps_bind_evenly_and_never_exceeded(
    telegram: FakeTelegram,
    smsman: FakeSmsMan,
    bot_settings: SettingsFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """20 orders polled every 0.2 s want 100 get-sms a second; the caps allow 15 (rate)
    with at most 3 in flight. No order is polled twice at once, the rate never exceeds the
    cap, every order gets its turn alike, and a warning says the cap binds."""
    settings = bot_settings(smsman_max_concurrency=3, smsman_max_rps=15, max_active_orders=5)
    async with running(settings) as app:
        await bulk_buy(app, telegram, smsman, 20)
        smsman.latency = 0.15
        start = time.monotonic()
        await asyncio.sleep(3.5)
        calls = [c for c in smsman.calls_to("get-sms") if c.time >= start + 1.0]
        assert smsman.peak_in_flight["get-sms"] <= 3
        times = sorted(c.time for c in calls)
        busiest = max(sum(1 for t in times[i:] if t < first + 1.0) for i, first in enumerate(times))
        assert busiest <= 15 + 1, f"{busiest} get-sms in one second"  # +1: arrival jitter
        per_request: dict[str, list[float]] = {}
        for call in calls:
            per_request.setdefault(call.params["request_id"], []).append(call.time)
        assert len(per_request) == 20, "every order gets polled"
        counts = sorted(len(v) for v in per_request.values())
        assert counts[-1] - counts[0] <= 1, f"uneven turns: {counts}"
        every: dict[str, list[float]] = {}
        for call in smsman.calls_to("get-sms"):
            every.setdefault(call.params["request_id"], []).append(call.time)
        for polls in every.values():
            gaps = [b - a for a, b in itertools.pairwise(polls)]
            assert min(gaps, default=1.0) >= 0.15 * 0.9, "one order polled twice at once"
        assert any("cap" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert telegram.errors == []


# -- faults at Telegram ------------------------------------------------------------------


async def test_429_twice_on_the_code_message_still_delivers_once(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings()):
        user = telegram.user(1)
        card = await buy(user)
        telegram.fail_next("sendMessage", chat_id=1, status=429, retry_after=1, times=2)
        came = arrive(smsman, request_of(smsman, card.text), "429429")
        await user.wait_for("429429", predicate=lambda m: m.text.startswith("🔔"), timeout=8)
        assert [e.status for e in telegram.injected] == [429, 429]
        sent = code_sends(telegram, 1, "429429")
        assert len(sent) == 1 and sent[0] - came >= 2.0  # it waited retry_after twice
        await asyncio.sleep(0.5)
        assert len(code_messages(user, "429429")) == 1
    assert telegram.errors == []


async def test_telegram_down_for_a_while_the_code_goes_out_once_when_it_is_back(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    """Telegram answers 429 to every sendMessage: the code stays undelivered, every send
    waits each retry_after out (no hammering), and delivery tries again until Telegram
    takes it; then the card shows the code too."""
    async with running(bot_settings()) as app:
        user = telegram.user(1)
        card = await buy(user)
        telegram.flood(1.0, retry_after=2, methods=["sendMessage"])
        arrive(smsman, request_of(smsman, card.text), "606060")
        await wait_until(lambda: len(telegram.injected) >= 2, timeout=8)  # tried again
        first, second = telegram.injected_calls()[:2]
        assert second.time - first.time >= 1.9, "the retry_after was waited out"
        order = await only_order(app, 1)
        [code] = await app.db.orders.codes_of(order.id)
        assert code.delivered_at is None
        telegram.flood(0)
        await user.wait_for("606060", predicate=lambda m: m.text.startswith("🔔"), timeout=10)
        await user.wait_for(
            predicate=lambda m: m.message_id == card.message_id and "606060" in m.text
        )
        await asyncio.sleep(0.5)
        assert len(code_messages(user, "606060")) == 1
        [code] = await app.db.orders.codes_of(order.id)
        assert code.delivered_at is not None
    assert telegram.errors == []


async def test_code_found_by_cancel_is_retried_when_telegram_refused_it(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    """Cancel comes as the code does: SMS-Man refuses the reject, the code is fetched and
    stored, but its message does not go out (Telegram flood control). Delivery sends it
    later, once, without a restart; the card (the answer to the tap) shows it at once."""
    async with running(bot_settings()) as app:
        user = telegram.user(1)
        card = await buy(user)
        for _ in range(5):  # keep the poller's own steps out of the way for ~2 s
            app.poller.breaker.failure()
        telegram.flood(1.0, retry_after=2, methods=["sendMessage"])
        smsman.deliver_code(request_of(smsman, card.text), "818181")
        await user.click("Cancel", message_id=card.message_id)
        await user.wait_for(
            predicate=lambda m: m.message_id == card.message_id and "818181" in m.text
        )
        order = await only_order(app, 1)
        assert order.status is OrderStatus.RECEIVED
        assert code_messages(user, "818181") == []
        telegram.flood(0)
        await user.wait_for("818181", predicate=lambda m: m.text.startswith("🔔"), timeout=6)
        await asyncio.sleep(0.5)
        assert len(code_messages(user, "818181")) == 1
    assert telegram.errors == []


async def test_blocked_user_keeps_the_code_while_another_user_is_served(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings()) as app:
        ann, bob = telegram.user(1), telegram.user(2)
        card_a = await buy(ann)
        card_b = await buy(bob)
        telegram.block(1, notify=False)
        blocked_at = len(telegram.calls)
        arrive(smsman, request_of(smsman, card_a.text), "403403")
        arrive(smsman, request_of(smsman, card_b.text), "200200")
        await bob.wait_for("200200", predicate=lambda m: m.text.startswith("🔔"))

        async def marked() -> bool:
            user = await app.db.users.get(1)
            return user is not None and user.blocked

        await wait_until(marked, timeout=5)
        await asyncio.sleep(1.5)  # a storm would show here
        to_ann = [c for c in telegram.calls[blocked_at:] if c.params.get("chat_id") == 1]
        assert len(to_ann) == 1, f"one attempt, then silence: {[c.method for c in to_ann]}"
        order = await only_order(app, 1)
        assert order.status is OrderStatus.RECEIVED
        assert [c.code for c in await app.db.orders.codes_of(order.id)] == ["403403"]
        view = await app.orders.history(1)
        assert [o.id for o in view.open] == [order.id], "kept for My orders"
        assert len(code_messages(bob, "200200")) == 1
    assert telegram.errors == []


async def test_code_held_while_blocked_goes_out_when_the_user_returns(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings()) as app:
        ann = telegram.user(1)
        card = await buy(ann)
        telegram.block(1)  # Telegram tells the bot with a my_chat_member update

        async def blocked() -> bool:
            user = await app.db.users.get(1)
            return user is not None and user.blocked

        await wait_until(blocked, timeout=5)
        sends_before = len(telegram.calls_to("sendMessage"))
        arrive(smsman, request_of(smsman, card.text), "565656")
        order = await only_order(app, 1)

        async def stored() -> bool:
            return bool(await app.db.orders.codes_of(order.id))

        await wait_until(stored, timeout=5)
        await asyncio.sleep(0.5)
        assert len(telegram.calls_to("sendMessage")) == sends_before, "no push while blocked"
        telegram.unblock(1)
        await ann.wait_for("565656", predicate=lambda m: m.text.startswith("🔔"), timeout=5)
        assert len(code_messages(ann, "565656")) == 1
    assert telegram.errors == []


async def test_other_400_on_the_code_message_is_logged_not_looped(
    telegram: FakeTelegram,
    smsman: FakeSmsMan,
    bot_settings: SettingsFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running(bot_settings()):
        user = telegram.user(1)
        card = await buy(user)
        telegram.fail_next(
            "sendMessage", chat_id=1, status=400, description="Bad Request: something odd"
        )
        arrive(smsman, request_of(smsman, card.text), "400400")
        await user.wait_for(
            predicate=lambda m: m.message_id == card.message_id and "400400" in m.text
        )
        await asyncio.sleep(1.0)
        assert code_sends(telegram, 1, "400400") == []
        assert len([e for e in telegram.injected if e.status == 400]) == 1, "tried once"
        assert any("something odd" in m for m in errors_logged(caplog, "bot.notify"))


# -- the countdown -----------------------------------------------------------------------


async def test_countdown_edits_at_most_once_a_minute_and_only_on_change(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings()) as app:
        offset = 0.0

        def clock() -> float:
            return time.time() + offset

        app.poller.clock = clock
        app.orders.clock = clock
        app.delivery.clock = clock
        user = telegram.user(1)
        card = await buy(user)
        assert "Time left: 20 minutes" in card.text

        def edits() -> int:
            return len(
                [
                    c
                    for c in telegram.calls_to("editMessageText")
                    if c.params.get("message_id") == card.message_id
                ]
            )

        async def jump(to: float, settle: float = 0.6) -> None:
            nonlocal offset
            offset = to
            app.poller.wake()
            await asyncio.sleep(settle)

        await asyncio.sleep(0.6)
        base = edits()
        await jump(65)  # 19 minutes left: the text changes, a minute since the card was made
        await user.wait_for(predicate=lambda m: "Time left: 19 minutes" in m.text)
        assert edits() == base + 1
        await jump(95)  # still 19 minutes: no edit
        assert edits() == base + 1
        await jump(122)  # 18 minutes, but only 57 s since the last edit: not yet
        assert edits() == base + 1
        assert "19 minutes" in user.message(card.message_id).text
        await jump(127)  # a minute has passed: now
        await user.wait_for(predicate=lambda m: "Time left: 18 minutes" in m.text)
        assert edits() == base + 2
    assert telegram.errors == []


# -- the circuit breaker alone -----------------------------------------------------------


def test_breaker_opens_after_five_failures_probes_once_and_backs_off_doubling() -> None:
    now = 100.0
    breaker = CircuitBreaker(lambda: now)
    for _ in range(4):
        breaker.failure()
    assert breaker.allow(), "four failures: still closed"
    breaker.success()
    for _ in range(5):
        breaker.failure()
    assert breaker.state is Breaker.OPEN and not breaker.allow()
    assert breaker.wait_time() == pytest.approx(2.0)
    now += 2.0
    assert breaker.allow() and breaker.state is Breaker.PROBING
    assert not breaker.allow(), "one probe at a time"
    assert breaker.wait_time() == pytest.approx(120.0), "until the probe reports, or times out"
    breaker.failure()  # the probe failed: open again, twice as long
    assert breaker.state is Breaker.OPEN and breaker.wait_time() == pytest.approx(4.0)
    now += 4.0
    assert breaker.allow()
    breaker.no_answer()  # the probe never asked SMS-Man: the next step probes
    assert breaker.allow() and breaker.state is Breaker.PROBING
    breaker.success()
    assert breaker.state is Breaker.CLOSED and breaker.allow()
    for _ in range(5):
        breaker.failure()
    assert breaker.wait_time() == pytest.approx(2.0), "a success resets the pause"
    for _ in range(10):  # pauses are capped
        now += 100
        breaker.allow()
        breaker.failure()
    assert breaker.wait_time() == pytest.approx(30.0)


# -- issue 11: the breaker never wedges, business errors never pause everyone ------------


class _StubOrders:
    """An OrderService stand-in for the poller alone: each step does what `plan` says
    next (raise it, or report that SMS-Man answered)."""

    def __init__(self) -> None:
        self.on_scheduled: Any = None
        self.plan: list[BaseException | None] = []
        self.steps: list[int] = []

    async def recover(self) -> list[Any]:
        return []

    async def fail_stale_purchases(self) -> int:
        return 0

    async def step(self, order_id: int) -> StepResult:
        self.steps.append(order_id)
        todo = self.plan.pop(0) if self.plan else None
        if todo is not None:
            raise todo
        return StepResult(PollOutcome.IDLE, None, answered=True)


async def test_a_probe_that_breaks_on_something_else_does_not_wedge_the_breaker() -> None:
    """Issue 11.1: the probe step raises `database is locked` (not an SMS-Man error): the
    breaker is settled anyway, the next step probes, and polling resumes."""
    now = 1000.0
    orders = _StubOrders()
    poller = Poller(orders=orders, interval=1.0, concurrency=10, clock=lambda: now)  # type: ignore[arg-type]
    await poller.start()
    try:
        orders.plan = [ProviderUnavailable("http_502", "down")] * 5
        for order_id in range(1, 6):
            poller.schedule(order_id, now)
        await wait_until(lambda: poller.breaker.state is Breaker.OPEN, timeout=3)
        orders.plan = [sqlite3.OperationalError("database is locked")]  # the probe breaks
        now += 2.5  # the first pause is over: every order is due again
        poller.wake()
        await wait_until(lambda: not orders.plan, timeout=3)
        # The next due order probes; SMS-Man answers it, and polling resumes.
        await wait_until(lambda: poller.breaker.state is Breaker.CLOSED, timeout=3)
        await wait_until(lambda: len(orders.steps) >= 10, timeout=3)
    finally:
        await poller.stop(grace=1.0)


def test_a_probe_that_never_reports_times_out() -> None:
    """Issue 11.1: a probe step that hangs does not keep every other step out for good."""
    now = 100.0
    breaker = CircuitBreaker(lambda: now, 30.0)
    for _ in range(5):
        breaker.failure()
    now += 2.0
    assert breaker.allow() and breaker.state is Breaker.PROBING
    now += 29.0
    assert not breaker.allow(), "the probe still has time"
    assert breaker.wait_time() == pytest.approx(1.0)
    now += 1.0
    assert breaker.allow(), "the probe overran its time: another step probes"
    assert breaker.state is Breaker.PROBING
    breaker.success()
    assert breaker.state is Breaker.CLOSED


async def test_business_errors_on_get_sms_never_open_the_breaker(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    """Issue 11.2: SMS-Man answers every get-sms with an error it does not document: the
    orders back off, but polling is never paused for everyone."""
    async with running(bot_settings()) as app:
        requests = await bulk_buy(app, telegram, smsman, 5)
        smsman.override("get-sms", {"error_code": "some_error", "error_msg": "Try later"})
        start = len(smsman.calls_to("get-sms"))
        await wait_until(lambda: len(smsman.calls_to("get-sms")) >= start + 15, timeout=10)
        assert app.poller.breaker.opened == 0
        assert app.poller.breaker.state is Breaker.CLOSED
        smsman.clear_override("get-sms")
        arrive(smsman, requests[0], "424242")
        user = telegram.user(1)
        await user.wait_for("424242", predicate=lambda m: m.text.startswith("🔔"), timeout=5)
    assert telegram.errors == []


# -- issue 11.3: purchases stuck in `purchasing` ------------------------------------------


async def test_a_purchase_stuck_in_purchasing_is_swept_and_released_once(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    """The database is locked as the number is stored and as the purchase is failed: the
    order stays `purchasing` with its hold. Later (SMSMAN_TIMEOUT plus a margin) a sweep
    fails it, without a restart, and releases the hold once."""
    async with running(bot_settings(**SHOP)) as app:
        offset = 0.0

        def clock() -> float:
            return time.time() + offset

        app.poller.clock = clock
        app.orders.clock = clock
        await credit(app, 1)
        real_waiting, real_failed = app.db.orders.mark_waiting, app.db.orders.mark_failed
        locked_calls: list[str] = []

        def locked(name: str) -> Any:
            async def write(*args: Any, **kwargs: Any) -> Any:
                locked_calls.append(name)
                raise sqlite3.OperationalError("database is locked")

            return write

        app.db.orders.mark_waiting = locked("waiting")  # type: ignore[method-assign]
        app.db.orders.mark_failed = locked("failed")  # type: ignore[method-assign]
        user = telegram.user(1)
        confirm = await reach_confirm(user)
        await user.click("Buy", message_id=confirm.message_id)
        await wait_until(lambda: "waiting" in locked_calls, timeout=5)
        await asyncio.sleep(0.5)  # the purchase ends (failed as it could)
        app.db.orders.mark_waiting = real_waiting  # type: ignore[method-assign]
        app.db.orders.mark_failed = real_failed  # type: ignore[method-assign]
        order = await only_order(app, 1)
        assert order.status is OrderStatus.PURCHASING
        assert await app.db.wallet.balance(1) == (100_00 - PRICE, PRICE)

        offset = 1.0 + 120.0  # SMSMAN_TIMEOUT is 1 s here; the margin is a minute
        app.poller.wake()

        async def failed() -> bool:
            now = await app.db.orders.get(order.id)
            return now is not None and now.status is OrderStatus.FAILED

        await wait_until(failed, timeout=5)
        assert await releases(app, order.id) == 1
        assert await app.db.wallet.balance(1) == (100_00, 0)
        offset += 600.0  # more sweeps: nothing more
        app.poller.wake()
        await asyncio.sleep(0.3)
        assert await releases(app, order.id) == 1
        assert await app.db.wallet.check_invariant() == []
        # The number bought but never recorded was given back at SMS-Man.
        [request] = smsman.requests.values()
        assert request.status == "rejected"


# -- issue 11.6: SMS-Man refuses a reject with an answer we do not know --------------------


async def test_reject_refused_past_the_deadline_polls_on_then_ends_the_order_once(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings(activation_timeout=1, **SHOP)) as app:
        admin = telegram.user(1000)
        await admin.send("/start")
        await admin.wait_for("Hi")
        offset = 0.0

        def clock() -> float:
            return time.time() + offset

        app.poller.clock = clock
        app.orders.clock = clock
        await credit(app, 1)
        user = telegram.user(1)
        smsman.override("set-status", {"success": False})  # no error code at all
        card = await buy(user)
        request_id = request_of(smsman, card.text)
        await wait_until(lambda: set_status_calls(smsman, request_id, "reject") >= 2, timeout=8)
        first_reject = smsman.calls_to("set-status")[0].time
        assert [c for c in smsman.calls_to("get-sms") if c.time > first_reject], (
            "get-sms is asked after a refused reject"
        )
        order = await only_order(app, 1)
        assert order.status is OrderStatus.WAITING, "within the grace it waits for SMS-Man"
        assert await app.db.wallet.balance(1) == (100_00 - PRICE, PRICE)

        offset = 301.0  # past the deadline plus the grace
        app.poller.wake()
        await user.wait_for("No code came", timeout=8)

        async def expired() -> bool:
            now = await app.db.orders.get(order.id)
            return now is not None and now.status is OrderStatus.EXPIRED

        await wait_until(expired, timeout=5)
        alert = await admin.wait_for("by hand", timeout=5)
        assert f"#{order.id}" in alert.text and str(request_id) in alert.text
        assert await releases(app, order.id) == 1
        assert await app.db.wallet.balance(1) == (100_00, 0)
        rejects = set_status_calls(smsman, request_id, "reject")
        offset += 600.0
        app.poller.wake()
        await asyncio.sleep(1.0)
        assert set_status_calls(smsman, request_id, "reject") == rejects, "it is over"
        assert len([m for m in user.messages if "No code came" in m.text]) == 1
        assert len([m for m in admin.messages if "by hand" in m.text]) == 1
        assert await releases(app, order.id) == 1
        assert await app.db.wallet.check_invariant() == []
    assert telegram.errors == []


async def test_cancel_refused_by_smsman_gets_an_honest_answer(
    telegram: FakeTelegram,
    smsman: FakeSmsMan,
    bot_settings: SettingsFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running(bot_settings(**SHOP)) as app:
        await credit(app, 1)
        user = telegram.user(1)
        card = await buy(user)
        smsman.override(
            "set-status",
            {"error_code": "early_cancel", "error_msg": "You can cancel after 2 minutes"},
            times=1,
        )
        callback_id = await user.click("Cancel", message_id=card.message_id)
        answer = await user.wait_answered(callback_id)
        assert "does not allow cancelling" in answer["text"]
        assert "did not answer" not in answer["text"]
        order = await only_order(app, 1)
        assert order.status is OrderStatus.WAITING
        assert await app.db.wallet.balance(1) == (100_00 - PRICE, PRICE)
        assert errors_logged(caplog, "handlers") == [], "nothing reached the error handler"
        await user.click("Cancel", message_id=card.message_id)  # a minute later: it goes
        await user.wait_for(
            predicate=lambda m: m.message_id == card.message_id and "cancelled" in m.text
        )
        assert await app.db.wallet.balance(1) == (100_00, 0)
    assert telegram.errors == []
