"""Telegram's budgets shared by two replicas through Redis (bot/delivery/shared_pacing.py),
and the outbox split between them by leases: counted at the fake Telegram, which records
every call's arrival and answers 429 beyond its limits."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from redis.asyncio import Redis

from bot.delivery.pacing import Paced, Pacer
from bot.delivery.service import Delivery
from bot.delivery.shared_pacing import SharedPacer
from bot.ui.i18n import make_i18n
from sandbox.telegram import FakeTelegram
from storage.db import Database
from storage.leases import Leases, Replica
from tests.botproc import wait_until
from tests.conftest import BOT_TOKEN

MAX_RPS = 8.0
CHATS = range(1, 25)


@asynccontextmanager
async def replica_delivery(
    telegram: FakeTelegram,
    url: str,
    redis_url: str | None,
    prefix: str,
    *,
    ttl: float = 0.6,
) -> AsyncIterator[Delivery]:
    """One replica's sender: its own Bot, budget, database connection and replica id.
    Leaving the block stops it without giving its leases back (as a kill would)."""
    redis = Redis.from_url(redis_url) if redis_url else None
    pacer = SharedPacer(redis, prefix=prefix, max_rps=MAX_RPS) if redis else Pacer(MAX_RPS)
    session = AiohttpSession(api=TelegramAPIServer.from_base(telegram.url))
    session.middleware(Paced(pacer))
    bot = Bot(token=BOT_TOKEN, session=session)
    db = await Database.open(url)
    delivery = Delivery(
        bot=bot,
        db=db,
        i18n=make_i18n(),
        country_title=lambda _id, _locale: "",
        pacer=pacer,
        replica=Replica.new(ttl),
    )
    await delivery.start()
    try:
        yield delivery
    finally:
        await delivery.stop(grace=0.1)
        await db.close()
        await bot.session.close()
        if redis is not None:
            await redis.aclose()


async def alert(delivery: Delivery, chat_id: int, n: int) -> None:
    await delivery.notice(chat_id, "low_balance", balance=f"{n}", threshold="0")


def pushes(telegram: FakeTelegram) -> list[tuple[int, float]]:
    return [(int(c.params["chat_id"]), c.time) for c in telegram.calls_to("sendMessage") if c.ok]


def most_in_a_second(telegram: FakeTelegram) -> int:
    times = sorted(at for _chat, at in pushes(telegram))
    return max((sum(1 for t in times if at <= t < at + 1.0) for at in times), default=0)


def closest_in_a_chat(telegram: FakeTelegram) -> float:
    """The shortest time between two pushes to one chat."""
    times: dict[int, list[float]] = defaultdict(list)
    for chat, at in pushes(telegram):
        times[chat].append(at)
    gaps = [b - a for seen in times.values() for a, b in itertools.pairwise(sorted(seen))]
    return min(gaps, default=99.0)


async def run_two_replicas(
    telegram: FakeTelegram, tmp_path: Path, redis_url: str | None, prefix: str
) -> int:
    """Both replicas queue alerts to the same chats as fast as they can; how many went."""
    for chat in CHATS:
        telegram.user(chat, started=True)
    url = f"sqlite:///{tmp_path / 'bot.sqlite3'}"
    async with (
        replica_delivery(telegram, url, redis_url, prefix) as a,
        replica_delivery(telegram, url, redis_url, prefix) as b,
    ):
        for n, chat in enumerate(CHATS):
            for delivery in (a, b):
                for again in range(2):
                    await alert(delivery, chat, 10 * n + again)
        await asyncio.sleep(3.0)
    return len(pushes(telegram))


async def test_two_replicas_stay_under_the_summed_cap_and_one_push_a_second_per_chat(
    telegram: FakeTelegram, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    sent = await run_two_replicas(telegram, tmp_path, redis_url, redis_prefix)
    assert sent >= 2 * MAX_RPS, f"both replicas pushed ({sent})"
    assert most_in_a_second(telegram) <= MAX_RPS, "the cap holds over both replicas"
    assert closest_in_a_chat(telegram) >= 0.95, "one push a second per chat, over both"
    assert telegram.rate_limited == []


async def test_without_redis_each_replica_spends_the_whole_cap(
    telegram: FakeTelegram, tmp_path: Path
) -> None:
    """The control: two replicas pacing alone go over the cap together, and push to one
    chat twice within a second."""
    telegram.enforce_limits = False
    await run_two_replicas(telegram, tmp_path, None, "unused")
    assert most_in_a_second(telegram) > MAX_RPS + 2
    assert closest_in_a_chat(telegram) < 0.5


async def test_a_429_on_one_replica_pauses_the_other(
    telegram: FakeTelegram, redis_url: str, redis_prefix: str
) -> None:
    clients = [Redis.from_url(redis_url) for _ in range(2)]
    try:
        one, other = (SharedPacer(c, prefix=redis_prefix, max_rps=100) for c in clients)
        one.pause(1.0)
        await asyncio.sleep(0.05)  # told to Redis in the background
        started = time.monotonic()
        await other.acquire()
        assert time.monotonic() - started >= 0.8
    finally:
        for client in clients:
            await client.aclose()


async def test_a_killed_replicas_queued_messages_go_out_once_from_another(
    telegram: FakeTelegram, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """A queues alerts while Telegram hangs, and is killed with them owed: B sends every
    one of them within two lease times, each once (none was taken by Telegram before the
    kill). B does not touch A's rows while A is alive."""
    for chat in CHATS:
        telegram.user(chat, started=True)
    url = f"sqlite:///{tmp_path / 'bot.sqlite3'}"
    ttl = 1.0
    async with replica_delivery(telegram, url, redis_url, redis_prefix, ttl=ttl) as b:
        telegram.slow(["sendMessage"], 30.0)  # A's pushes hang and never land
        async with replica_delivery(telegram, url, redis_url, redis_prefix, ttl=ttl) as a:
            for chat in CHATS:
                await alert(a, chat, chat)
            await asyncio.sleep(2 * ttl)
            assert b.owed == 0, "A's rows are A's while it lives"
            killed = time.monotonic()
        telegram.slow(["sendMessage"], 0.0)
        await wait_until(lambda: b.owed > 0, timeout=2 * ttl + 0.5)
        assert time.monotonic() - killed <= 2 * ttl + 0.3
        await b.drained(timeout=10)
    chats = [chat for chat, _at in pushes(telegram)]
    assert sorted(chats) == list(CHATS), "each message once"


