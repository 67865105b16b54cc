"""bot/notify.py against the fake Telegram: 429, 403, other 400s, 5xx, "not modified"."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from aiogram import Bot
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer

from bot.delivery.pacing import Paced, Pacer
from bot.notify import Notifier, Outcome
from sandbox.telegram import FakeTelegram

pytestmark = pytest.mark.asyncio


@pytest.fixture
def pacer() -> Pacer:
    return Pacer(25)


@pytest.fixture
async def bot(telegram: FakeTelegram, pacer: Pacer) -> AsyncIterator[Bot]:
    """Built like bot/app.py does: 429 is waited out by the session middleware (for calls
    outside delivery: the handlers' answers)."""
    session = AiohttpSession(api=TelegramAPIServer.from_base(telegram.url))
    session.middleware(Paced(pacer, attempts=2, max_wait=60))
    bot = Bot(telegram.token, session=session, default=DefaultBotProperties(parse_mode="HTML"))
    try:
        yield bot
    finally:
        await bot.session.close()


def sends(telegram: FakeTelegram) -> int:
    return len(telegram.calls_to("sendMessage"))


async def test_429_waits_retry_after_and_tries_again(telegram: FakeTelegram, bot: Bot) -> None:
    telegram.user(1, started=True)
    telegram.fail_next("sendMessage", chat_id=1, status=429, retry_after=1, times=1)
    started = time.monotonic()
    result = await Notifier(bot).send(1, "hello")
    assert result.ok and result.message_id is not None
    assert time.monotonic() - started >= 1.0
    assert sends(telegram) == 2
    assert telegram.user(1).last.text == "hello"


async def test_a_long_429_is_not_waited_but_pauses_every_send(
    telegram: FakeTelegram, bot: Bot, pacer: Pacer
) -> None:
    telegram.user(1, started=True)
    telegram.fail_next("sendMessage", chat_id=1, status=429, retry_after=100, times=1)
    started = time.monotonic()
    result = await Notifier(bot).send(1, "hello")
    assert result.outcome is Outcome.UNAVAILABLE and time.monotonic() - started < 1.0
    assert result.retry_after == 100, "the caller learns how long Telegram asks to wait"
    assert sends(telegram) == 1, "a wait beyond our patience is not waited"
    assert 99 < pacer.paused_for() <= 100, "every counted send waits for the pause"


async def test_429_is_bounded_in_attempts(telegram: FakeTelegram, bot: Bot) -> None:
    telegram.user(1, started=True)
    telegram.fail_next("sendMessage", chat_id=1, status=429, retry_after=1, times=5)
    result = await Notifier(bot).send(1, "hello")
    assert result.outcome is Outcome.UNAVAILABLE
    assert sends(telegram) == 2, "two attempts, no more"


async def test_403_marks_blocked_once_and_does_not_retry(telegram: FakeTelegram, bot: Bot) -> None:
    telegram.user(1, started=True)
    telegram.block(1, notify=False)
    blocked: list[int] = []

    async def on_blocked(chat_id: int) -> None:
        blocked.append(chat_id)

    result = await Notifier(bot, on_blocked).send(1, "hello")
    assert result.outcome is Outcome.BLOCKED
    assert blocked == [1]
    assert sends(telegram) == 1


@pytest.mark.telegram_errors_expected
async def test_other_400_is_rejected_without_retry(telegram: FakeTelegram, bot: Bot) -> None:
    telegram.user(1, started=True)
    result = await Notifier(bot).send(1, "<b>broken")  # unclosed tag: Telegram says 400
    assert result.outcome is Outcome.REJECTED
    assert sends(telegram) == 1
    result = await Notifier(bot).send(424242, "to nobody")  # chat not found
    assert result.outcome is Outcome.REJECTED
    assert sends(telegram) == 2
    assert [e.status for e in telegram.errors] == [400, 400]


async def test_server_errors_are_retried_with_backoff(telegram: FakeTelegram, bot: Bot) -> None:
    telegram.user(1, started=True)
    telegram.fail_next("sendMessage", chat_id=1, status=502, times=2)
    result = await Notifier(bot, backoff=0.01).send(1, "hello")
    assert result.ok
    assert sends(telegram) == 3
    telegram.fail_next("sendMessage", chat_id=1, status=502, times=3)
    result = await Notifier(bot, backoff=0.01, attempts=3).send(1, "hello")
    assert result.outcome is Outcome.UNAVAILABLE


@pytest.mark.telegram_errors_expected
async def test_edit_not_modified_is_ok_and_a_missing_message_is_gone(
    telegram: FakeTelegram, bot: Bot
) -> None:
    telegram.user(1, started=True)
    notifier = Notifier(bot)
    sent = await notifier.send(1, "card")
    assert sent.message_id is not None
    assert (await notifier.edit(1, sent.message_id, "card v2")).ok
    assert (await notifier.edit(1, sent.message_id, "card v2")).outcome is Outcome.OK
    assert (await notifier.edit(1, 9999, "card v3")).outcome is Outcome.GONE
    assert telegram.user(1).message(sent.message_id).text == "card v2"
