"""One gate for every SMS-Man call: a concurrency cap and a start-rate cap together.

A call may start when fewer than `max_concurrency` calls are in flight AND at least
`1 / max_rps` seconds passed since the previous start (strict spacing: never more than
`max_rps` starts in any one-second window, no bursts). Waiters are served first come, first
served within two lanes; the `urgent` lane (purchases, cancels, catalogue reads a user waits
for) goes before the background lane (the poller's get-sms), so a queue of hundreds of polls
never delays a purchase by more than one spacing interval.

Cost per call is O(1): a deque append, at most one timer, one future. Waiters that were
cancelled stay in their deque and are dropped when they reach its head.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

SPACING_MARGIN = 1.02


class Gate(Protocol):
    """What the client needs of a call budget (CallGate here, SharedCallGate via Redis)."""

    async def acquire(self, *, urgent: bool = True) -> None: ...

    def release(self) -> None: ...


class CallGate:
    def __init__(self, max_concurrency: int, max_rps: float) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if max_rps <= 0:
            raise ValueError("max_rps must be positive")
        self._max = max_concurrency
        # 2% wider than 1/max_rps: SMS-Man counts arrivals, and network jitter of up to
        # 20 ms (at 50/s) must not squeeze max_rps + 1 calls into one of its seconds.
        self._interval = SPACING_MARGIN / max_rps
        self._in_flight = 0
        self._next_start = float("-inf")  # loop time the next start is allowed at
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._background: deque[asyncio.Future[None]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def acquire(self, *, urgent: bool = True) -> None:
        """Wait for a slot; pair every successful acquire with one `release()`."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if (
            not self._urgent
            and not self._background
            and self._in_flight < self._max
            and now >= self._next_start
        ):
            self._grant(now)
            return
        waiter: asyncio.Future[None] = loop.create_future()
        (self._urgent if urgent else self._background).append(waiter)
        self._dispatch()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted, but our task was cancelled before it resumed
            raise

    def release(self) -> None:
        self._in_flight -= 1
        self._dispatch()

    def _grant(self, now: float) -> None:
        self._in_flight += 1
        self._next_start = max(now, self._next_start) + self._interval

    def _next_queue(self) -> deque[asyncio.Future[None]] | None:
        """The lane whose head waiter goes next, dropping cancelled waiters on the way."""
        for queue in (self._urgent, self._background):
            while queue and queue[0].done():
                queue.popleft()
            if queue:
                return queue
        return None

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _dispatch(self) -> None:
        while self._in_flight < self._max:
            queue = self._next_queue()
            if queue is None:
                return
            loop = asyncio.get_running_loop()
            now = loop.time()
            if now < self._next_start:
                if self._timer is None:
                    self._timer = loop.call_at(self._next_start, self._on_timer)
                return
            waiter = queue.popleft()
            self._grant(now)
            waiter.set_result(None)
        # Full: the next release() dispatches again.
