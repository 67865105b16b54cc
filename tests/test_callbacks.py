"""Every callback is answered, and a double tap's "not modified" is no error (point 13)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from bot.settings import Settings
from sandbox.smsman import FakeSmsMan
from sandbox.telegram import NOT_MODIFIED, FakeTelegram
from tests.flows import say
from tests.inprocess import running

pytestmark = pytest.mark.asyncio

SettingsFactory = Callable[..., Settings]


async def test_a_double_tap_edits_once_and_is_answered_twice(
    telegram: FakeTelegram,
    smsman: FakeSmsMan,
    bot_settings: SettingsFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running(bot_settings()):
        user = telegram.user(1)
        menu = await say(user, "/start", "Hi")
        edits = len(telegram.calls_to("editMessageText"))
        with telegram.hold_updates():  # both taps carry the menu as it was
            first = await user.click("Buy number", message_id=menu.message_id)
            second = await user.click("Buy number", message_id=menu.message_id)
        with caplog.at_level(logging.INFO):
            await user.wait_answered(first)
            await user.wait_answered(second)
            await telegram.wait_idle()
        assert "Russia" in str(user.message(menu.message_id).labels)
        # The second tap's edit would change nothing ("message is not modified"): never sent.
        assert len(telegram.calls_to("editMessageText")) == edits + 1
    assert telegram.errors == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_telegram_saying_not_modified_is_no_error(
    telegram: FakeTelegram,
    smsman: FakeSmsMan,
    bot_settings: SettingsFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What another replica's tap, or one before a restart, can still cause."""
    async with running(bot_settings()):
        user = telegram.user(1)
        menu = await say(user, "/start", "Hi")
        telegram.fail_next("editMessageText", status=400, description=NOT_MODIFIED)
        with caplog.at_level(logging.INFO):
            tap = await user.click("Buy number", message_id=menu.message_id)
            answer = await user.wait_answered(tap)
            await telegram.wait_idle()
        assert "went wrong" not in str(answer.get("text", ""))
        assert [call.method for call in telegram.injected_calls()] == ["editMessageText"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("status", [400, 403, 500])
async def test_a_telegram_error_inside_a_handler_still_answers_the_callback(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory, status: int
) -> None:
    async with running(bot_settings()):
        user = telegram.user(1)
        menu = await say(user, "/start", "Hi")
        telegram.fail_next("editMessageText", status=status, description="Bad Request: odd")
        tap = await user.click("Buy number", message_id=menu.message_id)
        answer = await user.wait_answered(tap)
        assert "Something went wrong" in str(answer.get("text", ""))
