"""Telegram's budgets: about 30 messages a second per bot, one a second per chat.

- Overall: one aiolimiter bucket of capacity 1 draining TELEGRAM_MAX_RPS a second, so no
  second ever holds more than TELEGRAM_MAX_RPS + 1 sends (a bucket of capacity N would let
  2N through in a second after a quiet spell). Every counted call takes from it right
  before it goes on the wire (the session middleware), delivery's pushes and the
  handlers' answers alike, first come first served; the sender keeps its priorities by
  letting only a few chosen pushes wait for it at a time.
- Per chat (pushes only): one bucket of capacity 1 draining one a second per chat.
- A 429 pauses everything counted for its retry_after.

With REDIS_URL, both budgets are shared by every replica (bot/delivery/shared_pacing.py).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiogram.client.session.middlewares.base import (
    BaseRequestMiddleware,
    NextRequestMiddlewareType,
)
from aiogram.exceptions import TelegramRetryAfter
from aiogram.methods import GetUpdates, TelegramMethod
from aiogram.methods.base import TelegramType
from aiolimiter import AsyncLimiter

from bot import metrics

if TYPE_CHECKING:
    from aiogram import Bot
    from aiogram.methods import Response

log = logging.getLogger(__name__)

# The Bot API methods Telegram's message limits count.
COUNTED = frozenset(
    {
        "SendMessage",
        "EditMessageText",
        "EditMessageReplyMarkup",
        "EditMessageCaption",
        "CopyMessage",
        "ForwardMessage",
        "SendPhoto",
        "SendDocument",
        "SendInvoice",
    }
)


class Push:
    """Set by delivery around one push: the session tells it when its first counted call
    got its unit of budget (the sender may then hand the wire the next push), and a 429
    goes back to the sender at once (it re-queues the push; waiting in the session would
    hold the chat).

    `keep`, with replicas: re-extends the push's outbox lease, False if another replica
    holds the row now. The session calls it when the push waited for its budget longer
    than `recheck_after` since the lease was last extended (a replica stalled past its
    lease while another took the row and pushed it), and drops the push then."""

    __slots__ = ("calls", "keep", "kept_at", "on_budget", "recheck_after")

    def __init__(self, on_budget: Callable[[], None]) -> None:
        self.calls = 0
        self.on_budget = on_budget
        self.keep: Callable[[], Awaitable[bool]] | None = None
        self.kept_at = 0.0  # time.monotonic() of the last extension
        self.recheck_after = math.inf

    async def still_ours(self) -> None:
        """Right before the wire: raise PushLost if the lease was lost meanwhile."""
        if self.keep is None or time.monotonic() - self.kept_at <= self.recheck_after:
            return
        if not await self.keep():
            raise PushLost
        self.kept_at = time.monotonic()


class PushLost(Exception):
    """The push's outbox row is another replica's now: it pushes it, this one must not."""


current_push: contextvars.ContextVar[Push | None] = contextvars.ContextVar(
    "current_push", default=None
)


class Pacer:
    def __init__(self, max_rps: float, per_chat_every: float = 1.0) -> None:
        self.max_rps = max_rps
        self._overall = AsyncLimiter(1, 1.0 / max_rps)
        self._per_chat_every = per_chat_every
        self._chats: dict[int, AsyncLimiter] = {}
        self._paused_until = 0.0  # time.monotonic()
        self.pauses = 0  # 429s seen (observability, bench)

    def pause(self, seconds: float) -> None:
        """Telegram said 429: nothing counted goes out for `seconds`."""
        self.pauses += 1
        until = time.monotonic() + seconds
        if until > self._paused_until:
            log.warning("Telegram flood control: all sends paused for %ss", seconds)
            self._paused_until = until

    def paused_for(self) -> float:
        return max(0.0, self._paused_until - time.monotonic())

    async def acquire(self) -> None:
        """One unit of the overall budget (after any 429 pause)."""
        # A loop, not an Event: another 429 may push the end of the pause further out.
        while (wait := self.paused_for()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(wait)
        await self._overall.acquire()

    def chat_ready(self, chat_id: int) -> bool:
        limiter = self._chats.get(chat_id)
        return limiter is None or limiter.has_capacity()

    async def take_chat(self, chat_id: int) -> float:
        """Count a push to the chat. Call only right after chat_ready said yes: acquire then
        returns without yielding, so two picks can never take the same chat's second.
        Returns 0, or (shared budget) the seconds until another replica's push to the chat
        leaves it free: then nothing was taken."""
        limiter = self._chats.get(chat_id)
        if limiter is None:
            if len(self._chats) > 10_000:  # forget chats whose bucket has drained
                self._chats = {c: lim for c, lim in self._chats.items() if not lim.has_capacity()}
            limiter = self._chats[chat_id] = AsyncLimiter(1, self._per_chat_every)
        await limiter.acquire()
        return 0.0


class Paced(BaseRequestMiddleware):
    """Session middleware: counted calls take the overall budget (unless prepaid), 429s
    pause everyone; the handlers' answers wait a short 429 out and try again (bounded)."""

    def __init__(self, pacer: Pacer, *, attempts: int = 3, max_wait: float = 10.0) -> None:
        self._pacer = pacer
        self._attempts = attempts
        self._max_wait = max_wait

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        name = type(method).__name__
        counted = name in COUNTED
        polls = isinstance(method, GetUpdates)  # long polls are not sends
        own = current_push.get()
        attempt = 1
        while True:
            if counted:
                await self._pacer.acquire()
                if own is not None:
                    await own.still_ours()
                    own.calls += 1
                    if own.calls == 1:
                        own.on_budget()
            try:
                response = await make_request(bot, method)
            except TelegramRetryAfter as exc:
                metrics.TELEGRAM_429.labels(name).inc()
                if not polls:
                    metrics.TELEGRAM_REQUESTS.labels(name, "flood_wait").inc()
                if counted:
                    self._pacer.pause(exc.retry_after)
                if (
                    own is not None
                    or polls  # the polling loop has its own backoff
                    or attempt >= self._attempts
                    or exc.retry_after > self._max_wait
                ):
                    raise
                log.info("%s: 429, retrying in %ss", type(method).__name__, exc.retry_after)
                if not counted:  # counted ones wait in acquire(), behind the pause
                    await asyncio.sleep(exc.retry_after)
                attempt += 1
            except Exception as exc:
                if not polls:
                    metrics.TELEGRAM_REQUESTS.labels(name, type(exc).__name__).inc()
                raise
            else:
                if not polls:
                    metrics.TELEGRAM_REQUESTS.labels(name, "ok").inc()
                return response
