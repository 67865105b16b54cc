"""Shared fixtures: both fakes on 127.0.0.1 and the bot wired to them over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.app import App, build_app
from bot.settings import Settings
from tests.fakes.smsman import FakeSmsMan
from tests.fakes.telegram import FakeTelegram

BOT_TOKEN = "123456:TEST-TOKEN-do-not-leak"
RUN_FIGURES: list[str] = []  # lines a long test wants shown at the end of the run
SMSMAN_TOKEN = "smsman-test-token-do-not-leak"


@pytest.fixture
async def smsman() -> AsyncIterator[FakeSmsMan]:
    fake = FakeSmsMan(token=SMSMAN_TOKEN)
    fake.default_catalogue()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def telegram(request: pytest.FixtureRequest) -> AsyncIterator[FakeTelegram]:
    """The fake Bot API; after every test, no 4xx the bot caused by itself is allowed."""
    fake = FakeTelegram(token=BOT_TOKEN)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()
    if request.node.get_closest_marker("telegram_errors_expected") is None:
        assert fake.errors == [], f"the bot caused Telegram errors: {fake.errors}"


def make_settings(
    tmp_path: Path, telegram: FakeTelegram, smsman: FakeSmsMan, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "bot_token": BOT_TOKEN,
        "smsman_token": SMSMAN_TOKEN,
        "telegram_api_url": telegram.url,
        "smsman_api_url": smsman.url,
        "database_url": f"sqlite:///{tmp_path / 'bot.sqlite3'}",
        "sms_poll_interval": 0.2,
        "smsman_timeout": 1.0,
        "admin_ids": [1000],
        "allowed_user_ids": [1, 2, 3, 4, 5],
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[App]:
    """The bot in this process, long polling the fake Telegram, until the block ends."""
    app = await build_app(settings)
    task = asyncio.create_task(
        app.dp.start_polling(
            app.bot, handle_signals=False, close_bot_session=False, polling_timeout=1
        )
    )
    try:
        for _ in range(200):  # wait until startup is done and polling began
            if app.dp._running_lock.locked() and app.poller._main is not None:
                break
            await asyncio.sleep(0.01)
        yield app
    finally:
        with contextlib.suppress(RuntimeError):
            await app.dp.stop_polling()
        await asyncio.wait_for(task, 10)
        await app.close()


@pytest.fixture
def bot_settings(
    tmp_path: Path, telegram: FakeTelegram, smsman: FakeSmsMan
) -> Callable[..., Settings]:
    def factory(**overrides: Any) -> Settings:
        return make_settings(tmp_path, telegram, smsman, **overrides)

    return factory


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Figures of long runs (the chaos test), printed whether or not output is captured."""
    if RUN_FIGURES:
        terminalreporter.section("figures")
        for line in RUN_FIGURES:
            terminalreporter.write_line(line)
