"""Webhook mode as a real process: the fake Telegram posts updates to the bot's /telegram.

The bot's WEBHOOK_URL is http://127.0.0.1:PORT/telegram: plain HTTP is accepted only for a
loopback host (bot/settings.py; the fake Telegram allows the same, sandbox/telegram.py).
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from sandbox.smsman import FakeSmsMan
from sandbox.telegram import SECRET_HEADER, FakeTelegram
from storage.db import Database
from storage.models import OrderStatus
from tests.botproc import (
    BotProcess,
    BotProcessError,
    arrive,
    buy,
    code_messages,
    free_port,
    request_of,
    wait_until,
    webhook_settings,
)

pytestmark = pytest.mark.asyncio

SECRET = "s3cret-Token_1"


async def post_update(port: int, update: dict[str, object], secret: str | None) -> int:
    headers = {} if secret is None else {SECRET_HEADER: secret}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{port}/telegram", data=json.dumps(update), headers=headers
        ) as response,
    ):
        return response.status


def start_update(user_id: int, message_id: int, update_id: int) -> dict[str, object]:
    user = {"id": user_id, "is_bot": False, "first_name": "Eve", "language_code": "en"}
    return {
        "update_id": update_id,
        "message": {
            "message_id": message_id,
            "from": user,
            "chat": {"id": user_id, "type": "private", "first_name": "Eve"},
            "date": 1_700_000_000,
            "text": "/start",
            "entities": [{"type": "bot_command", "offset": 0, "length": 6}],
        },
    }


async def test_purchase_and_code_through_the_webhook(
    telegram: FakeTelegram, smsman: FakeSmsMan, tmp_path: Path
) -> None:
    port = free_port()
    bot = BotProcess.for_fakes(telegram, smsman, tmp_path, **webhook_settings(port, SECRET))
    try:
        await bot.start()
        [set_webhook] = telegram.calls_to("setWebhook")
        assert set_webhook.params["url"] == f"http://127.0.0.1:{port}/telegram"
        assert set_webhook.params["secret_token"] == SECRET
        allowed = set(set_webhook.params["allowed_updates"])
        assert {"message", "callback_query"} <= allowed, allowed
        user = telegram.user(1)
        card = await buy(user)
        arrive(smsman, request_of(smsman, card.text), "424242")
        await user.wait_for("424242", predicate=lambda m: m.text.startswith("🔔"), timeout=5)
        await telegram.wait_idle()
        assert len(code_messages(user, "424242")) == 1
        assert telegram.calls_to("getUpdates") == [], "no polling in webhook mode"
        assert telegram.webhook_posts and all(post.ok for post in telegram.webhook_posts)
        assert await bot.terminate() == 0
    finally:
        await bot.stop()
    assert telegram.webhook is not None, "a stopping replica leaves the webhook to the others"
    assert SECRET not in bot.log_text()
    assert "Traceback" not in bot.log_text()


async def test_a_request_without_the_right_secret_gets_401_and_changes_nothing(
    telegram: FakeTelegram, smsman: FakeSmsMan, tmp_path: Path
) -> None:
    port = free_port()
    bot = BotProcess.for_fakes(telegram, smsman, tmp_path, **webhook_settings(port, SECRET))
    try:
        await bot.start()
        telegram.user(5, started=True)  # an answer to them would be accepted
        assert await post_update(port, start_update(5, 1, 900_000_001), None) == 401
        assert await post_update(port, start_update(5, 2, 900_000_002), "wrong") == 401
        assert await post_update(port, start_update(5, 3, 900_000_003), SECRET + "x") == 401
        await asyncio.sleep(0.5)
        assert telegram.calls_to("sendMessage") == []
        async with await Database.open(bot.database_url) as db:
            assert await db.users.get(5) is None, "nothing recorded for a refused update"
        # The same update with the secret is acted on: the refusals above were the secret's.
        assert await post_update(port, start_update(5, 4, 900_000_004), SECRET) == 200
        await wait_until(lambda: len(telegram.calls_to("sendMessage")) == 1, timeout=5)
        assert await bot.terminate() == 0
    finally:
        await bot.stop()


@pytest.mark.telegram_errors_expected  # the killed process's answers never arrive
async def test_an_update_whose_processing_was_killed_is_posted_again_and_acted_on_once(
    telegram: FakeTelegram, smsman: FakeSmsMan, tmp_path: Path
) -> None:
    """SIGKILL while the Buy click waits for get-number: the fake got no answer, so it
    posts the click again to the restarted replica, which does not buy a second number."""
    port = free_port()
    bot = BotProcess.for_fakes(telegram, smsman, tmp_path, **webhook_settings(port, SECRET))
    try:
        await bot.start()
        user = telegram.user(1)
        await user.send("/buy")
        countries = await user.wait_for("Pick a country", new_only=True)
        await user.click("Russia", message_id=countries.message_id)
        services = await user.wait_for("pick a service", new_only=True)
        await user.click("Telegram", message_id=services.message_id)
        confirm = await user.wait_for("Check your order", new_only=True)
        smsman.latency = 3.0  # get-number hangs: the click's update is mid-processing
        posts_before = len(telegram.webhook_posts)
        await user.click("✅ Buy", message_id=confirm.message_id)
        await wait_until(lambda: len(smsman.calls_to("get-number")) == 1, timeout=5)
        click_update = telegram.webhook_posts[posts_before].update_id
        assert telegram.webhook_posts[posts_before].status is None, "not answered yet"
        assert await bot.kill() == -9
        smsman.latency = 0.0
        await bot.start()
        await wait_until(
            lambda: any(p.update_id == click_update and p.ok for p in telegram.webhook_posts),
            timeout=10,
        )
        await telegram.wait_idle()
        posts = [p for p in telegram.webhook_posts if p.update_id == click_update]
        assert len(posts) >= 2 and not posts[0].ok and posts[-1].ok, posts
        assert len(smsman.calls_to("get-number")) == 1, "the retried click bought nothing"
        assert await bot.terminate() == 0
    finally:
        await bot.stop()
    async with await Database.open(bot.database_url) as db:
        orders = await db.orders.list_for_user(1)
        assert len(orders) == 1, orders
        assert orders[0].status is OrderStatus.FAILED  # interrupted before its number was stored
        assert await db.wallet.check_invariant() == []


async def test_several_replicas_behind_one_url_share_the_updates(
    telegram: FakeTelegram, smsman: FakeSmsMan, tmp_path: Path
) -> None:
    """Two processes on one database, the fake spreading posts over both like a load
    balancer; each user is answered once. (SQLite here: one file, two processes.)"""
    ports = [free_port(), free_port()]
    database_url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    bots = [
        BotProcess.for_fakes(
            telegram,
            smsman,
            tmp_path / f"r{n}",
            database_url=database_url,
            **webhook_settings(port, SECRET),
        )
        for n, port in enumerate(ports)
    ]
    try:
        for bot in bots:
            await bot.start()
        telegram.route_webhook([f"http://127.0.0.1:{port}/telegram" for port in ports])
        users = [telegram.user(n) for n in (1, 2, 3, 4)]
        for user in users:
            await user.send("/start")
        for user in users:
            await user.wait_for("Hi", new_only=False, timeout=5)
        await telegram.wait_idle()
        targets = {post.target for post in telegram.webhook_posts if post.ok}
        assert len(targets) == 2, "both replicas served updates"
        for user in users:
            assert len(user.messages) == 1, user.transcript()
        for bot in bots:
            assert await bot.terminate() == 0
    finally:
        for bot in bots:
            await bot.stop()


async def test_two_replicas_share_the_users_step_through_redis(
    redis_url: str, smsman: FakeSmsMan, tmp_path: Path
) -> None:
    """Webhook mode with REDIS_URL: /buy answered by one replica, the typed country filter
    by the other, which knows the user is choosing a country (FSM state in Redis)."""
    bot_id = random.randint(10**8, 10**9)  # FSM keys carry the bot id: this test's own
    async with FakeTelegram(token=f"{bot_id}:WEBHOOK-REDIS") as telegram:
        ports = [free_port(), free_port()]
        bots = [
            BotProcess.for_fakes(
                telegram,
                smsman,
                tmp_path / f"r{n}",
                database_url=f"sqlite:///{tmp_path / 'shared.sqlite3'}",
                redis_url=redis_url,
                **webhook_settings(port, SECRET),
            )
            for n, port in enumerate(ports)
        ]
        try:
            for bot in bots:
                await bot.start()
            telegram.route_webhook([f"http://127.0.0.1:{port}/telegram" for port in ports])
            user = telegram.user(1)
            await user.send("/buy")
            await user.wait_for("Pick a country", new_only=True)
            await user.send("Russ")
            found = await user.wait_for("Countries matching", new_only=True)
            assert any("Russia" in label for label in found.labels), found.labels
            await telegram.wait_idle()
            served = [post.target for post in telegram.webhook_posts if post.ok]
            assert len(served) == 2 and served[0] != served[1], "one update each"
            for bot in bots:
                assert await bot.terminate() == 0
        finally:
            for bot in bots:
                await bot.stop()
        assert telegram.errors == []
        client = Redis.from_url(redis_url)
        try:
            keys = [key async for key in client.scan_iter(match=f"fsm:{bot_id}:*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


@pytest.mark.telegram_errors_expected  # the refusal is the point
async def test_a_webhook_url_telegram_refuses_is_one_line_and_exit_2(
    telegram: FakeTelegram, smsman: FakeSmsMan, tmp_path: Path
) -> None:
    settings = webhook_settings(free_port(), SECRET)
    settings["webhook_url"] = "https://bot.example.com:8080/telegram"  # not 443/80/88/8443
    bot = BotProcess.for_fakes(telegram, smsman, tmp_path, **settings)
    with pytest.raises(BotProcessError, match="exited with 2"):
        await bot.start(timeout=20)
    lines = [line for line in bot.log_text().splitlines() if "refused WEBHOOK_URL" in line]
    assert lines == [
        "Telegram refused WEBHOOK_URL: Bad Request: bad webhook: "
        "Webhook can be set up only on ports 80, 88, 443 or 8443"
    ]
    assert "Traceback" not in bot.log_text()
