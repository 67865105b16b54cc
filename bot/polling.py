"""Long polling that does not fight: Telegram's 409 on getUpdates ends this process.

Telegram answers getUpdates with 409 Conflict when a webhook is set, and ends the older
of two concurrent long polls with 409 when a second process polls the same token. Both
sides then see 409s in turn, so who stops is decided by age: a process whose first poll
went out less than `grace` seconds ago is the newcomer and gives up at its first 409; an
established one polls again at once (which ends the newcomer's poll) and gives up only
if it gets no answer but 409 for `patience` seconds. With a webhook set, it gives up at
once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiogram.client.session.middlewares.base import (
    BaseRequestMiddleware,
    NextRequestMiddlewareType,
)
from aiogram.exceptions import TelegramConflictError
from aiogram.methods import GetUpdates, TelegramMethod
from aiogram.methods.base import TelegramType

if TYPE_CHECKING:
    from aiogram import Bot
    from aiogram.methods import Response

ANOTHER_POLLER = (
    "another process is polling this bot's token (Telegram answered getUpdates with 409):"
    " stopping; run one polling process per token, or WEBHOOK_URL for several replicas"
)
WEBHOOK_SET = (
    "a webhook is set for this bot, so Telegram refuses getUpdates (409): set WEBHOOK_URL"
    " to run in webhook mode, or delete the webhook (deleteWebhook) to poll"
)


class PollConflict(BaseRequestMiddleware):
    def __init__(
        self,
        on_conflict: Callable[[str], None],
        *,
        grace: float = 5.0,
        patience: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._on_conflict = on_conflict
        self._grace = grace
        self._patience = patience
        self._clock = clock
        self._polling_since: float | None = None
        self._conflict_since: float | None = None
        self.gave_up = False

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        if not isinstance(method, GetUpdates):
            return await make_request(bot, method)
        if self._polling_since is None:
            self._polling_since = self._clock()
        while True:
            try:
                response = await make_request(bot, method)  # type: ignore[arg-type]
            except TelegramConflictError as exc:
                if self._give_up(exc.message):
                    raise
                await asyncio.sleep(0.05)  # poll again at once: the newcomer's poll ends
                continue
            self._conflict_since = None
            return response

    def _give_up(self, description: str) -> bool:
        now = self._clock()
        if self._conflict_since is None:
            self._conflict_since = now
        if "webhook" in description.lower():
            reason = WEBHOOK_SET
        elif self._polling_since is None or now - self._polling_since < self._grace:
            reason = ANOTHER_POLLER  # we are the newcomer
        elif now - self._conflict_since >= self._patience:
            reason = ANOTHER_POLLER  # the other one does not give up either
        else:
            return False
        if not self.gave_up:
            self.gave_up = True
            self._on_conflict(reason)
        return True
