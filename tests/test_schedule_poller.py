"""The learned schedule in the running bot: history read from the database at start, the
poller asking the policy which due order goes next when SMSMAN_MAX_RPS binds, and the
operator's switch back to the fixed rate (SMS_POLL_SCHEDULER=fixed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from decimal import Decimal

import pytest

from bot.settings import Settings
from bot.smsman.client import SmsManClient
from bot.smsman.types import Status
from sandbox.smsman import FakeSmsMan
from sandbox.telegram import FakeTelegram
from storage.db import Database
from tests.inprocess import running

SettingsFactory = Callable[..., Settings]
FAST, SLOW = 1, 2  # Telegram: codes within seconds; WhatsApp: none ever came
USERS = (1, 2, 3, 4, 5)


async def write_history(db: Database, now: float) -> None:
    """40 past orders of each service in Russia: FAST got its code after ~5 s, SLOW never."""
    for i in range(80):
        service = FAST if i % 2 == 0 else SLOW
        created = now - 10_000 + i * 60
        order = await db.orders.create(
            user_id=USERS[i % 5],
            chat_id=USERS[i % 5],
            country_id=1,
            country_title="Russia",
            service_id=service,
            service_title="x",
            price=0,
            cost=100,
            currency="RUB",
            idempotency_key=f"history:{i}",
            multiple_sms=False,
            hold=False,
            max_active=100,
            now=created,
        )
        await db.orders.mark_waiting(
            order.id,
            request_id=10_000 + i,
            number="79990000000",
            expires_at=created + 1200,
            next_poll_at=created,
            now=created,
        )
        if service == FAST:
            await db.orders.add_code(order.id, f"{i:06d}", now=created + 4 + i % 3)
            await db.orders.finish(order.id, now=created + 30)
        else:
            await db.orders.expire(order.id, now=created + 1200)


async def write_waiting(db: Database, smsman: FakeSmsMan, now: float) -> dict[int, int]:
    """20 waiting orders bought a minute ago, alternating FAST and SLOW (by id, so the
    fixed rate interleaves them); request id -> service."""
    services: dict[int, int] = {}
    async with SmsManClient(smsman.url, smsman.token) as client:
        for i in range(20):
            service = FAST if i % 2 == 0 else SLOW
            order = await db.orders.create(
                user_id=USERS[i % 5],
                chat_id=USERS[i % 5],
                country_id=1,
                country_title="Russia",
                service_id=service,
                service_title="x",
                price=0,
                cost=10_000,
                currency="RUB",
                idempotency_key=f"waiting:{i}",
                multiple_sms=False,
                hold=False,
                max_active=100,
                now=now - 60,
            )
            number = await client.get_number(1, service, max_price=Decimal(100))
            await db.orders.mark_waiting(
                order.id,
                request_id=number.request_id,
                number=number.number,
                expires_at=now + 1000,
                next_poll_at=now,
                now=now - 60,
            )
            services[number.request_id] = service
    return services


async def first_polls(
    scheduler: str,
    monkeypatch: pytest.MonkeyPatch,
    telegram: FakeTelegram,
    smsman: FakeSmsMan,
    bot_settings: SettingsFactory,
) -> list[int]:
    """Start the bot over the history and the waiting orders, with codes already there for
    every FAST one and 4 calls a second; the services of the first 10 orders polled."""
    monkeypatch.setenv("SMS_POLL_SCHEDULER", scheduler)
    settings = bot_settings(smsman_max_rps=4, smsman_max_concurrency=1)
    smsman.balance = Decimal(10_000)
    for user_id in USERS:
        telegram.user(user_id, started=True)
    now = time.time()
    async with await Database.open(settings.database_url) as db:
        await write_history(db, now)
        services = await write_waiting(db, smsman, now)
    for request_id, service in services.items():
        if service == FAST:
            smsman.deliver_code(request_id)
    smsman.calls.clear()
    async with running(settings):
        for _ in range(300):  # up to 15 s
            if len(smsman.calls_to("get-sms")) >= 10:
                break
            await asyncio.sleep(0.05)
    polled: list[int] = []
    for call in smsman.calls_to("get-sms"):
        service = services[int(call.params["request_id"])]
        polled.append(service)
    assert len(polled) >= 10
    return polled[:10]


async def test_when_the_cap_binds_orders_whose_codes_are_likely_go_first(
    monkeypatch: pytest.MonkeyPatch,
    telegram: FakeTelegram,
    smsman: FakeSmsMan,
    bot_settings: SettingsFactory,
) -> None:
    """At start nobody knows when the 20 orders were last polled; history says FAST codes
    come within seconds and SLOW ones never: the 10 FAST orders are reconciled first."""
    assert await first_polls("learned", monkeypatch, telegram, smsman, bot_settings) == [FAST] * 10


async def test_the_fixed_switch_keeps_the_earliest_due_first(
    monkeypatch: pytest.MonkeyPatch,
    telegram: FakeTelegram,
    smsman: FakeSmsMan,
    bot_settings: SettingsFactory,
) -> None:
    polled = await first_polls("fixed", monkeypatch, telegram, smsman, bot_settings)
    assert polled == [FAST, SLOW] * 5  # by id, as they were bought


async def test_a_cancel_is_not_queued_behind_the_polls(
    telegram: FakeTelegram,
    smsman: FakeSmsMan,
    bot_settings: SettingsFactory,
) -> None:
    """30 waiting orders want 150 polls a second against a cap of 5: the poller always
    has steps waiting at SMS-Man's gate. A user's Cancel goes to SMS-Man by itself, in the
    client's urgent lane, within about one call's spacing."""
    settings = bot_settings(
        smsman_max_rps=5, smsman_max_concurrency=2, max_active_orders=10, purchases_per_minute=50
    )
    smsman.balance = Decimal(10_000)
    async with running(settings) as app:
        orders = []
        for n in range(30):
            user_id = USERS[n % 5]
            telegram.user(user_id, started=True)
            result = await app.orders.buy(
                user_id=user_id,
                chat_id=user_id,
                country_id=1,
                service_id=FAST,
                quoted_cost=25_00,
                quoted_price=25_00,
                multiple_sms=False,
                idempotency_key=f"cancel:{n}",
            )
            assert result.order is not None
            orders.append(result.order)
        await asyncio.sleep(3.0)  # the queue of polls is full by now
        assert len(app.poller._ready) > 10  # due orders queue for the budget
        target = orders[-1]
        started = time.monotonic()
        result = await app.orders.cancel(target.user_id, target.id)
        took = time.monotonic() - started
        assert result.outcome.value == "done"
        assert smsman.requests[target.request_id].statuses == [Status.REJECT.value]
        assert took < 1.0, f"the cancel took {took:.2f}s"


async def test_first_code_times_reads_codes_and_censored_orders(database_url: str) -> None:
    """storage's one read for the schedule: time to the first code of ended orders, and how
    long those without one were watched; waiting and failed orders are left out."""
    async with await Database.open(database_url) as db:
        now = 1_000_000.0
        await write_history(db, now)  # 40 FAST with a code after 4-6 s, 40 SLOW expired
        waiting = await db.orders.create(
            user_id=1,
            chat_id=1,
            country_id=8,
            country_title="Philippines",
            service_id=FAST,
            service_title="x",
            price=0,
            cost=100,
            currency="RUB",
            idempotency_key="still-waiting",
            multiple_sms=False,
            hold=False,
            max_active=100,
            now=now,
        )
        await db.orders.mark_waiting(
            waiting.id, request_id=1, number="7", expires_at=now + 1200, next_poll_at=now, now=now
        )
        rows = await db.orders.first_code_times()
        assert len(rows) == 80
        fast = [row for row in rows if row[0] == FAST]
        slow = [row for row in rows if row[0] == SLOW]
        assert {row[1] for row in rows} == {1}
        assert all(row[2] is not None and 4 <= row[2] <= 6 and row[3] == row[2] for row in fast)
        assert all(row[2] is None and row[3] == pytest.approx(1200) for row in slow)
        assert len(await db.orders.first_code_times(limit=10)) == 10
