"""Telegram's flood control for every Bot API call, handlers' answers included.

A 429 carries `retry_after`; waiting that long and sending again is what Telegram asks
for. Bounded: a wait longer than `max_wait`, or more than `attempts` tries, gives the
error back to the caller (bot/notify.py then reports the push as not delivered).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiogram.client.session.middlewares.base import (
    BaseRequestMiddleware,
    NextRequestMiddlewareType,
)
from aiogram.exceptions import TelegramRetryAfter
from aiogram.methods import GetUpdates, TelegramMethod
from aiogram.methods.base import TelegramType

from bot import metrics

if TYPE_CHECKING:
    from aiogram import Bot
    from aiogram.methods import Response

log = logging.getLogger(__name__)


class RetryAfter(BaseRequestMiddleware):
    def __init__(self, *, attempts: int = 3, max_wait: float = 10.0) -> None:
        self._attempts = attempts
        self._max_wait = max_wait

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        attempt = 1
        name = type(method).__name__
        counted = not isinstance(method, GetUpdates)  # long polls are not sends
        while True:
            try:
                response = await make_request(bot, method)
            except TelegramRetryAfter as exc:
                metrics.TELEGRAM_429.labels(name).inc()
                if counted:
                    metrics.TELEGRAM_REQUESTS.labels(name, "flood_wait").inc()
                if (
                    isinstance(method, GetUpdates)  # the polling loop has its own backoff
                    or attempt >= self._attempts
                    or exc.retry_after > self._max_wait
                ):
                    raise
                log.info("%s: 429, retrying in %ss", name, exc.retry_after)
                await asyncio.sleep(exc.retry_after)
                attempt += 1
            except Exception as exc:
                if counted:
                    metrics.TELEGRAM_REQUESTS.labels(name, type(exc).__name__).inc()
                raise
            else:
                if counted:
                    metrics.TELEGRAM_REQUESTS.labels(name, "ok").inc()
                return response
