"""The real process (`python -m bot`) against the fakes: delivery, SIGKILL, restarts.

Each start of the process costs ~3 s (importing aiogram), so the scenarios are few and
each does much.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from sandbox.smsman import FakeSmsMan
from sandbox.telegram import FakeTelegram
from storage.db import Database
from storage.models import LedgerKind, Money, OrderStatus
from tests.botproc import (
    BotProcess,
    arrive,
    buy,
    code_messages,
    code_sends,
    request_of,
    set_status_calls,
    wait_until,
)

pytestmark = pytest.mark.asyncio

INTERVAL = 0.2


async def test_code_is_delivered_within_one_interval_and_a_second(
    telegram: FakeTelegram, smsman: FakeSmsMan, tmp_path: Path
) -> None:
    """Then SIGTERM while polls are in flight: a clean stop, exit status 0."""
    bot = BotProcess.for_fakes(telegram, smsman, tmp_path, sms_poll_interval=INTERVAL)
    try:
        await bot.start()
        users = [telegram.user(n) for n in (1, 2, 3, 4)]
        cards = [await buy(user) for user in users]
        latencies = []
        for n, (user, card) in enumerate(zip(users[:3], cards, strict=False)):
            code = f"12345{n}"
            came = arrive(smsman, request_of(smsman, card.text), code)
            await user.wait_for(code, predicate=lambda m: m.text.startswith("🔔"))
            [sent] = code_sends(telegram, user.id, code)
            latencies.append(sent - came)
            await asyncio.sleep(0.13 * n)  # codes land at different points of the cycle
        assert max(latencies) <= INTERVAL + 1.0, latencies
        smsman.latency = 0.3  # the fourth order's polls are in flight at SIGTERM
        await asyncio.sleep(0.5)
        stopping = time.monotonic()
        assert await bot.terminate() == 0
        assert time.monotonic() - stopping < 8
    finally:
        await bot.stop()
    assert "stopped cleanly" in bot.log_text()
    assert "Traceback" not in bot.log_text()
    assert telegram.errors == []


async def test_code_that_came_while_the_bot_was_killed_is_delivered_once(
    telegram: FakeTelegram, smsman: FakeSmsMan, tmp_path: Path
) -> None:
    bot = BotProcess.for_fakes(telegram, smsman, tmp_path, sms_poll_interval=INTERVAL)
    try:
        await bot.start()
        user = telegram.user(1)
        card = await buy(user)
        request_id = request_of(smsman, card.text)
        await asyncio.sleep(0.3)  # the card's message id is stored just after the edit
        assert await bot.kill() == -9
        arrive(smsman, request_id, "246810")  # while nobody polls
        await bot.start()
        restarted = time.monotonic()
        await user.wait_for("246810", predicate=lambda m: m.text.startswith("🔔"), timeout=5)
        [sent] = code_sends(telegram, 1, "246810")
        assert sent - restarted <= INTERVAL + 1.0, "reconciled at once on start"
        await user.wait_for(
            predicate=lambda m: m.message_id == card.message_id and "246810" in m.text
        )
        assert await bot.terminate() == 0, bot.log_text(this_run=True)
        await bot.start()
        await asyncio.sleep(5 * INTERVAL)
        assert len(code_messages(user, "246810")) == 1, "after another restart: not again"
        assert len(code_sends(telegram, 1, "246810")) == 1
        assert await bot.terminate() == 0
    finally:
        await bot.stop()
    async with await Database.open(bot.database_url) as db:
        order = (await db.orders.list_for_user(1))[0]
        assert order.status is OrderStatus.RECEIVED
        [code] = await db.orders.codes_of(order.id)
        assert code.code == "246810" and code.delivered_at is not None
    assert "Traceback" not in bot.log_text()
    assert telegram.errors == []


async def test_restart_resends_an_undelivered_code_and_expires_what_ran_out(
    telegram: FakeTelegram, smsman: FakeSmsMan, tmp_path: Path
) -> None:
    """Shop mode. Ann's code is stored but Telegram refuses its message (flood control);
    Bob's order runs out of time while the bot is down. After
    the restart Ann gets her code once (and is charged), Bob's number is rejected at
    SMS-Man and his money comes back, once."""
    url = f"sqlite:///{tmp_path / 'bot.sqlite3'}"
    async with await Database.open(url) as db:
        for user_id in (1, 2):
            await db.wallet.credit(user_id, 100_00, note=None, idempotency_key=f"t{user_id}")
    bot = BotProcess.for_fakes(
        telegram,
        smsman,
        tmp_path,
        sms_poll_interval=INTERVAL,
        access_mode="shop",
        activation_timeout=4,
    )
    try:
        await bot.start()
        ann, bob = telegram.user(1), telegram.user(2)
        card_b = await buy(bob)
        card_a = await buy(ann)
        bought = time.monotonic()
        req_a, req_b = request_of(smsman, card_a.text), request_of(smsman, card_b.text)
        telegram.flood(1.0, retry_after=100, methods=["sendMessage"])
        arrive(smsman, req_a, "135790")
        # Stored, and its message tried (Telegram said 429): the code is owed.
        await wait_until(lambda: len(telegram.injected) >= 1, timeout=5)
        assert code_messages(ann, "135790") == []
        await bot.kill()
        telegram.flood(0)
        await asyncio.sleep(max(0.0, bought + 4.2 - time.monotonic()))  # Bob's time is up
        await bot.start()
        await ann.wait_for("135790", predicate=lambda m: m.text.startswith("🔔"), timeout=5)
        await bob.wait_for("No code came", timeout=5)
        await wait_until(lambda: smsman.requests[req_a].status == "closed", timeout=5)
        assert await bot.terminate() == 0
    finally:
        await bot.stop()
    assert len(code_messages(ann, "135790")) == 1
    assert set_status_calls(smsman, req_b, "reject") == 1
    assert smsman.requests[req_b].status == "rejected"
    async with await Database.open(url) as db:
        order_a = (await db.orders.list_for_user(1))[0]
        order_b = (await db.orders.list_for_user(2))[0]
        assert order_a.status is OrderStatus.FINISHED and order_a.money is Money.CAPTURED
        assert order_b.status is OrderStatus.EXPIRED and order_b.money is Money.RELEASED
        assert await db.wallet.balance(1) == (100_00 - order_a.price, 0)
        assert await db.wallet.balance(2) == (100_00, 0)
        assert await db.wallet.check_invariant() == []
        releases = [
            row for row in await db.wallet.history(2, limit=50) if row.kind is LedgerKind.RELEASE
        ]
        assert len(releases) == 1
    assert "Traceback" not in bot.log_text()
    assert telegram.errors == []
