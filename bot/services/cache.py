"""A value cached for a while: stale copies are served while one refresh runs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class Cached(Generic[T]):
    """Serve a fresh value, or a stale one while a single background refresh runs.

    Only a cold cache makes its caller wait; a failed refresh keeps the last good copy.
    """

    def __init__(self, loader: Callable[[], Awaitable[T]], ttl: float, name: str) -> None:
        self._loader = loader
        self._ttl = ttl
        self._name = name
        self._value: T | None = None
        self._loaded_at = 0.0
        self._refresh: asyncio.Task[T] | None = None

    @property
    def value(self) -> T | None:
        return self._value

    def is_fresh(self) -> bool:
        return self._value is not None and time.monotonic() - self._loaded_at < self._ttl

    async def get(self) -> T:
        if self._value is not None:
            if not self.is_fresh():
                self._start_refresh()
            return self._value
        return await asyncio.shield(self._start_refresh())

    def _start_refresh(self) -> asyncio.Task[T]:
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.create_task(self._load(), name=f"refresh {self._name}")
        return self._refresh

    async def _load(self) -> T:
        try:
            value = await self._loader()
        except Exception:
            if self._value is None:
                raise
            log.warning("refreshing %s failed; serving the last good copy", self._name)
            # Try again soon rather than after a whole ttl.
            self._loaded_at = time.monotonic() - self._ttl + min(30.0, self._ttl / 4)
            return self._value
        self._value = value
        self._loaded_at = time.monotonic()
        return value

    async def close(self) -> None:
        if self._refresh is not None and not self._refresh.done():
            self._refresh.cancel()
            try:
                await self._refresh
            except BaseException:  # noqa: S110 - cancelled or failed, either way gone
                pass
