"""Shared fixtures: both fakes on 127.0.0.1 and the bot wired to them over real HTTP."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from bot.settings import Settings
from sandbox.smsman import FakeSmsMan
from sandbox.telegram import FakeTelegram

BOT_TOKEN = "123456:TEST-TOKEN-do-not-leak"
RUN_FIGURES: list[str] = []  # lines a long test wants shown at the end of the run
SMSMAN_TOKEN = "smsman-test-token-do-not-leak"


# -- the database engines ----------------------------------------------------------------
# Storage, money and concurrency tests take `database_url` and so run once per engine:
# SQLite in tmp_path, and PostgreSQL in a database of their own made on TEST_DATABASE_URL's
# server. Without TEST_DATABASE_URL the PostgreSQL runs skip (visibly, with the reason);
# with REQUIRE_POSTGRES=1 (.ci/run) that skip is a failure instead.
ENGINES = ("sqlite", "postgresql")


async def _admin_execute(base_url: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(base_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """The URL of a fresh PostgreSQL database, dropped afterwards."""
    base = os.environ.get("TEST_DATABASE_URL", "")
    if not base:
        reason = "PostgreSQL engine: TEST_DATABASE_URL is not set"
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{reason} (REQUIRE_POSTGRES=1)")
        pytest.skip(reason)
    name = f"test_{uuid.uuid4().hex[:16]}"
    await _admin_execute(base, f'CREATE DATABASE "{name}"')
    try:
        yield f"{base.rsplit('/', 1)[0]}/{name}"
    finally:
        await _admin_execute(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=ENGINES)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'bot.sqlite3'}"
        return
    async with postgres_database() as url:
        yield url


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


@pytest.fixture
def bot_settings_on_each_engine(
    tmp_path: Path, telegram: FakeTelegram, smsman: FakeSmsMan, database_url: str
) -> Callable[..., Settings]:
    """bot_settings with DATABASE_URL from `database_url`: the bot runs once per engine.
    A module opts in with `bot_settings = ON_EACH_ENGINE` (see tests/test_money_concurrent.py)."""

    def factory(**overrides: Any) -> Settings:
        overrides.setdefault("database_url", database_url)
        return make_settings(tmp_path, telegram, smsman, **overrides)

    return factory


REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


@pytest.fixture
def redis_url() -> str:
    """Redis at 127.0.0.1:6379; the test is skipped (visibly, with the reason) when it is
    unreachable, and fails instead when REQUIRE_REDIS=1 (.ci/run sets it)."""
    try:
        socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=1).close()
    except OSError:
        reason = f"Redis at {REDIS_HOST}:{REDIS_PORT} is unreachable"
        if os.environ.get("REQUIRE_REDIS") == "1":
            pytest.fail(f"{reason} and REQUIRE_REDIS=1")
        pytest.skip(f"{reason} (REQUIRE_REDIS=1 makes this a failure)")
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/0"


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    from redis.asyncio import Redis

    prefix = f"test:{uuid.uuid4().hex}"
    yield prefix
    client = Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Figures of long runs (the chaos test), printed whether or not output is captured."""
    if RUN_FIGURES:
        terminalreporter.section("figures")
        for line in RUN_FIGURES:
            terminalreporter.write_line(line)
