"""The SMS-Man call budget shared by every replica through Redis (REDIS_URL).

Each replica keeps its own CallGate in front (lanes: a user's call before the poller's),
then takes two things from Redis before a call starts:
- a concurrency slot: a member of a sorted set scored by its lease's expiry; at most
  SMSMAN_MAX_CONCURRENCY live members. Released after the call. The lease is short
  (`SLOT_LEASE`) and renewed every third of it while the replica holds the slot, however
  long its call takes, so a killed replica's slots come back within seconds (with a lease
  as long as any call may last, SMSMAN_TIMEOUT + 10 s, a replica killed mid-poll froze its
  share of the group's slots for 25 s and the others' users' purchases queued behind).
- a start time: one key holds the earliest time the next call may start; a Lua script
  reserves max(now, that) and moves it on by 1/SMSMAN_MAX_RPS (with SHARED_SPACING_MARGIN),
  so starts over every replica are spaced like one process's (never more than max_rps in
  any second). A replica that wakes late for its start reserves again rather than call
  late (bot/shared_start.py).
Both scripts read Redis's clock, so the replicas' clocks do not matter.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import uuid
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.shared_start import late_tolerance, shared_spacing_us, start_on_time

from ._limiter import CallGate
from .errors import ProviderUnavailable

log = logging.getLogger(__name__)

_TAKE_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  return 1
end
return 0
"""

_RESERVE_START = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local nxt = tonumber(redis.call('GET', KEYS[1]) or '0')
local at = math.max(now, nxt)
redis.call('SET', KEYS[1], string.format('%d', at + tonumber(ARGV[1])), 'PX', 60000)
return at - now
"""

_RENEW_SLOTS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #ARGV - 1 do
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[#ARGV]), ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[#ARGV]))
return 1
"""

SLOT_RETRY = 0.02  # seconds between tries for a concurrency slot while all are taken
SLOT_LEASE = 5.0  # seconds a slot outlives its holder's last renewal (as bot/isolation.py)


class SharedCallGate:
    """Same interface as CallGate: `await acquire(urgent=...)`, then one `release()`."""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str,
        max_concurrency: int,
        max_rps: float,
        lease: float,
    ) -> None:
        self._redis = redis
        self._local = CallGate(max_concurrency, max_rps)
        self._slots_key = f"{prefix}:slots"
        self._next_key = f"{prefix}:next"
        self._max = max_concurrency
        self._interval_us = shared_spacing_us(max_rps)
        self._late = late_tolerance(self._interval_us)
        self._lease_ms = int(lease * 1000)
        self._take_slot = redis.register_script(_TAKE_SLOT)
        self._reserve_start = redis.register_script(_RESERVE_START)
        self._renew_slots = redis.register_script(_RENEW_SLOTS)
        self._held: list[str] = []
        self._releases: set[asyncio.Task[Any]] = set()
        self._renewer: asyncio.Task[None] | None = None

    @property
    def in_flight(self) -> int:
        return self._local.in_flight

    async def acquire(self, *, urgent: bool = True) -> None:
        await self._local.acquire(urgent=urgent)
        slot = uuid.uuid4().hex
        try:
            while True:
                args: list[int | str] = [self._max, self._lease_ms, slot]
                if await self._take_slot(keys=[self._slots_key], args=args):
                    break
                # Another replica's release is not signalled here: try again shortly.
                await asyncio.sleep(SLOT_RETRY * random.uniform(0.5, 1.5))
            try:
                await start_on_time(
                    lambda: self._reserve_start(keys=[self._next_key], args=[self._interval_us]),
                    self._late,
                )
            except BaseException:
                self._forget(slot)
                raise
        except RedisError as exc:
            self._local.release()
            log.warning("the shared SMS-Man budget (Redis) is unreachable: %s", type(exc).__name__)
            raise ProviderUnavailable(
                "budget", "the shared call budget (Redis) is unreachable"
            ) from None
        except BaseException:
            self._local.release()
            raise
        self._held.append(slot)
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(
                self._renew(), name="renew SMS-Man slots"
            )

    def release(self) -> None:
        self._local.release()
        if self._held:
            self._forget(self._held.pop())

    async def drain(self) -> None:
        """Wait until the slots given back have reached Redis (before closing it)."""
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None
        await asyncio.gather(*self._releases, return_exceptions=True)

    async def _renew(self) -> None:
        """Every third of a lease, extend every slot held here (one script call); ends
        when none is held. A failed renewal is retried at the next turn: the lease outlasts
        two misses."""
        while self._held:
            await asyncio.sleep(self._lease_ms / 3000)
            held = list(self._held)
            if not held:
                break
            try:
                await self._renew_slots(keys=[self._slots_key], args=[*held, self._lease_ms])
            except RedisError as exc:
                log.warning("could not renew the shared SMS-Man slots: %s", type(exc).__name__)

    def _forget(self, slot: str) -> None:
        """Give the slot back without waiting (its lease is the backstop if this fails)."""

        async def remove() -> None:
            try:
                await self._redis.zrem(self._slots_key, slot)
            except RedisError as exc:
                log.warning("could not release a shared SMS-Man slot: %s", type(exc).__name__)

        task = asyncio.get_running_loop().create_task(remove())
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)


def budget_prefix(smsman_token: str) -> str:
    """Keys shared by every replica using the same SMS-Man account (never the key itself)."""
    digest = hashlib.sha256(smsman_token.encode()).hexdigest()[:16]
    return f"smsman-bot:budget:{digest}"
