"""The catalogue cache: stale copies while one refresh runs, the last good copy on failure,
and the country list's order and filter."""

from __future__ import annotations

import asyncio

import pytest

from bot.services.cache import Cached
from bot.services.catalogue import CatalogueService, CountryItem, flag_of, matches
from bot.smsman.client import SmsManClient
from sandbox.smsman import FakeSmsMan


async def test_cold_cache_waits_once_then_serves_stale_during_one_refresh() -> None:
    calls = 0
    gate = asyncio.Event()

    async def load() -> int:
        nonlocal calls
        calls += 1
        if calls > 1:
            await gate.wait()
        return calls

    cache: Cached[int] = Cached(load, ttl=0.0, name="test")
    assert await asyncio.gather(cache.get(), cache.get()) == [1, 1]
    assert calls == 1, "concurrent cold callers share one load"
    # Expired: every caller gets the stale value at once; a single refresh runs behind.
    assert await asyncio.gather(*(cache.get() for _ in range(5))) == [1] * 5
    await asyncio.sleep(0)
    assert calls == 2
    gate.set()
    await asyncio.sleep(0.01)
    assert await cache.get() in (2, 3)
    await cache.close()


async def test_failed_refresh_keeps_the_last_good_copy() -> None:
    answers: list[object] = [["good"], RuntimeError("provider down")]

    async def load() -> list[str]:
        answer = answers.pop(0) if answers else ["newer"]
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[return-value]

    cache: Cached[list[str]] = Cached(load, ttl=0.0, name="test")
    assert await cache.get() == ["good"]
    assert await cache.get() == ["good"]  # kicks the failing refresh
    await asyncio.sleep(0.01)
    assert cache.value == ["good"]


async def test_a_cold_cache_that_fails_raises() -> None:
    async def load() -> int:
        raise RuntimeError("down")

    cache: Cached[int] = Cached(load, ttl=60, name="test")
    with pytest.raises(RuntimeError):
        await cache.get()


def test_flags_come_from_the_iso_code() -> None:
    assert flag_of("RU") == "🇷🇺" and flag_of("gb") == "🇬🇧"
    assert flag_of(None) == flag_of("") == flag_of("R1") == flag_of("XYZ") == "🌐"


def test_filter_by_title_in_either_language_or_by_code() -> None:
    russia = CountryItem(1, "Russia", "RU", None, None)
    assert matches(russia, "russ") and matches(russia, "РОСС") and matches(russia, "ru")
    assert not matches(russia, "germany")


async def test_countries_popular_first_then_alphabetical_and_only_with_stock() -> None:
    async with FakeSmsMan() as fake:
        fake.add_country(1, "Russia", "RU")
        fake.add_country(2, "Albania", "AL")
        fake.add_country(3, "Zambia", "ZM")
        fake.add_country(4, "Brazil", "BR")
        fake.add_country(5, "Nowhere", None)
        fake.add_application(1, "Telegram")
        for country, cost in ((1, "20.00"), (2, "9.50"), (3, "3.10"), (4, "7.00")):
            fake.set_price(country, 1, cost, 10)
        fake.set_price(2, 1, "9.50", 10)
        fake.set_price(5, 1, "1.00", 0)  # no stock: left out
        client = SmsManClient(fake.url, fake.token)
        catalogue = CatalogueService(client, popular=["BR", "RU"])
        try:
            items = await catalogue.countries()
            assert [item.title for item in items] == ["Brazil", "Russia", "Albania", "Zambia"]
            assert items[0].min_cost == 700 and items[1].min_cost == 2000
            calls = len(fake.calls)
            await catalogue.countries()
            await catalogue.services(1)
            assert len(fake.calls) <= calls + 1, "navigation is served from the cache"
        finally:
            await catalogue.close()
            await client.close()
