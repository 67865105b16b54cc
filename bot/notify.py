"""Pushes to Telegram: the one place that handles 429, 403 and "not modified"."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from aiogram import Bot
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.types import InlineKeyboardMarkup

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    OK = "ok"
    BLOCKED = "blocked"  # 403: the user blocked the bot; do not retry until they return
    GONE = "gone"  # the message to edit no longer exists or can't be edited
    REJECTED = "rejected"  # another 400: our request is wrong; retrying would not help
    UNAVAILABLE = "unavailable"  # network, 5xx or flood control outlasting our patience


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    message_id: int | None = None
    retry_after: float | None = None  # a 429: Telegram asks every send to wait this long

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


OnBlocked = Callable[[int], Awaitable[None]]


class Notifier:
    def __init__(
        self,
        bot: Bot,
        on_blocked: OnBlocked | None = None,
        *,
        attempts: int = 5,
        backoff: float = 0.5,
        timeout: float | None = None,
    ) -> None:
        """Network errors and 5xx: `attempts` calls with exponential waits from `backoff`.
        A 429 is reported UNAVAILABLE with its retry_after (bot/delivery pauses for it).
        `timeout`: seconds one call may take (aiogram's default otherwise)."""
        self._bot = bot
        self._on_blocked = on_blocked
        self._attempts = attempts
        self._backoff = backoff
        self._timeout = None if timeout is None else int(timeout)  # seconds per call

    async def send(
        self, chat_id: int, text: str, markup: InlineKeyboardMarkup | None = None
    ) -> Result:
        async def call() -> int:
            message = await self._bot.send_message(
                chat_id, text, reply_markup=markup, request_timeout=self._timeout
            )
            return message.message_id

        return await self._deliver(chat_id, "send", call)

    async def edit(
        self,
        chat_id: int,
        message_id: int,
        text: str,
        markup: InlineKeyboardMarkup | None = None,
    ) -> Result:
        async def call() -> int:
            await self._bot.edit_message_text(
                text=text,
                chat_id=chat_id,
                message_id=message_id,
                reply_markup=markup,
                request_timeout=self._timeout,
            )
            return message_id

        return await self._deliver(chat_id, "edit", call)

    async def _deliver(self, chat_id: int, what: str, call: Callable[[], Awaitable[int]]) -> Result:
        for attempt in range(1, self._attempts + 1):
            try:
                return Result(Outcome.OK, await call())
            except TelegramRetryAfter as exc:
                # Not delivered now: the caller (bot/delivery) pauses and tries again.
                log.warning("%s to chat %s: flood control for %ss", what, chat_id, exc.retry_after)
                return Result(Outcome.UNAVAILABLE, retry_after=float(exc.retry_after))
            except TelegramForbiddenError:
                log.info("%s to chat %s: the user blocked the bot", what, chat_id)
                if self._on_blocked is not None:
                    await self._on_blocked(chat_id)
                return Result(Outcome.BLOCKED)
            except TelegramBadRequest as exc:
                text = exc.message.lower()
                if "not modified" in text:
                    return Result(Outcome.OK)
                if what == "edit" and ("not found" in text or "can't be edited" in text):
                    return Result(Outcome.GONE)
                log.error("%s to chat %s refused: %s", what, chat_id, exc.message)
                return Result(Outcome.REJECTED)
            except (TelegramNetworkError, TelegramServerError, TimeoutError) as exc:
                if attempt == self._attempts:
                    log.warning("%s to chat %s failed: %s", what, chat_id, type(exc).__name__)
                    return Result(Outcome.UNAVAILABLE)
                await asyncio.sleep(min(self._backoff * 2 ** (attempt - 1), 10.0))
            except TelegramAPIError as exc:  # 401, 404, 409, 413...: retrying would not help
                log.error("%s to chat %s refused: %s", what, chat_id, exc.message)
                return Result(Outcome.REJECTED)
        return Result(Outcome.UNAVAILABLE)  # pragma: no cover - the loop always returns
