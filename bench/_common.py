"""Shared bench helpers: the fakes with a realistic catalogue, percentiles, quiet logs.

    async with fakes(latency=0.1) as (telegram, smsman):
        bot = BotProcess.for_fakes(telegram, smsman, folder)  # tests/botproc.py
        await bot.start()
        await wait_warm(smsman)
        ...

The bot runs as its own process (`python -m bot`), as it ships: a bench never pins, warms
or tunes anything in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal

from babel import Locale

from sandbox.smsman import FakeSmsMan
from sandbox.telegram import FakeTelegram

BOT_TOKEN = "123456:BENCH-TOKEN-do-not-leak"
SMSMAN_TOKEN = "smsman-bench-token-do-not-leak"

# SMS-Man methods the menus read (through the catalogue cache, never per click when warm).
CATALOGUE_METHODS = frozenset({"countries", "applications", "get-prices", "limits"})

# ISO codes listed first by default (settings.popular_countries) always get a price list.
_MUST_HAVE = ("RU", "UA", "KZ", "US", "GB", "ID", "PH", "IN", "BR", "VN")
SERVICE_TITLES = (
    "Telegram", "WhatsApp", "Apple", "Google", "Facebook", "Instagram", "Twitter", "TikTok",
    "Viber", "WeChat", "Discord", "Microsoft", "Amazon", "Uber", "Yandex", "VK", "Mail.ru",
    "OK.ru", "Avito", "Ozon", "Wildberries", "Steam", "Netflix", "Tinder", "Bumble", "Signal",
    "LINE", "KakaoTalk", "Snapchat", "LinkedIn", "PayPal", "Airbnb", "Booking", "Alibaba",
    "AliExpress", "Shopee", "Lazada", "Grab", "Gojek", "Tokopedia", "OLX", "Careem", "Bolt",
    "Lyft", "DiDi", "Zoom", "Skype", "Yahoo", "Proton", "OpenAI", "Coinbase", "Binance",
    "Bybit", "OKX", "KuCoin", "Revolut", "Wise", "Skrill", "Payoneer", "Qiwi", "Tinkoff",
    "Sber", "Blizzard", "Epic Games", "EA", "Ubisoft", "Twitch", "Reddit", "Pinterest",
    "Quora", "Badoo", "Hinge", "Happn", "Grindr", "imo", "Hily", "Weibo", "Baidu", "QQ",
    "Zalo", "Truecaller", "Paytm", "PhonePe", "Swiggy", "Zomato", "Flipkart", "Myntra",
    "Meesho", "Dream11", "Jio", "Foodpanda", "Deliveroo", "Glovo", "Wolt", "Just Eat",
    "Rappi", "Mercado Libre", "iFood", "Nubank", "PicPay", "Kwai", "Likee", "Bigo Live",
    "Tango & Co <beta>", "Other",
)  # fmt: skip


def quiet_logs(level: int = logging.WARNING) -> None:
    """Keep the bot's INFO lines out of the figures."""
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)
    for name in ("aiogram", "aiogram.event", "aiogram.dispatcher", "bot", "storage"):
        logging.getLogger(name).setLevel(level)


def _territories(count: int) -> list[tuple[str, str]]:
    """`count` (ISO code, English name) pairs from CLDR, the popular ones included."""
    names = {str(code): str(name) for code, name in Locale("en").territories.items()}
    codes = sorted(
        code
        for code in names
        if len(code) == 2 and code.isalpha() and code not in ("ZZ", "EU", "EZ", "UN", "QO")
    )
    rest = [code for code in codes if code not in _MUST_HAVE]
    chosen = [*_MUST_HAVE, *rest][:count]
    return [(code, names[code]) for code in chosen]