async def test_a_push_stalled_past_its_lease_is_not_sent_once_another_replica_took_it(
    telegram: FakeTelegram, tmp_path: Path
) -> None:
    """A replica whose push waited for its budget (a 429's pause) while its renewals
    stalled finds, right before the wire, that another replica took the row: it drops the
    push, which the taker sends. A row nobody took still goes."""
    for chat in (7, 8):
        telegram.user(chat, started=True)
    url = f"sqlite:///{tmp_path / 'bot.sqlite3'}"
    async with replica_delivery(telegram, url, None, "", ttl=0.6) as a:
        assert a._lease_keeper is not None
        a._lease_keeper.cancel()  # A's renewals stall, as when its loop is starved
        a._pacer.pause(2.0)  # its pushes wait for the budget past their leases
        await alert(a, 7, 1)
        await alert(a, 8, 2)
        await asyncio.sleep(1.2)  # both leases ran out (0.6 s after A's last extension)
        async with await Database.open(url) as db_b:
            _held, taken = await Leases(db_b).outbox_round(Replica.new(0.6), claim=1)
        assert [row.chat_id for row in taken] == [7]
        await wait_until(lambda: telegram.calls_to("sendMessage"), timeout=5.0)
        await asyncio.sleep(0.5)
        sent = [int(c.params["chat_id"]) for c in telegram.calls_to("sendMessage")]
        assert sent == [8], "the row another replica took is not pushed here too"
