"""One update of a chat at a time over every replica (REDIS_URL), without a dead replica's
lock holding that chat up for a minute.

aiogram's RedisEventIsolation takes a redis-py Lock per chat with a 60 s timeout: a replica
SIGKILLed while handling an update leaves the lock behind, and every replica then holds the
user's next updates back until it expires. Here the lock lives LOCK_TIMEOUT seconds (a few)
and its holder extends it every timeout / 3 while the handler runs, so a long handler keeps
it and a killed holder's lock frees within LOCK_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager, suppress

from aiogram.fsm.storage.base import BaseEventIsolation, KeyBuilder, StorageKey
from redis.asyncio import Redis
from redis.asyncio.lock import Lock
from redis.exceptions import LockError, RedisError

log = logging.getLogger(__name__)

LOCK_TIMEOUT = 5.0  # seconds a lock outlives its holder's last renewal
POLL = 0.05  # seconds between two tries for a lock another update holds


class RenewedRedisIsolation(BaseEventIsolation):
    def __init__(
        self,
        redis: Redis,
        key_builder: KeyBuilder,
        *,
        timeout: float | None = None,
        poll: float = POLL,
    ) -> None:
        self._redis = redis
        self._key_builder = key_builder
        self._timeout = LOCK_TIMEOUT if timeout is None else timeout
        self._poll = poll

    @asynccontextmanager
    async def lock(self, key: StorageKey) -> AsyncGenerator[None, None]:
        # thread_local=False: the token is read by the renewing task too (same thread anyway).
        lock = Lock(
            self._redis,
            self._key_builder.build(key, "lock"),
            timeout=self._timeout,
            sleep=self._poll,
            thread_local=False,
        )
        await lock.acquire()  # waits for the update before it (or its holder's timeout)
        renewing = asyncio.create_task(self._renew(lock))
        try:
            yield None
        finally:
            renewing.cancel()
            with suppress(asyncio.CancelledError):
                await renewing
            await self._release(lock)

    async def _renew(self, lock: Lock) -> None:
        """Push the expiry back to a full timeout, three times per timeout."""
        while True:
            await asyncio.sleep(self._timeout / 3)
            try:
                await lock.reacquire()
            except LockError:
                # Stalled past the timeout and another update of this chat took over: the
                # handler runs on (it cannot be undone), but say so.
                log.warning("a chat's update lock ran out while its handler was running")
                return
            except RedisError as exc:  # try again at the next turn; the expiry still stands
                log.warning("could not extend a chat's update lock: %s", type(exc).__name__)

    @staticmethod
    async def _release(lock: Lock) -> None:
        try:
            await lock.release()
        except LockError:
            pass  # already run out (and said so by _renew): nothing of ours to give back
        except RedisError as exc:  # the timeout frees it
            log.warning("could not release a chat's update lock: %s", type(exc).__name__)

    async def close(self) -> None:
        pass  # the Redis client belongs to the app, which closes it