def realistic_catalogue(
    fake: FakeSmsMan,
    *,
    countries: int = 150,
    services: int = 100,
    density: float = 0.7,
    seed: int = 1,
) -> int:
    """About SMS-Man's size: `countries` countries with ISO codes and CLDR names, `services`
    applications, and a price for a `density` share of the pairs (some out of stock).
    Returns the number of price entries."""
    rng = random.Random(seed)
    for index, (code, title) in enumerate(_territories(countries)):
        fake.add_country(index + 1, title, code)
    titles = list(SERVICE_TITLES)
    while len(titles) < services:
        titles.append(f"Service {len(titles) + 1}")
    for index, title in enumerate(titles[:services]):
        fake.add_application(index + 1, title, f"s{index + 1}")
    entries = 0
    for country_id in fake.countries:
        popular = fake.countries[country_id][1] in _MUST_HAVE
        for app_id in fake.applications:
            if not popular and rng.random() > density:
                continue
            cost = Decimal(rng.randrange(150, 9_000)) / 100
            count = 0 if rng.random() < 0.08 else rng.randrange(1, 20_000)
            fake.set_price(country_id, app_id, cost, count)
            entries += 1
    return entries


@contextlib.asynccontextmanager
async def fakes(
    *,
    latency: float = 0.1,
    countries: int = 150,
    services: int = 100,
    seed: int = 1,
    telegram_max_per_second: int = 30,
) -> AsyncIterator[tuple[FakeTelegram, FakeSmsMan]]:
    """FakeTelegram (Telegram's flood limits, `telegram_max_per_second` overall) and
    FakeSmsMan (realistic catalogue, `latency` s per call) on 127.0.0.1."""
    telegram = FakeTelegram(token=BOT_TOKEN, max_per_second=telegram_max_per_second)
    smsman = FakeSmsMan(token=SMSMAN_TOKEN, seed=seed)
    realistic_catalogue(smsman, countries=countries, services=services, seed=seed)
    smsman.latency = latency
    await telegram.start()
    await smsman.start()
    try:
        yield telegram, smsman
    finally:
        await smsman.stop()
        await telegram.stop()


async def wait_warm(smsman: FakeSmsMan, timeout: float = 30.0) -> float:
    """Wait until the startup warm-up has read the whole catalogue (countries, applications,
    unfiltered get-prices) and no SMS-Man call is in flight; returns the seconds waited."""
    started = time.monotonic()
    deadline = started + timeout
    needed = ("countries", "applications", "get-prices")
    while True:
        done = all(smsman.calls_to(method) for method in needed)
        idle = sum(smsman.in_flight.values()) == 0
        if done and idle:
            await asyncio.sleep(0.05)  # let the bot parse and store the last answer
            if sum(smsman.in_flight.values()) == 0:
                return time.monotonic() - started
        if time.monotonic() > deadline:
            raise RuntimeError(f"catalogue not warm after {timeout}s: {smsman.calls}")
        await asyncio.sleep(0.02)


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (nearest rank) of `values`; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


def latency_line(label: str, values_ms: Sequence[float]) -> str:
    """`label  n  p50  p95  p99  max` in milliseconds."""
    return (
        f"{label:<26} n={len(values_ms):>5}  p50={percentile(values_ms, 50):7.1f}  "
        f"p95={percentile(values_ms, 95):7.1f}  p99={percentile(values_ms, 99):7.1f}  "
        f"max={max(values_ms, default=float('nan')):7.1f} ms"
    )


class LoopLag:
    """Samples how late the event loop wakes a task that sleeps `interval` s: a stall of the
    loop (a long synchronous step, a GC pause, or no CPU because other processes ran)."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.interval)
            self.lags.append(loop.time() - before - self.interval)

    def start(self) -> None:
        self.lags.clear()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def summary(self) -> str:
        if not self.lags:
            return "not sampled"
        over = sum(1 for lag in self.lags if lag > 0.02)
        return (
            f"p99 {percentile(self.lags, 99) * 1000:.1f} ms, max {max(self.lags) * 1000:.1f} ms, "
            f"{over} stalls > 20 ms"
        )
