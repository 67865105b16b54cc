"""A start reserved from Redis is taken on time or reserved again (bot/shared_start.py):
a replica starved of CPU past its start must not send late, bunched with the others'.

The Redis tests stall the event loop (time.sleep: what a loaded machine does to a replica)
while a caller sleeps until its reserved start, then look at the budget's key: the start
the caller took must have been reserved after it woke, not before the stall.
Needs Redis at 127.0.0.1:6379: skipped (visibly) without it, unless REQUIRE_REDIS=1.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
from redis.asyncio import Redis

from bot import shared_start
from bot.delivery.shared_pacing import SharedPacer
from bot.shared_start import MAX_MISSES, late_tolerance, shared_spacing_us, start_on_time
from bot.smsman.shared_gate import SharedCallGate
from tests.botproc import wait_until

MAX_RPS = 5.0  # spacing 210 ms
STALL = 0.6  # seconds the loop is blocked: far more than one spacing


class FakeTime:
    """A clock and a sleep; each sleep oversleeps by the next of `late` (seconds)."""

    def __init__(self, late: list[float]) -> None:
        self.now = 0.0
        self.late = late

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds + (self.late.pop(0) if self.late else 0.0)


def reservations(waits_us: list[int]) -> tuple[Callable[[], Awaitable[int]], list[int]]:
    made: list[int] = []

    async def reserve() -> int:
        made.append(waits_us[len(made)] if len(made) < len(waits_us) else 0)
        return made[-1]

    return reserve, made


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[float]], FakeTime]:
    def install(late: list[float]) -> FakeTime:
        fake = FakeTime(late)
        monkeypatch.setattr(shared_start, "_clock", fake.clock)
        monkeypatch.setattr(shared_start, "_sleep", fake.sleep)
        return fake

    return install


async def test_a_late_wake_reserves_again(fake_time: Callable[[list[float]], FakeTime]) -> None:
    fake_time([0.3])  # the first wake comes 300 ms after the reserved start
    reserve, made = reservations([50_000, 20_000])
    assert await start_on_time(reserve, 0.025) == 1
    assert made == [50_000, 20_000], "the missed start is given up, a new one taken"


async def test_an_on_time_wake_keeps_its_start(
    fake_time: Callable[[list[float]], FakeTime],
) -> None:
    fake_time([0.02])  # within the tolerance
    reserve, made = reservations([50_000])
    assert await start_on_time(reserve, 0.025) == 0
    assert made == [50_000]


async def test_a_replica_late_every_time_still_starts(
    fake_time: Callable[[list[float]], FakeTime],
) -> None:
    fake_time([1.0] * 100)
    reserve, made = reservations([10_000] * 100)
    assert await start_on_time(reserve, 0.025) == MAX_MISSES
    assert len(made) == MAX_MISSES + 1


def test_the_tolerance_is_one_spacing_at_most() -> None:
    assert late_tolerance(shared_spacing_us(100.0)) == pytest.approx(0.011)
    assert late_tolerance(shared_spacing_us(2.0)) == shared_start.LATE


async def stalled_second_caller(
    redis: Redis,
    key: str,
    first: Callable[[], Coroutine[Any, Any, None]],
    second_acquire: Callable[[], Coroutine[Any, Any, None]],
) -> None:
    """The first replica starts now; the second reserves the next start and sleeps
    towards it while the loop is blocked for STALL seconds."""
    await first()
    after_first = await redis.get(key)
    second = asyncio.create_task(second_acquire())
    await wait_until(lambda: redis_changed(redis, key, after_first))  # the second reserved
    time.sleep(STALL)  # noqa: ASYNC251 - the point: no CPU for this replica
    await second


async def redis_changed(redis: Redis, key: str, before: bytes | str | None) -> bool:
    return bool(await redis.get(key) != before)


async def next_start_is_ahead(redis: Redis, key: str) -> bool:
    """Is the budget's next start after Redis's now, i.e. was the last start reserved
    after the stall? (Reserved before it, the next start lies in the past by now.)"""
    seconds, micros = await redis.time()
    return int(await redis.get(key) or 0) > seconds * 1_000_000 + micros


async def test_the_telegram_budget_does_not_send_on_a_missed_start(
    redis_url: str, redis_prefix: str
) -> None:
    redis = Redis.from_url(redis_url)
    try:
        one, two = (SharedPacer(redis, prefix=redis_prefix, max_rps=MAX_RPS) for _ in "12")
        key = f"{redis_prefix}:next"
        await stalled_second_caller(redis, key, one.acquire, two.acquire)
        assert await next_start_is_ahead(redis, key)
    finally:
        await redis.aclose()


async def test_the_smsman_budget_does_not_call_on_a_missed_start(
    redis_url: str, redis_prefix: str
) -> None:
    redis = Redis.from_url(redis_url)
    one, two = (
        SharedCallGate(redis, prefix=redis_prefix, max_concurrency=4, max_rps=MAX_RPS, lease=5)
        for _ in "12"
    )
    try:
        key = f"{redis_prefix}:next"
        await stalled_second_caller(redis, key, one.acquire, two.acquire)
        assert await next_start_is_ahead(redis, key)
        for gate in (one, two):
            gate.release()
            await gate.drain()
    finally:
        await redis.aclose()
