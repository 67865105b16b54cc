"""Telegram's budgets shared by every replica through Redis (REDIS_URL).

- Overall: one key holds the earliest time the next counted call may start; a Lua script
  reserves max(now, that, the end of a 429 pause) and moves it on by 1/TELEGRAM_MAX_RPS
  (with SHARED_SPACING_MARGIN), so starts over every replica are spaced like one process's:
  never more than TELEGRAM_MAX_RPS in a second, summed. A replica that wakes late for its
  start reserves again rather than send late (bot/shared_start.py). First come first served, as in
  one process: a user's answer waits only for the calls reserved before it (each replica
  lets at most delivery's TO_WIRE pushes wait at a time), never for a chat's second.
- Per chat (pushes only, never the answers to a user's own click): `SET key NX PX 1000`;
  a push finding the key set waits its PTTL (the delivery loop tries another chat).
- A 429 on one replica pauses every replica: a key with the pause as its expiry, which
  the reservation reads.
Both scripts read Redis's clock, so the replicas' clocks do not matter. If Redis cannot
be reached, this replica falls back to its own budgets (bot/delivery/pacing.py) and says
so: sends go on, paced per replica, rather than stop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.delivery.pacing import Pacer
from bot.shared_start import late_tolerance, shared_spacing_us, start_on_time

log = logging.getLogger(__name__)

_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local at = math.max(now, tonumber(redis.call('GET', KEYS[1]) or '0'))
local paused = redis.call('PTTL', KEYS[2])
if paused > 0 then at = math.max(at, now + paused * 1000) end
redis.call('SET', KEYS[1], string.format('%d', at + tonumber(ARGV[1])), 'PX', 60000)
return at - now
"""

_TAKE_CHAT = """
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', tonumber(ARGV[1])) then return 0 end
local left = redis.call('PTTL', KEYS[1])
if left < 1 then return 1 end
return left
"""

_PAUSE = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', tonumber(ARGV[1]))
end
return 1
"""

WARN_EVERY = 60.0  # seconds between two "Redis unreachable" warnings


class SharedPacer(Pacer):
    def __init__(
        self, redis: Redis, *, prefix: str, max_rps: float, per_chat_every: float = 1.0
    ) -> None:
        super().__init__(max_rps, per_chat_every)
        self._redis = redis
        self._prefix = prefix
        self._next_key = f"{prefix}:next"
        self._pause_key = f"{prefix}:pause"
        self._spacing_us = shared_spacing_us(max_rps)
        self._late = late_tolerance(self._spacing_us)
        self._chat_ms = int(per_chat_every * 1000)
        self._reserve = redis.register_script(_RESERVE)
        self._take_chat = redis.register_script(_TAKE_CHAT)
        self._pause = redis.register_script(_PAUSE)
        self._warned = -WARN_EVERY
        self._tasks: set[asyncio.Task[Any]] = set()

    async def acquire(self) -> None:
        while (wait := self.paused_for()) > 0:  # noqa: ASYNC110 - see Pacer.acquire
            await asyncio.sleep(wait)
        keys = [self._next_key, self._pause_key]
        try:
            await start_on_time(
                lambda: self._reserve(keys=keys, args=[self._spacing_us]), self._late
            )
        except RedisError as exc:
            self._unreachable(exc)
            await super().acquire()

    async def take_chat(self, chat_id: int) -> float:
        try:
            key = f"{self._prefix}:chat:{chat_id}"
            left_ms = int(await self._take_chat(keys=[key], args=[self._chat_ms]))
        except RedisError as exc:
            self._unreachable(exc)
            left_ms = 0
        if left_ms > 0:
            return left_ms / 1000
        return await super().take_chat(chat_id)  # this replica's own bucket too

    def pause(self, seconds: float) -> None:
        super().pause(seconds)

        async def tell_everyone() -> None:
            try:
                await self._pause(keys=[self._pause_key], args=[max(1, int(seconds * 1000))])
            except RedisError as exc:
                self._unreachable(exc)

        task = asyncio.get_running_loop().create_task(tell_everyone())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _unreachable(self, exc: RedisError) -> None:
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            log.warning(
                "the shared Telegram budget (Redis) is unreachable (%s): pacing this replica alone",
                type(exc).__name__,
            )


def telegram_prefix(bot_token: str) -> str:
    """Keys shared by every replica of one bot (never the token itself)."""
    digest = hashlib.sha256(bot_token.encode()).hexdigest()[:16]
    return f"smsman-bot:telegram:{digest}"
