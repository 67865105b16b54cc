"""Shared fixtures: both fakes on 127.0.0.1 and the bot wired to them over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.settings import Settings
from sandbox.smsman import FakeSmsMan
from sandbox.telegram import FakeTelegram

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
