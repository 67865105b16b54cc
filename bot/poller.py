"""One supervisor task: when to poll which order, deadlines, backoff, the circuit breaker.

Every open order has one entry here, keyed in a heap by the time it is next due. The
supervisor takes a slot (at most `concurrency` steps at once), then the earliest-due entry
that is not already being worked on, and runs one `OrderService.step` for it in its own
task. Nothing is read from the database to decide what is due: the database is read once
per step, by the step, under the order's lock.

- Polls keep a fixed rate: the next poll is due `interval` after the previous one was due
  (not after it ended), so N waiting orders cost N / interval get-sms per second. When the
  SMS-Man cap (SMSMAN_MAX_CONCURRENCY, SMSMAN_MAX_RPS, both enforced by the client's
  CallGate) binds, steps start late, and a warning says so (at most once a minute). Which
  due order goes next then is the `policy`'s choice (bot/schedule.py: where a code is most
  likely waiting, within guarantees); without one, the earliest due, so every order's
  latency grows alike.
- An order past its deadline is rejected (no code) or closed (a code came) by its step.
- ProviderUnavailable backs that order off (exponential, capped, never past its deadline);
  five in a row across orders open the circuit breaker, which pauses every step, then lets
  one probe through and resumes on its success (or pauses twice as long, capped). Only an
  outage counts: a business error SMS-Man answered about one order (an `SmsManError` other
  than `ProviderUnavailable`) backs that order off and shows SMS-Man is up.
- Every way out of the probe's step settles the breaker (an exception that is not SMS-Man's
  lets the next step probe), and a probe that has not reported after `probe_timeout`
  seconds is given up: the next step probes. Polling can pause, never stop.
- Any other exception is logged and the order is retried after a backoff: the loop goes on.
- Every `sweep_every` seconds, purchases stuck in `purchasing` (a write failed between the
  hold and the number being stored) are failed and their holds released (once, in SQL).
- The card's countdown is handed to delivery at most once a minute per order, and only
  when the minutes shown would change; delivery edits it if budget is to spare.
- Nothing here waits on Telegram: a step's slot and the order's lock cover SMS-Man calls
  and database transitions; what the user must see is queued (bot/delivery).
- With `leases` (the bot always has them; storage/leases.py), several replicas share the
  open orders: this one polls only the orders it holds a lease on. Every third of a lease
  (a third of the interval) one round renews them all in one statement, takes free ones
  up to a fair share (a dead replica's, after its leases ran out: within about 1.3
  intervals), forgets those it lost, and gives back what is above its share (it started
  alone, others came since). An order bought here is held from the start; a user's
  "another code" taken by another replica is seen here at the next round (want_more).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from bot import metrics
from bot.leases_loop import keep_leases
from bot.schedule import PollPolicy
from bot.services.leases import OrderLeases
from bot.services.orders import OrderService, PollOutcome, StepResult
from bot.smsman.errors import ProviderUnavailable, SmsManError
from storage.models import Order, OrderStatus

log = logging.getLogger(__name__)

COUNTDOWN_EVERY = 60.0  # seconds between two countdown edits of one card, at least
MAX_BACKOFF = 60.0  # seconds: the longest an order waits after a failure
BREAKER_THRESHOLD = 5  # provider failures in a row that open the breaker
BREAKER_FIRST_PAUSE = 2.0
BREAKER_MAX_PAUSE = 30.0
PROBE_TIMEOUT = 120.0  # seconds a probe may run before the breaker lets another one through
SWEEP_EVERY = 60.0  # seconds between two sweeps of stuck purchases
CAP_WARNING_EVERY = 60.0
STOP_GRACE = 5.0


def minutes_shown(seconds_left: float) -> int:
    """What the card's "time left" shows (texts.minutes_left rounds the same way)."""
    return max(0, int(seconds_left + 59) // 60)


class Breaker(Enum):
    CLOSED = "closed"
    OPEN = "open"
    PROBING = "probing"


class CircuitBreaker:
    """Pauses polling while SMS-Man is down, then lets one probe through."""

    def __init__(self, clock: Callable[[], float], probe_timeout: float = PROBE_TIMEOUT) -> None:
        self._clock = clock
        self._probe_timeout = probe_timeout
        self._failures = 0
        self._state = Breaker.CLOSED
        self._open_until = 0.0
        self._probe_until = 0.0  # a probe not settled by then is given up
        self._pause = BREAKER_FIRST_PAUSE
        self.opened = 0  # times it opened (observability, tests)

    @property
    def state(self) -> Breaker:
        return self._state

    def allow(self) -> bool:
        """May a step start now? While open, the first call after the pause is the probe;
        while probing, only once the probe overran `probe_timeout` (it is given up)."""
        if self._state is Breaker.CLOSED:
            return True
        now = self._clock()
        if self._state is Breaker.OPEN and now >= self._open_until:
            log.info("probing SMS-Man")
        elif self._state is Breaker.PROBING and now >= self._probe_until:
            log.warning(
                "the SMS-Man probe did not report in %.0fs: probing again", self._probe_timeout
            )
        else:
            return False
        self._state = Breaker.PROBING
        self._probe_until = now + self._probe_timeout
        return True

    def wait_time(self) -> float:
        """Seconds until `allow` may say yes (sooner if the probe reports)."""
        if self._state is Breaker.OPEN:
            return max(0.0, self._open_until - self._clock())
        if self._state is Breaker.PROBING:
            return max(0.0, self._probe_until - self._clock())
        return 0.0

    def success(self) -> None:
        if self._state is not Breaker.CLOSED:
            log.warning("SMS-Man answers again: polling resumes")
        self._state = Breaker.CLOSED
        self._failures = 0
        self._pause = BREAKER_FIRST_PAUSE

    def failure(self) -> None:
        if self._state is Breaker.OPEN:
            return  # a step that started before the breaker opened
        self._failures += 1
        if self._state is Breaker.PROBING or self._failures >= BREAKER_THRESHOLD:
            self._state = Breaker.OPEN
            self._open_until = self._clock() + self._pause
            self.opened += 1
            log.warning("SMS-Man looks down: polling paused for %.0fs", self._pause)
            self._pause = min(self._pause * 2, BREAKER_MAX_PAUSE)

    def no_answer(self) -> None:
        """A step that did not ask SMS-Man: if it was the probe, the next step probes."""
        if self._state is Breaker.PROBING:
            self._state = Breaker.OPEN
            self._open_until = self._clock()


@dataclass(slots=True)
class _Entry:
    order_id: int
    due: float
    running: bool = False
    wake_at: float = math.inf  # a schedule() that came while the step ran
    failures: int = 0
    card_at: float = -math.inf  # the last countdown edit
    card_minutes: int | None = None  # the minutes the card showed then
    deadline: float = math.inf  # the order's expires_at, once a step has read it
    routine: bool = False  # due for a fixed-rate poll (the policy may reorder those)
    since: int = 0  # the lease round it was added in


class Poller:
    def __init__(
        self,
        *,
        orders: OrderService,
        interval: float,
        concurrency: int,
        clock: Callable[[], float] = time.time,
        max_rps: float | None = None,
        probe_timeout: float = PROBE_TIMEOUT,
        sweep_every: float = SWEEP_EVERY,
        policy: PollPolicy | None = None,
        leases: OrderLeases | None = None,
    ) -> None:
        self._orders = orders
        self._leases = leases
        self._lease_round = 0
        self._lease_keeper: asyncio.Task[None] | None = None
        self._sweep_every = sweep_every
        self._policy = policy
        self._ready: dict[int, _Entry] = {}  # due, waiting for the policy's choice
        self._interval = interval
        self._concurrency = concurrency
        self._max_rps = max_rps
        self.clock = clock  # tests may swap it (the countdown)
        self._slots = asyncio.Semaphore(concurrency)
        self._entries: dict[int, _Entry] = {}
        self._heap: list[tuple[float, int, int]] = []  # (due, sequence, order id)
        self._sequence = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._sweep_wake = asyncio.Event()
        self._main: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._next_sweep = math.inf
        self.breaker = CircuitBreaker(lambda: self.clock(), probe_timeout)
        self._last_cap_warning = -math.inf
        self.steps = 0  # steps run (observability, bench)
        orders.on_scheduled = self.schedule

    # -- scheduling ----------------------------------------------------------------------

    def schedule(self, order_id: int, at: float, *, new: bool = False) -> None:
        """Look at the order at `at` (or earlier if it is due earlier already). With
        leases, an order not held here is left alone unless `new` (bought here: held)."""
        entry = self._entries.get(order_id)
        if entry is None and self._leases is not None and not new:
            return  # another replica's (it sees the change at its next round), or nobody's
        new = entry is None
        if entry is None:
            entry = self._entries[order_id] = _Entry(order_id, math.inf)
            entry.since = self._lease_round
        if entry.running:
            entry.wake_at = min(entry.wake_at, at)
            return
        if at < entry.due:
            entry.routine = new  # a new order's first poll; anything else asked is not
            self._push(entry, at)

    def _push(self, entry: _Entry, at: float) -> None:
        entry.due = at
        self._sequence += 1
        heapq.heappush(self._heap, (at, self._sequence, entry.order_id))
        self._wake.set()

    def wake(self) -> None:
        """Re-read the clock now (tests that move it)."""
        self._wake.set()
        self._sweep_wake.set()

    @property
    def running(self) -> bool:
        return self._main is not None and not self._main.done()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Reconcile every open order at once (poll it, reject it if its deadline passed),
        then run the supervisor. Codes stored but not delivered are delivery's (its start).
        With leases: the orders free to take, up to the fair share."""
        if self._leases is None:
            still_open = await self._orders.recover()
        else:
            # Purchases left `purchasing` are failed now only if no other replica is alive
            # (one may be buying them); otherwise the sweep fails the stuck ones.
            if await self._leases.alone():
                await self._orders.recover()
            still_open = (await self._leases.round()).claimed
        self._adopt(still_open, self.clock())
        if still_open:
            log.info("reconciling %d open orders", len(still_open))
        if self._leases is not None:
            self._lease_keeper = asyncio.create_task(self._keep_leases(), name="order leases")
        now = self.clock()
        self._main = asyncio.create_task(self._supervise(), name="poller")
        self._next_sweep = now + self._sweep_every
        self._sweeper = asyncio.create_task(self._sweep(), name="purchase sweep")

    def _adopt(self, orders: list[Order], now: float) -> None:
        """Poll these open orders now (at start, or just claimed)."""
        for order in orders:
            self.schedule(order.id, now, new=True)
            waiting = order.status is OrderStatus.WAITING
            self._entries[order.id].routine = waiting
            if waiting and self._policy is not None:  # when it was last polled: unknown
                self._policy.track(order.id, **_about(order), unseen_since=now)

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop taking new steps; let running ones finish for `grace` seconds, then cancel.
        The leases are kept (the app gives them up once delivery stopped too)."""
        for task in (self._lease_keeper, self._sweeper):
            if task is not None:
                task.cancel()
                await asyncio.wait({task}, timeout=grace)
        self._lease_keeper = self._sweeper = None
        main, self._main = self._main, None
        if main is not None:
            main.cancel()
            _done, alive = await asyncio.wait({main}, timeout=grace)
            if alive:
                log.error("the poller supervisor ignored its cancellation")
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    # -- the supervisor ------------------------------------------------------------------

    async def _supervise(self) -> None:
        while True:
            try:
                await self._slots.acquire()
                try:
                    self._dispatch(*await self._next_due())  # the step releases the slot
                except BaseException:
                    self._slots.release()
                    raise
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop never dies
                log.exception("poller supervisor failed; going on")
                await asyncio.sleep(1.0)

    async def _sweep(self) -> None:
        """Fail purchases stuck in `purchasing`, every `sweep_every` seconds (by `clock`)."""
        while True:
            self._sweep_wake.clear()
            wait = self._next_sweep - self.clock()
            if wait <= 0:
                try:
                    await self._orders.fail_stale_purchases()
                except Exception:  # the sweep never dies: the next one tries again
                    log.exception("sweeping stuck purchases failed; going on")
                self._next_sweep = self.clock() + self._sweep_every
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._sweep_wake.wait()

    # -- leases --------------------------------------------------------------------------

    async def _keep_leases(self) -> None:
        assert self._leases is not None
        await keep_leases(self._leases.renew_every, self._renew, "order", log)

    async def _renew(self) -> None:
        assert self._leases is not None
        self._lease_round += 1
        started = self._lease_round
        result = await self._leases.round()
        now = self.clock()
        for order_id, entry in list(self._entries.items()):
            if order_id in result.held:
                if result.held[order_id] and not entry.running and entry.due > now + self._interval:
                    entry.routine = False  # "another code" asked on another replica
                    self._push(entry, now)
            elif not entry.running and entry.since < started:
                self._drop(order_id)  # lost (its lease ran out and another took it), or ended
        for order_id in result.held.keys() - self._entries.keys():
            self.schedule(order_id, now, new=True)  # held but not known here (a release failed)
        self._adopt(result.claimed, now)
        held = len(result.held) + len(result.claimed)
        if held > result.share + max(2, result.share // 10):  # some slack: no ping-pong
            await self._give_back(held - result.share)

    async def _give_back(self, count: int) -> None:
        """Release up to `count` orders not being polled right now, so another replica
        under its share takes them at its next round (and polls them at once). Only those
        due within half an interval, soonest first: polled here at least half an interval
        before the other replica polls them, never twice in one round."""
        assert self._leases is not None
        soon = self.clock() + self._interval / 2
        idle = sorted(
            (e for e in self._entries.values() if not e.running and e.due <= soon),
            key=lambda e: e.due,
        )
        chosen = [entry.order_id for entry in idle[:count]]
        if not chosen:
            return
        for order_id in chosen:
            self._drop(order_id)  # forgotten here before the lease is free: never two pollers
        await self._leases.release(chosen)
        log.info("gave %d orders back for other replicas to poll", len(chosen))

    def _drop(self, order_id: int) -> None:
        self._entries.pop(order_id, None)
        self._ready.pop(order_id, None)
        if self._policy is not None:
            self._policy.forget(order_id)

    async def _next_due(self) -> tuple[_Entry, bool]:
        """Wait until an entry is due and the breaker lets it through: the earliest due,
        or with a policy, the one it chooses among those due; the entry, and whether its
        step is the breaker's probe."""
        while True:
            self._wake.clear()
            entry = self._peek()
            now = self.clock()
            if self._policy is not None:
                while entry is not None and entry.due <= now:
                    heapq.heappop(self._heap)
                    self._ready[entry.order_id] = entry
                    entry = self._peek()
            if self._ready or (entry is not None and entry.due <= now):
                if self.breaker.allow():
                    probe = self.breaker.state is Breaker.PROBING
                    if self._policy is not None:
                        return self._ready.pop(self._policy.choose(self._ready, now)), probe
                    assert entry is not None
                    heapq.heappop(self._heap)
                    return entry, probe
                timeout: float | None = self.breaker.wait_time()
            else:
                timeout = None if entry is None else entry.due - now
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that
            # lands as the wait ends, and the supervisor would outlive stop().
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    def _peek(self) -> _Entry | None:
        """The live entry at the head of the heap (stale heap items are dropped)."""
        while self._heap:
            due, _seq, order_id = self._heap[0]
            entry = self._entries.get(order_id)
            if entry is not None and not entry.running and entry.due == due:
                return entry
            heapq.heappop(self._heap)
        return None

    def _dispatch(self, entry: _Entry, probe: bool) -> None:
        due = entry.due
        lag = self.clock() - due
        metrics.POLL_LAG.observe(max(0.0, lag))
        if lag > max(1.0, self._interval) and self.breaker.state is Breaker.CLOSED:
            self._warn_cap(lag)
        entry.running = True
        entry.due = math.inf
        self.steps += 1
        if self._policy is not None:
            self._policy.polled(entry.order_id, self.clock())
        task = asyncio.create_task(self._run(entry, due, probe), name=f"poll {entry.order_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _warn_cap(self, lag: float) -> None:
        now = time.monotonic()
        if now - self._last_cap_warning < CAP_WARNING_EVERY:
            return
        self._last_cap_warning = now
        log.warning(
            "SMS-Man call cap reached: polls start %.1fs late (%d orders, interval %ss,"
            " SMSMAN_MAX_CONCURRENCY=%d, SMSMAN_MAX_RPS=%s); %s",
            lag,
            len(self._entries),
            self._interval,
            self._concurrency,
            self._max_rps if self._max_rps is not None else "?",
            "the learned schedule picks who goes first"
            if self._policy is not None
            else "earliest-due go first",
        )

    # -- one step ------------------------------------------------------------------------

    async def _run(self, entry: _Entry, due: float, probe: bool) -> None:
        next_at: float | None
        entry.routine = False  # _after says whether the next look is a routine poll
        settled = False  # the breaker heard how this step went
        try:
            try:
                result = await self._orders.step(entry.order_id)
            except ProviderUnavailable as exc:
                self.breaker.failure()
                settled = True
                log.info("order %s: SMS-Man unavailable (%s); backing off", entry.order_id, exc)
                next_at = self._back_off(entry)
            except SmsManError as exc:
                # A business answer about this one order: SMS-Man is up. It never pauses
                # everyone's polling; only this order backs off.
                self.breaker.success()
                settled = True
                log.warning(
                    "order %s: SMS-Man error %s: %s; backing off",
                    entry.order_id,
                    exc.code,
                    exc.message,
                )
                next_at = self._back_off(entry)
            except Exception:
                log.exception("order %s: step failed; trying again later", entry.order_id)
                next_at = self._back_off(entry)
            else:
                if result.answered:
                    self.breaker.success()
                    settled = True
                next_at = self._after(entry, result, due)
        except asyncio.CancelledError:
            entry.running = False
            raise
        finally:
            if probe and not settled:
                # The probe learnt nothing about SMS-Man (it did not ask, or it broke, or it
                # was cancelled): the next step probes, so the breaker is never left waiting.
                self.breaker.no_answer()
            self._slots.release()
            self._wake.set()
        entry.running = False
        if next_at is None and entry.wake_at == math.inf:
            self._entries.pop(entry.order_id, None)
            if self._policy is not None:
                self._policy.forget(entry.order_id)
            return
        if next_at is None or entry.wake_at < next_at:
            entry.routine = False  # asked for meanwhile (a user's action, a delivery)
        at = min(next_at if next_at is not None else math.inf, entry.wake_at)
        entry.wake_at = math.inf
        self._push(entry, at)

    def _after(self, entry: _Entry, result: StepResult, due: float) -> float | None:
        """The next time to look at the order (None: forget it)."""
        now = self.clock()
        entry.failures = 0
        order = result.order
        if self._policy is not None:
            _tell(self._policy, entry.order_id, result, now)
        if result.outcome is PollOutcome.CLOSED or order is None or not order.is_open:
            return None
        deadline = order.expires_at if order.expires_at is not None else math.inf
        entry.deadline = deadline
        if result.outcome is PollOutcome.RETRY:
            return self._back_off(entry)  # SMS-Man refused the reject and shows no code yet
        if result.outcome is PollOutcome.WAITING:
            self._countdown(entry, order, now)
            next_at = max(due + self._interval, now)  # fixed rate; when late, behind the rest
            entry.routine = order.status is OrderStatus.WAITING
        elif _polling(order):  # a received order that asked for another code
            next_at = now + self._interval
        else:  # a code came and no other is asked for: nothing to do until the deadline
            next_at = deadline if deadline < math.inf else now + self._interval
        polled_at = next_at
        if deadline > now:
            next_at = min(next_at, deadline)  # reject or close on time
        entry.routine &= next_at == polled_at
        return next_at

    def _back_off(self, entry: _Entry) -> float:
        """Exponential from `interval`, capped at MAX_BACKOFF, jittered; never past the
        order's deadline while that is ahead (the reject is due then)."""
        entry.failures += 1
        now = self.clock()
        delay = min(self._interval * 2.0 ** min(entry.failures, 10), MAX_BACKOFF)
        at = now + delay * random.uniform(0.8, 1.2)
        return min(at, entry.deadline) if entry.deadline > now else at

    def _countdown(self, entry: _Entry, order: Order, now: float) -> None:
        """The card's time left: at most one edit a minute, and only if the text changes
        (queued in memory: delivery sends it when budget is to spare)."""
        if order.status is not OrderStatus.WAITING or order.expires_at is None:
            return
        shown = minutes_shown(order.expires_at - now)
        if shown == entry.card_minutes or now - entry.card_at < COUNTDOWN_EVERY:
            return
        self._orders.countdown(order)
        entry.card_at = now
        entry.card_minutes = shown


def _about(order: Order) -> dict[str, Any]:
    """What the policy knows of a waiting order."""
    deadline = order.expires_at if order.expires_at is not None else math.inf
    return {
        "key": (order.service_id, order.country_id),
        "bought_at": order.created_at,
        "deadline": deadline,
    }


def _tell(policy: PollPolicy, order_id: int, result: StepResult, now: float) -> None:
    """What a step found, for the policy: still waiting, a first code, or the end."""
    order = result.order
    status = order.status if order is not None else None
    if order is not None and status is OrderStatus.WAITING:
        policy.track(order_id, **_about(order))
    elif status in (OrderStatus.RECEIVED, OrderStatus.FINISHED):
        policy.code_came(order_id, now)  # learns only if it was waiting until now
    elif status in (OrderStatus.CANCELLED, OrderStatus.EXPIRED):
        policy.ended(order_id, now)
    else:
        policy.forget(order_id)


def _polling(order: Order) -> bool:
    return order.status is OrderStatus.WAITING or (
        order.status is OrderStatus.RECEIVED and order.want_more
    )
