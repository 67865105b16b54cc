"""One supervisor task: when to poll which order, deadlines, backoff, the circuit breaker."""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import time
from collections.abc import Callable

from bot.services.orders import OrderService, PollOutcome
from bot.smsman.errors import ProviderUnavailable
from storage.db import Database
from storage.models import Order, OrderStatus

log = logging.getLogger(__name__)

COUNTDOWN_EVERY = 60.0
MAX_BACKOFF = 60.0
BREAKER_THRESHOLD = 5  # provider failures in a row that open the breaker
BREAKER_MAX_PAUSE = 30.0


class CircuitBreaker:
    """Pauses polling while SMS-Man is down, then lets one probe through."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._failures = 0
        self._open_until = 0.0
        self._pause = 2.0

    @property
    def is_open(self) -> bool:
        return self._clock() < self._open_until

    @property
    def reopens_at(self) -> float:
        return self._open_until

    def success(self) -> None:
        if self._failures >= BREAKER_THRESHOLD:
            log.info("SMS-Man answers again: polling resumes")
        self._failures = 0
        self._pause = 2.0

    def failure(self) -> None:
        self._failures += 1
        if self._failures >= BREAKER_THRESHOLD:
            self._open_until = self._clock() + self._pause
            log.warning("SMS-Man looks down: polling paused for %.0fs", self._pause)
            self._pause = min(self._pause * 2, BREAKER_MAX_PAUSE)


class Poller:
    def __init__(
        self,
        *,
        db: Database,
        orders: OrderService,
        interval: float,
        concurrency: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._orders = orders
        self._interval = interval
        self._clock = clock
        self._slots = asyncio.Semaphore(concurrency)
        self._queue: list[tuple[float, int]] = []
        self._due: dict[int, float] = {}  # the live entry of each order in the heap
        self._running: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._failures: dict[int, int] = {}
        self._card_at: dict[int, float] = {}
        self._wake = asyncio.Event()
        self._main: asyncio.Task[None] | None = None
        self._breaker = CircuitBreaker(clock)
        self._last_cap_warning = 0.0
        orders.on_scheduled = self.schedule

    # -- scheduling ----------------------------------------------------------------------

    def schedule(self, order_id: int, at: float) -> None:
        """(Re)schedule an order; the earlier of two requests wins."""
        current = self._due.get(order_id)
        if current is not None and current <= at:
            return
        self._due[order_id] = at
        heapq.heappush(self._queue, (at, order_id))
        self._wake.set()

    def _next_poll(self, order: Order, now: float) -> float:
        deadline = order.expires_at if order.expires_at is not None else now + self._interval
        if order.status is OrderStatus.RECEIVED and not order.want_more:
            return deadline  # nothing to poll; wake at the deadline to close it
        return min(now + self._interval, deadline)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Reconcile every open order at once, then run the loop."""
        await self._orders.recover()
        now = self._clock()
        for order in await self._db.orders.list_open():
            if order.status in (OrderStatus.WAITING, OrderStatus.RECEIVED):
                self.schedule(order.id, now)
        self._main = asyncio.create_task(self._loop(), name="poller")

    async def stop(self, grace: float = 5.0) -> None:
        if self._main is not None:
            self._main.cancel()
            try:
                await self._main
            except asyncio.CancelledError:
                pass
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    # -- the loop ------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop never dies
                log.exception("poller tick failed")
                await asyncio.sleep(1.0)

    async def _tick(self) -> None:
        now = self._clock()
        if self._breaker.is_open:
            await self._sleep(self._breaker.reopens_at - now)
            return
        if not self._queue:
            await self._sleep(None)
            return
        at, order_id = self._queue[0]
        if self._due.get(order_id) != at:
            heapq.heappop(self._queue)  # superseded by an earlier reschedule
            return
        if at > now:
            await self._sleep(at - now)
            return
        if order_id in self._running:
            # Never poll one order twice at once: look again once this poll ends.
            heapq.heappop(self._queue)
            del self._due[order_id]
            return
        if self._slots.locked() and now - at > self._interval:
            self._warn_cap(now - at)
        await self._slots.acquire()  # earliest-due first: the heap hands them out in order
        heapq.heappop(self._queue)
        del self._due[order_id]
        self._running.add(order_id)
        task = asyncio.create_task(self._run(order_id), name=f"poll {order_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sleep(self, seconds: float | None) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(
                self._wake.wait(), timeout=None if seconds is None else max(0.0, seconds)
            )
        except TimeoutError:
            pass

    def _warn_cap(self, lag: float) -> None:
        now = time.monotonic()
        if now - self._last_cap_warning > 30:
            self._last_cap_warning = now
            log.warning("poll capacity is the limit: orders polled %.1fs late", lag)

    async def _run(self, order_id: int) -> None:
        try:
            await self._handle(order_id)
        except ProviderUnavailable:
            self._breaker.failure()
            self._back_off(order_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("order %s: poll failed; trying again later", order_id)
            self._back_off(order_id)
        finally:
            self._slots.release()
            self._running.discard(order_id)

    def _back_off(self, order_id: int) -> None:
        failures = self._failures.get(order_id, 0) + 1
        self._failures[order_id] = failures
        delay = min(self._interval * 2 ** min(failures, 6), MAX_BACKOFF)
        self.schedule(order_id, self._clock() + delay * random.uniform(0.8, 1.2))

    async def _handle(self, order_id: int) -> None:
        order = await self._db.orders.get(order_id)
        if order is None or not order.is_open or order.status is OrderStatus.PURCHASING:
            self._forget(order_id)
            return
        now = self._clock()
        if order.expires_at is not None and now >= order.expires_at:
            await self._orders.expire_due(order_id)
            self._breaker.success()
        elif order.status is OrderStatus.WAITING or order.want_more:
            outcome = await self._orders.poll(order_id)
            self._breaker.success()
            if outcome is PollOutcome.WAITING:
                await self._countdown(order_id, now)
        self._failures.pop(order_id, None)
        fresh = await self._db.orders.get(order_id)
        if fresh is None or not fresh.is_open:
            self._forget(order_id)
            return
        self.schedule(order_id, self._next_poll(fresh, self._clock()))

    async def _countdown(self, order_id: int, now: float) -> None:
        """The card's time left, edited at most once a minute (and only if it changed)."""
        if now - self._card_at.get(order_id, now) >= COUNTDOWN_EVERY:
            await self._orders.refresh_card(order_id)
            self._card_at[order_id] = now
        self._card_at.setdefault(order_id, now)

    def _forget(self, order_id: int) -> None:
        self._failures.pop(order_id, None)
        self._card_at.pop(order_id, None)

    @property
    def scheduled(self) -> int:
        return len(self._due)
