"""The bot's own HTTP server: /healthz, /readyz and /metrics (in-process, real HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.app import App
from bot.http import HttpServer
from bot.settings import Settings
from sandbox.smsman import FakeSmsMan
from sandbox.telegram import FakeTelegram
from tests.botproc import free_port
from tests.flows import buy
from tests.inprocess import running

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def get(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.text()


async def scrape(port: int) -> Samples:
    status, text = await get(port, "/metrics")
    assert status == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
async def served(bot_settings: Callable[..., Settings]) -> AsyncIterator[tuple[App, int]]:
    port = free_port()
    async with running(bot_settings(http_port=port, access_mode="shop")) as app:
        server = HttpServer(app, webhook=False)
        await server.start()
        try:
            yield app, port
        finally:
            await server.stop()


async def test_healthz_and_readyz(served: tuple[App, int]) -> None:
    app, port = served
    assert await get(port, "/healthz") == (200, '{"status": "ok"}')
    status, body = await get(port, "/readyz")
    assert status == 200, body
    assert '"database": "ok"' in body and '"telegram": "ok"' in body
    assert "redis" not in body  # no REDIS_URL: not a dependency
    status, _ = await get(port, "/telegram")
    assert status == 404, "no webhook path in polling mode"
    await app.db.close()  # the database goes away
    status, body = await get(port, "/readyz")
    assert status == 503 and '"database": "down' in body and '"telegram": "ok"' in body
    assert (await get(port, "/healthz"))[0] == 200, "alive all the same"


@pytest.mark.telegram_errors_expected
async def test_metrics_after_a_purchase(
    served: tuple[App, int], telegram: FakeTelegram, smsman: FakeSmsMan
) -> None:
    app, port = served
    before = await scrape(port)
    await app.db.wallet.credit(1, 100_00, note=None, idempotency_key="t1")
    user = telegram.user(1)
    card = await buy(user)
    request_id = next(r.request_id for r in smsman.requests.values() if r.number in card.text)
    telegram.fail_next("sendMessage", chat_id=1, status=429, retry_after=1)
    smsman.deliver_code(request_id, "777111")
    await user.wait_for("777111", predicate=lambda m: m.text.startswith("🔔"), timeout=10)
    await asyncio.sleep(0.3)  # the delivery is recorded just after Telegram accepted it
    after = await scrape(port)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert value(after, "bot_orders", state="received") == 1
    assert value(after, "bot_orders", state="waiting") == 0
    assert delta("bot_codes_delivered_total") == 1
    assert delta("bot_code_delivery_delay_seconds_count") == 1
    delay = delta("bot_code_delivery_delay_seconds_sum")
    assert 1.0 <= delay < 5.0, delay  # the 429 made it wait a second
    assert delta("bot_code_delivery_delay_seconds_bucket", le="0.5") == 0
    assert delta("bot_code_delivery_delay_seconds_bucket", le="5.0") == 1
    assert delta("bot_smsman_calls_total", method="get-number", outcome="ok") == 1
    assert delta("bot_smsman_calls_total", method="get-sms", outcome="ok") >= 1
    assert delta("bot_telegram_requests_total", method="SendMessage", outcome="ok") >= 1
    assert delta("bot_telegram_requests_total", method="SendMessage", outcome="flood_wait") == 1
    assert delta("bot_telegram_flood_waits_total", method="SendMessage") == 1
    assert delta("bot_poller_lag_seconds_count") >= 1
    assert value(after, "bot_smsman_breaker", state="closed") == 1
    assert value(after, "bot_smsman_breaker", state="open") == 0
    assert not any(name.startswith("python_gc") for name, _labels in after), "own registry"


def test_metric_families_are_defined_once() -> None:
    from bot import metrics

    names = {
        collector._name  # type: ignore[attr-defined]
        for collector in metrics.REGISTRY._collector_to_names  # type: ignore[attr-defined]
    }
    assert names == {
        "bot_orders",
        "bot_codes_delivered",
        "bot_code_delivery_delay_seconds",
        "bot_smsman_calls",
        "bot_telegram_requests",
        "bot_telegram_flood_waits",
        "bot_poller_lag_seconds",
        "bot_smsman_breaker",
    }
