"""The fake Telegram's webhooks: setWebhook's rules, 409 for getUpdates, posting like
Telegram (secret header, again after a non-2xx or a timeout, spread over replicas)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sandbox.telegram import SECRET_HEADER, WEBHOOK_ACTIVE, FakeTelegram

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def api(fake: FakeTelegram, method: str, **params: Any) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{fake.url}/bot{fake.token}/{method}", json=params) as response,
    ):
        return response.status, await response.json()


class Target:
    """A replica's /telegram: records what it got, answers what `answers` says."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, Any], str | None]] = []
        self.answered: list[str] = []  # texts, in the order their answers went
        self.answers: list[int | float] = []  # status, or seconds to hang; then 200
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        update = await request.json()
        self.got.append((update, request.headers.get(SECRET_HEADER)))
        answer = self.answers.pop(0) if self.answers else 200
        if isinstance(answer, float):
            await asyncio.sleep(answer)
            answer = 200
        self.answered.append(update["message"]["text"])
        return web.Response(status=answer)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/telegram", self.handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/telegram"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def targets() -> AsyncIterator[list[Target]]:
    made = [Target(), Target()]
    for target in made:
        await target.start()
    yield made
    for target in made:
        await target.stop()


def texts(target: Target) -> list[str]:
    return [update["message"]["text"] for update, _secret in target.got]


@pytest.mark.telegram_errors_expected
async def test_set_webhook_rules_like_telegram(telegram: FakeTelegram) -> None:
    bad = [
        {"url": "http://bot.example.com/telegram"},  # http only for loopback (fake only)
        {"url": "https://bot.example.com:8080/telegram"},  # 443, 80, 88, 8443 only
        {"url": "https://bot.example.com/telegram", "secret_token": "no spaces"},
        {"url": "https://bot.example.com/telegram", "secret_token": "x" * 257},
        {"url": "not a url"},
    ]
    for params in bad:
        status, body = await api(telegram, "setWebhook", **params)
        assert status == 400 and not body["ok"], params
    assert telegram.webhook is None
    for url in ("https://bot.example.com:8443/telegram", "http://127.0.0.1:9/telegram"):
        status, body = await api(telegram, "setWebhook", url=url, secret_token="A-z_0")
        assert status == 200 and body["result"] is True
    status, body = await api(telegram, "getWebhookInfo")
    assert body["result"]["url"] == "http://127.0.0.1:9/telegram"
    status, body = await api(telegram, "getUpdates")
    assert status == 409 and body["description"] == WEBHOOK_ACTIVE
    assert (await api(telegram, "deleteWebhook"))[0] == 200
    status, body = await api(telegram, "getUpdates", timeout=0)
    assert status == 200 and body["result"] == []
    assert (await api(telegram, "getWebhookInfo"))[1]["result"]["url"] == ""


@pytest.mark.telegram_errors_expected
async def test_a_long_poll_ends_with_409_when_a_webhook_is_set(telegram: FakeTelegram) -> None:
    poll = asyncio.create_task(api(telegram, "getUpdates", timeout=5))
    await asyncio.sleep(0.2)
    await api(telegram, "setWebhook", url="http://127.0.0.1:9/telegram")
    status, body = await asyncio.wait_for(poll, 2)
    assert status == 409 and "webhook is active" in body["description"]


async def test_updates_are_posted_with_the_secret_and_again_after_a_failure(
    telegram: FakeTelegram, targets: list[Target]
) -> None:
    target = targets[0]
    telegram.webhook_timeout = 0.3
    telegram.webhook_retry_delay = 0.05
    target.answers = [500, 0.6, 200]  # an error, then a timeout, then accepted
    user = telegram.user(1)
    await user.send("first")
    await api(telegram, "setWebhook", url=target.url, secret_token="sec-1")
    await telegram.wait_idle(timeout=5)
    assert texts(target) == ["first", "first", "first"]
    assert {secret for _update, secret in target.got} == {"sec-1"}
    assert [post.ok for post in telegram.webhook_posts] == [False, False, True]
    assert telegram.webhook_posts[1].error == "Read timeout expired"
    assert telegram.pending_updates == []
    info = (await api(telegram, "getWebhookInfo"))[1]["result"]
    assert info["pending_update_count"] == 0 and "last_error_message" in info
    await user.send("second")
    await telegram.wait_idle(timeout=5)
    assert texts(target)[-1] == "second" and len(target.got) == 4


async def test_posts_spread_over_replicas_and_a_dead_one_is_skipped_by_retrying(
    telegram: FakeTelegram, targets: list[Target]
) -> None:
    telegram.webhook_retry_delay = 0.05
    await api(telegram, "setWebhook", url="https://bot.example.com/telegram", secret_token="s")
    telegram.route_webhook([target.url for target in targets])
    for n in range(1, 7):
        await telegram.user(n).send(f"hello {n}")
    await telegram.wait_idle(timeout=5)
    assert len(targets[0].got) == 3 and len(targets[1].got) == 3
    assert sorted(texts(targets[0]) + texts(targets[1])) == [f"hello {n}" for n in range(1, 7)]
    await targets[1].stop()  # a replica dies: its share fails and goes to the other
    for n in range(1, 5):
        await telegram.user(n).send(f"again {n}")
    await telegram.wait_idle(timeout=5)
    assert sorted(t for t in texts(targets[0]) if t.startswith("again")) == [
        f"again {n}" for n in range(1, 5)
    ]
    assert any(not post.ok for post in telegram.webhook_posts)


async def test_one_chat_gets_its_updates_in_order(
    telegram: FakeTelegram, targets: list[Target]
) -> None:
    target = targets[0]
    target.answers = [0.2]  # the first is slow: the second must wait for it
    await api(telegram, "setWebhook", url=target.url)
    user = telegram.user(1)
    await user.send("one")
    await user.send("two")
    await telegram.wait_idle(timeout=5)
    assert texts(target) == ["one", "two"]
    assert target.answered == ["one", "two"], "the second was posted only after the first"
