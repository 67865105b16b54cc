"""The sandbox (`make demo`) without a browser: its catalogue, its code timing, its
refusals, and the chat API the page talks to."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest
from pydantic import ValidationError

from sandbox import catalogue
from sandbox.chat import ChatServer, identities
from sandbox.demo import Demo, DemoError
from sandbox.provider import SandboxSmsMan
from sandbox.settings import SandboxSettings
from sandbox.telegram import FakeTelegram

TOKEN = "100000:sandbox-test"


def test_catalogue_is_realistic_and_the_same_every_time() -> None:
    one, two = SandboxSmsMan("key"), SandboxSmsMan("key")
    assert len(one.countries) == catalogue.COUNTRY_COUNT == 150
    assert len(one.applications) == len(catalogue.SERVICES) == 60
    codes = {code for _title, code in one.countries.values()}
    assert len(codes) == 150 and all(code and len(code) == 2 for code in codes)
    assert {"RU", "UA", "KZ", "US", "GB", "ID", "PH", "IN", "BR", "VN"} <= codes
    assert one.countries[1] == ("Russia", "RU")
    assert one.prices == two.prices and one.countries == two.countries
    costs = [cost for cost, _count in one.prices.values()]
    assert 6000 < len(costs) < 9000  # most pairs offered, not all
    assert all(
        isinstance(c, Decimal) and c >= 1 and c == c.quantize(Decimal("0.01")) for c in costs
    )
    assert any(count == 0 for _cost, count in one.prices.values())  # some out of stock


async def test_codes_come_after_the_delay_and_every_nth_never() -> None:
    fake = SandboxSmsMan("key", code_delay=(0.2, 0.4), no_code_every=3)
    async with fake, aiohttp.ClientSession() as http:
        ids = []
        for _ in range(3):
            async with http.post(
                f"{fake.url}/get-number",
                params={"token": "key", "country_id": "1", "application_id": "1"},
            ) as response:
                ids.append((await response.json())["request_id"])

        async def sms(request_id: int) -> dict[str, object]:
            async with http.get(
                f"{fake.url}/get-sms", params={"token": "key", "request_id": str(request_id)}
            ) as response:
                return await response.json()  # type: ignore[no-any-return]

        assert [(await sms(i)).get("error_code") for i in ids] == ["wait_sms"] * 3
        await asyncio.sleep(0.45)
        first, second, third = [await sms(i) for i in ids]
    assert "sms_code" in first and "sms_code" in second
    assert third.get("error_code") == "wait_sms"  # the third number never gets one


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SANDBOX_BOT_TOKEN", "7012345678:AAHk3mZ-Qx9vT2bLr8WcYp4NdE6sJfU1oGi"),
        ("SANDBOX_SMSMAN_TOKEN", "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6"),
        ("SANDBOX_HOST", "0.0.0.0"),
        ("SANDBOX_HOST", "192.168.1.10"),
        ("SANDBOX_CODE_DELAY", "60-5"),
    ],
)
def test_sandbox_refuses_real_tokens_and_other_addresses(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        SandboxSettings()


def test_sandbox_defaults_are_loopback_and_made_up(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HOST", "BOT_TOKEN", "SMSMAN_TOKEN", "CODE_DELAY"):
        monkeypatch.delenv(f"SANDBOX_{name}", raising=False)
    settings = SandboxSettings()
    assert settings.host == "127.0.0.1"
    assert settings.delay == (5.0, 60.0)


async def test_chat_api_sends_clicks_and_refuses_forged_buttons() -> None:
    telegram = FakeTelegram(TOKEN)
    people = identities(1001, 2001)
    server = ChatServer(telegram, people, host="127.0.0.1", port=0)
    await server.start()
    try:
        async with aiohttp.ClientSession(server.url) as http:
            async with http.post("/api/send", json={"user": "bob-en", "text": "/start"}) as r:
                assert r.status == 200
            bob = telegram.user(2001)
            assert telegram.pending_updates[-1]["message"]["text"] == "/start"
            # the bot answers through the same server, as over api.telegram.org
            async with http.post(
                f"/bot{TOKEN}/sendMessage",
                data={
                    "chat_id": "2001",
                    "text": "<b>Hi</b>",
                    "parse_mode": "HTML",
                    "reply_markup": '{"inline_keyboard":[[{"text":"Go","callback_data":"go"}]]}',
                },
            ) as r:
                assert (await r.json())["ok"]
            message_id = bob.last.message_id
            async with http.get("/api/updates", params={"user": "bob-en", "since": "0"}) as r:
                body = await r.json()
            texts = [m["text"] for m in body["messages"]]
            assert texts == ["/start", "Hi"]
            assert body["messages"][1]["entities"][0]["type"] == "bold"
            assert body["messages"][1]["keyboard"] == [[{"text": "Go", "data": "go", "url": None}]]
            forged = {"user": "bob-en", "message_id": message_id, "data": "admin:anything"}
            async with http.post("/api/click", json=forged) as r:
                assert r.status == 400
            async with http.post("/api/send", json={"user": "mallory", "text": "x"}) as r:
                assert r.status == 400
            async with http.get("/") as r:
                assert "script-src 'self'" in r.headers["Content-Security-Policy"]
            async with http.get("/static/..%2Fchat.py") as r:
                assert r.status == 404
    finally:
        await server.stop()


def test_the_sandboxed_bot_gets_none_of_the_shells_bot_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real = "7012345678:AAHk3mZ-Qx9vT2bLr8WcYp4NdE6sJfU1oGi"
    monkeypatch.setenv("BOT_TOKEN", real)
    monkeypatch.setenv("SMSMAN_TOKEN", "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6")
    monkeypatch.setenv("WEBHOOK_URL", "https://example.org/telegram")
    monkeypatch.setenv("REDIS_URL", "redis://10.0.0.5:6379/0")
    demo = Demo(SandboxSettings(port=0), workdir=tmp_path)
    demo.telegram._port = 18765  # as if started
    demo.smsman.url = "http://127.0.0.1:18766/control"
    env = demo.bot_environment()
    assert env["BOT_TOKEN"] == demo.settings.bot_token != real
    assert env["SMSMAN_TOKEN"] == demo.settings.smsman_token
    assert "WEBHOOK_URL" not in env and "REDIS_URL" not in env
    assert env["TELEGRAM_API_URL"] == "http://127.0.0.1:18765"
    assert env["ACCESS_MODE"] == "shop"
    assert env["DATABASE_URL"] == f"sqlite:///{tmp_path / 'bot.sqlite3'}"
    admins = env["ADMIN_IDS"].split(",")
    assert "1001" in admins and "1002" in admins and "2001" not in admins

    demo.smsman.url = "http://203.0.113.9/control"  # never leaves the machine
    with pytest.raises(DemoError):
        demo.bot_environment()


def test_python_m_sandbox_refuses_a_real_looking_token_with_one_line() -> None:
    env = {**os.environ, "SANDBOX_BOT_TOKEN": "7012345678:AAHk3mZ-Qx9vT2bLr8WcYp4NdE6sJfU1oGi"}
    result = subprocess.run(
        [sys.executable, "-m", "sandbox"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("SANDBOX_BOT_TOKEN:"), result.stderr
    assert "AAHk3mZ" not in result.stderr  # the token itself is not echoed
