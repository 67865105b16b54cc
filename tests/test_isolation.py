"""The per-chat event isolation shared through Redis (bot/isolation.py): one update of a
chat at a time over every replica, a long handler keeps its lock, and a killed replica's
lock frees within the short timeout (aiogram's RedisEventIsolation keeps it 60 s).

Needs Redis at 127.0.0.1:6379: skipped (visibly) without it, unless REQUIRE_REDIS=1.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiogram.fsm.storage.base import BaseEventIsolation, DefaultKeyBuilder, StorageKey
from redis.asyncio import Redis

from bot.app import _dispatcher
from bot.isolation import RenewedRedisIsolation
from storage.db import Database

TIMEOUT = 0.6  # the locks' timeout here (the app's is bot.isolation.LOCK_TIMEOUT)
ROOT = Path(__file__).resolve().parent.parent
Isolation = Callable[[], BaseEventIsolation]


def chat_key(chat_id: int) -> StorageKey:
    return StorageKey(bot_id=42, chat_id=chat_id, user_id=chat_id)


@pytest.fixture
async def replicas(redis_url: str, redis_prefix: str) -> AsyncIterator[Isolation]:
    """Makes the isolation of one more replica: its own Redis client, the test's keys."""
    clients: list[Redis] = []

    def replica() -> BaseEventIsolation:
        client = Redis.from_url(redis_url)
        clients.append(client)
        keys = DefaultKeyBuilder(prefix=redis_prefix, with_bot_id=True)
        return RenewedRedisIsolation(client, keys, timeout=TIMEOUT)

    yield replica
    for client in clients:
        await client.aclose()


async def handle(
    isolation: BaseEventIsolation, chat_id: int, seconds: float, spans: list[tuple[float, float]]
) -> None:
    """One update's handler, `seconds` long, under the chat's lock; records when it ran."""
    async with isolation.lock(chat_key(chat_id)):
        start = time.monotonic()
        await asyncio.sleep(seconds)
        spans.append((start, time.monotonic()))


async def test_updates_of_one_chat_run_one_after_the_other(replicas: Isolation) -> None:
    # Handlers longer than the timeout: a lock that merely expired would let them overlap.
    one, two, three = replicas(), replicas(), replicas()
    spans: list[tuple[float, float]] = []
    other: list[tuple[float, float]] = []
    await asyncio.gather(
        handle(one, 7, 2 * TIMEOUT, spans),
        handle(two, 7, 2 * TIMEOUT, spans),
        handle(three, 8, 2 * TIMEOUT, other),  # another chat: not held up by chat 7
    )
    (_, first_end), (second_start, _) = sorted(spans)
    assert second_start >= first_end, "two updates of one chat ran at the same time"
    assert other[0][0] < first_end, "another chat's update waited for chat 7's"


async def test_a_long_handler_keeps_its_lock(replicas: Isolation) -> None:
    holder, rival = replicas(), replicas()
    entered = asyncio.Event()
    released_at = 0.0

    async def long_handler() -> None:
        nonlocal released_at
        async with holder.lock(chat_key(9)):
            entered.set()
            await asyncio.sleep(4 * TIMEOUT)
            released_at = time.monotonic()

    async def rival_update() -> float:
        await entered.wait()
        async with rival.lock(chat_key(9)):
            return time.monotonic()

    _, rival_entered_at = await asyncio.gather(long_handler(), rival_update())
    assert rival_entered_at >= released_at, "the lock ran out under a running handler"


HOLDER = """
import asyncio, sys
from aiogram.fsm.storage.base import DefaultKeyBuilder, StorageKey
from redis.asyncio import Redis
from bot.isolation import RenewedRedisIsolation

async def main() -> None:
    url, prefix, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
    keys = DefaultKeyBuilder(prefix=prefix, with_bot_id=True)
    isolation = RenewedRedisIsolation(Redis.from_url(url), keys, timeout=timeout)
    async with isolation.lock(StorageKey(bot_id=42, chat_id=11, user_id=11)):
        print("held", flush=True)
        await asyncio.sleep(3600)  # a handler that never ends: SIGKILLed meanwhile

asyncio.run(main())
"""


async def test_a_killed_holders_lock_frees_within_the_timeout(
    replicas: Isolation, redis_url: str, redis_prefix: str
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOLDER,
        redis_url,
        redis_prefix,
        str(TIMEOUT),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"held"
        rival = replicas()
        # While the holder lives it keeps renewing: the chat stays locked past the timeout.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(3 * TIMEOUT):
                async with rival.lock(chat_key(11)):
                    pass
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        killed = time.monotonic()
        async with asyncio.timeout(TIMEOUT + 2.0):  # 60 s with RedisEventIsolation
            async with rival.lock(chat_key(11)):
                freed_after = time.monotonic() - killed
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert freed_after <= TIMEOUT + 2.0


async def test_the_app_isolates_chats_with_the_renewed_lock(redis_url: str, tmp_path: Path) -> None:
    redis = Redis.from_url(redis_url)
    db = await Database.open(tmp_path / "bot.sqlite3")
    try:
        dp = _dispatcher(redis, db)
        assert isinstance(dp.fsm.events_isolation, RenewedRedisIsolation)
    finally:
        await db.close()
        await redis.aclose()
