"""Which waiting order to poll next when SMS-Man's call budget binds: pure logic, no I/O.

The poller keeps today's fixed rate (every order due SMS_POLL_INTERVAL after its previous
poll was due). While the budget suffices every due order goes at once and nothing here
matters. When SMSMAN_MAX_RPS binds, orders wait in a ready set and `PollPolicy.choose`
says which goes next:

1. Anything that is not a routine poll of a waiting order (a deadline, a retry after a
   failure, a code to deliver again, a user's "another code") goes first, earliest due.
   While no due order has waited a whole interval past its time and those due can all
   go within one, the budget keeps up: the earliest due goes next, as under the fixed
   rate.
2. The guarantees: an order not polled for `GUARANTEE_FACTOR` x max(interval, N/B)
   seconds (N waiting orders, B = SMSMAN_MAX_RPS), less a safety margin, or not yet
   polled in the last moments before its deadline, or past its deadline (the step that
   closes it: reject, refund, tell the user), goes next, earliest first.
3. The floor: an order not polled for `TAIL_SHARE` x the gap the fixed rate would give
   it now (N over the polls a second actually made), earliest due first, unless its
   chance of a code within that gap is below `TAIL_CHANCE` (hopeless: then only the
   guarantee keeps it). No code that may still come waits longer than under the fixed
   rate, which is what keeps the p99 from growing: the late codes (minutes after the
   purchase) are the ones a ranking by likelihood would starve.
4. The rest by expected gain: how long a code has probably been waiting already (the
   expected delay accrued since the order's last poll, from the learned arrival curve).
   Ranking by it polls each order at a rate proportional to the square root of its
   hazard, the spread of a budget that minimises the mean delay. Recomputed every
   `RESCORE_EVERY` seconds.

What it buys is bounded: no schedule knows more of an order than its age and that no
code came by its last poll, so on the bench's mix (bench/poller.py --budget, whose
yardstick computes it) no schedule's mean delay goes below about x0.63 of the fixed
rate's, x0.65 with the guarantee. Keeping the p99 as well costs more: the floor takes
most of the budget (most waiting orders are minutes old and may still get a code), and
the guarantee's polls of hopeless orders and their last calls before the deadline take
their share; in the steady state (bench/schedule_sim.py, 6 seeds) the mean comes out
x0.76-0.83 with the p99 x0.97-0.98. The floor's gap is 3% over the fixed rate's
(`TAIL_SHARE`): the codes that come minutes after the purchase, the only slow ones, are
about a third of all, so the p99 of all is about the 97th percentile of theirs; at 1.0 the
mean was x0.80-0.87 (p99 x0.95), at 1.1 the p99 went 1-5% over the fixed rate's.
The gain comes from the young orders' codes and from the hopeless orders.

The arrival curve (`ArrivalModel`) is learned from our own history: time from purchase
to the first code per (service, country), orders that ended without one counted as
watched that long (censored). It is a piecewise-constant hazard over age bins; each bin's
rate is shrunk toward the service's, the service's toward all orders', and that toward a
flat prior, with `PSEUDO_ORDERS` orders' worth of weight (a Gamma-Poisson posterior
mean). A flat hazard ranks by time since the last poll alone, so with no history the
choice is today's: longest-waiting first.

User actions (Cancel, Another code) never pass through here: OrderService sends them to
SMS-Man itself, in the client's urgent lane.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

# Age bins (seconds since purchase): fine where codes usually come, coarse later.
EDGES: tuple[float, ...] = (
    0, 5, 10, 15, 20, 25, 30, 40, 50, 60, 75, 90, 105, 120, 150, 180, 240, 300, 360, 480,
    600, 720, 900, 1080, 1200,
)  # fmt: skip
PRIOR_RATE = 1 / 300  # codes per second of the flat prior (its level does not matter)
PSEUDO_ORDERS = 10.0  # weight of the parent curve, in orders watched through each bin
GUARANTEE_FACTOR = 4.0
TAIL_SHARE = 1.03  # the floor's gap, as a share of the fixed rate's gap (N / polls a second)
TAIL_CHANCE = 0.01  # below this chance of a code within the floor's gap: hopeless, no floor
GOLDEN = (math.sqrt(5) - 1) / 2  # steps of it spread the phases evenly
RATE_WINDOW = 30.0  # seconds of polls the fixed rate's gap is measured over
RESCORE_EVERY = 0.5

Key = tuple[int, int]  # (service_id, country_id)
BINS = len(EDGES) - 1


class Due(Protocol):
    """What the poller tells about a ready order (its _Entry)."""

    @property
    def due(self) -> float: ...

    @property
    def routine(self) -> bool: ...


# -- the arrival curve -----------------------------------------------------------------


class Curve:
    """A piecewise-constant hazard over `EDGES` (the last rate goes on past the end)."""

    __slots__ = ("rates",)

    def __init__(self, rates: Iterable[float]) -> None:
        self.rates = tuple(rates)

    def survival(self, a: float, u: float) -> float:
        """P(no code by age u | no code by age a)."""
        return math.exp(-self._hazard(a, u))

    def chance(self, a: float, u: float) -> float:
        """P(a code by age u | no code by age a)."""
        return -math.expm1(-self._hazard(a, u))

    def _hazard(self, a: float, u: float) -> float:
        total = 0.0
        for start, end, rate in self._spans(a, u):
            total += rate * (end - start)
        return total

    def accrued(self, a: float, u: float) -> float:
        """E[(u - X)+ | X > a], X the age the code comes at: how long a code has been
        waiting by age u, on average, for an order last seen without one at age a."""
        total = 0.0
        hazard = 0.0  # from a to the span's start
        for start, end, rate in self._spans(a, u):
            width = end - start
            kept = math.exp(-hazard)  # P(no code yet at `start`)
            x = rate * width
            inside = width if x < 1e-9 else -math.expm1(-x) / rate  # integral of e^-rate.s
            total += width - kept * inside
            hazard += x
        return total

    def _spans(self, a: float, u: float) -> Iterable[tuple[float, float, float]]:
        a = max(a, 0.0)
        if u <= a:
            return
        k = max(0, bisect_right(EDGES, a) - 1)
        start = a
        last = len(self.rates) - 1
        while start < u:
            end = u if k >= last else min(u, EDGES[k + 1])
            yield start, end, self.rates[min(k, last)]
            start = end
            k += 1


class _Counts:
    __slots__ = ("events", "exposure")

    def __init__(self) -> None:
        self.events = [0.0] * BINS
        self.exposure = [0.0] * BINS

    def add(self, seconds: float, got_code: bool) -> None:
        for k in range(BINS):
            start = EDGES[k]
            if seconds < start:
                break
            end = EDGES[k + 1] if k + 1 < BINS else math.inf  # the last bin is open
            self.exposure[k] += min(seconds, end) - start
            if got_code and seconds < end:
                self.events[k] += 1
                break


def _shrunk(counts: _Counts | None, parent: tuple[float, ...]) -> tuple[float, ...]:
    if counts is None:
        return parent
    rates = []
    for k in range(BINS):
        weight = PSEUDO_ORDERS * (EDGES[k + 1] - EDGES[k])  # seconds watched, pseudo
        rates.append((counts.events[k] + weight * parent[k]) / (counts.exposure[k] + weight))
    return tuple(rates)


class ArrivalModel:
    """Time from purchase to the first code, learned per (service, country)."""

    def __init__(self) -> None:
        self._all = _Counts()
        self._services: dict[int, _Counts] = {}
        self._pairs: dict[Key, _Counts] = {}
        self._version = 0
        self._cache: dict[object, tuple[int, tuple[float, ...]]] = {}
        self.observed = 0

    def observe(self, key: Key, seconds: float, *, got_code: bool) -> None:
        """An order of `key` got its first code `seconds` after purchase (got_code), or
        ended without one after being watched that long."""
        service, _country = key
        for counts in (
            self._all,
            self._services.setdefault(service, _Counts()),
            self._pairs.setdefault(key, _Counts()),
        ):
            counts.add(seconds, got_code)
        self._version += 1
        self.observed += 1

    def learn(self, rows: Iterable[tuple[int, int, float | None, float]]) -> None:
        """Rows of storage's `first_code_times`: (service, country, seconds to the first
        code or None, seconds watched)."""
        for service, country, to_code, watched in rows:
            if to_code is not None:
                self.observe((service, country), to_code, got_code=True)
            else:
                self.observe((service, country), watched, got_code=False)

    def curve(self, key: Key | None) -> Curve:
        """The arrival curve for `key`; None: an order not yet read (all orders')."""
        if key is None:
            return Curve(self._rates("all"))
        return Curve(self._rates(key))

    def _rates(self, level: object) -> tuple[float, ...]:
        cached = self._cache.get(level)
        if cached is not None and cached[0] == self._version:
            return cached[1]
        if level == "all":
            rates = _shrunk(self._all, (PRIOR_RATE,) * BINS)
        elif isinstance(level, int):
            rates = _shrunk(self._services.get(level), self._rates("all"))
        else:
            assert isinstance(level, tuple)
            rates = _shrunk(self._pairs.get(level), self._rates(level[0]))
        self._cache[level] = (self._version, rates)
        return rates


# -- the policy ------------------------------------------------------------------------


@dataclass(slots=True)
class _Waiting:
    key: Key | None
    bought_at: float
    deadline: float
    last_poll: float
    watched_since: float  # the guarantee counts from here (this process's first sight)
    # Where in the first gap the floor of an order found at start falls (0 to 1).
    phase: float = 0.0


class PollPolicy:
    def __init__(
        self,
        *,
        interval: float,
        max_rps: float,
        max_concurrency: int,
        model: ArrivalModel | None = None,
    ) -> None:
        self.interval = interval
        self.max_rps = max_rps
        # A chosen step may wait this long at SMS-Man's gate before its call goes out.
        self._queue_delay = max_concurrency / max_rps
        self.model = model if model is not None else ArrivalModel()
        self._waiting: dict[int, _Waiting] = {}
        self._polls: deque[float] = deque()  # when the last RATE_WINDOW seconds' polls went
        self._overdue: list[int] = []  # guarantees due, earliest first (taken from the end)
        self._floor: list[int] = []  # floors due, earliest first (taken from the end)
        # Guarantees (True) and floors (False) coming due before the next rescore.
        self._soon: list[tuple[float, bool, int]] = []
        self._ranked: list[int] = []  # the rest, most expected gain first
        self._next_rescore = -math.inf

    # -- what the poller reports -------------------------------------------------------

    def track(
        self,
        order_id: int,
        *,
        key: Key,
        bought_at: float,
        deadline: float,
        unseen_since: float | None = None,
    ) -> None:
        """A waiting order read by a step; or at start (`unseen_since`: now): when it was
        last polled is unknown, so a code may have come any time since its purchase, and
        the guarantee counts from now."""
        known = self._waiting.get(order_id)
        if known is not None:
            known.key, known.bought_at, known.deadline = key, bought_at, deadline
            return
        since = bought_at if unseen_since is None else unseen_since
        phase = (order_id * GOLDEN) % 1.0  # spread evenly whatever the ids
        self._waiting[order_id] = _Waiting(key, bought_at, deadline, bought_at, since, phase)

    def polled(self, order_id: int, at: float) -> None:
        """A step for the order started (it asks SMS-Man once)."""
        self._polls.append(at)
        while self._polls and self._polls[0] < at - RATE_WINDOW:
            self._polls.popleft()
        known = self._waiting.get(order_id)
        if known is not None:
            known.last_poll = at
        else:  # just bought: the poller is first told when its step has read it
            self._waiting[order_id] = _Waiting(None, at - self.interval, math.inf, at, at)

    def code_came(self, order_id: int, at: float) -> None:
        """The order's first code was found at `at`: learn from it, stop tracking it."""
        known = self._waiting.pop(order_id, None)
        if known is not None and known.key is not None:
            self.model.observe(known.key, at - known.bought_at, got_code=True)

    def ended(self, order_id: int, at: float) -> None:
        """The order left without a code (cancelled, expired): watched until `at`."""
        known = self._waiting.pop(order_id, None)
        if known is not None and known.key is not None:
            self.model.observe(known.key, at - known.bought_at, got_code=False)

    def forget(self, order_id: int) -> None:
        self._waiting.pop(order_id, None)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    # -- the choice --------------------------------------------------------------------

    def guarantee_gap(self) -> float:
        """No waiting order goes longer than this without a poll."""
        return GUARANTEE_FACTOR * max(self.interval, self.waiting / self.max_rps)

    def last_call_before_deadline(self) -> float:
        """Seconds before its deadline an order is polled one last time, at the latest."""
        return max(2 * self.interval, 2 * self._queue_delay)

    def must_poll_by(self, order_id: int) -> float:
        """When the order's guarantee is due (a safety margin before it ends)."""
        known = self._waiting.get(order_id)
        if known is None:
            return math.inf
        gap = self.guarantee_gap()
        # Room to poll every order once before its guarantee ends, should all come due
        # together (with a fifth of the budget going to purchases and the like).
        margin = max(0.1 * gap, 1.25 * self.waiting / self.max_rps, 2 * self._queue_delay)
        at = max(known.last_poll, known.watched_since) + max(gap - margin, 0.0)
        before_deadline = known.deadline - self.last_call_before_deadline()
        if known.last_poll < before_deadline:
            at = min(at, before_deadline)
        else:  # the close itself (reject, refund, tell the user) is due on time, not later
            at = min(at, known.deadline)
        return at

    def fixed_gap(self, now: float) -> float:
        """The gap between two polls of an order that the fixed rate would give now: N
        over the polls a second actually made (purchases and the like take budget too),
        never below the interval."""
        polls = self._polls
        while polls and polls[0] < now - RATE_WINDOW:
            polls.popleft()
        rate = self.max_rps
        if len(polls) >= 2 and now - polls[0] >= RATE_WINDOW / 2:
            # Measured once there are enough polls to tell (at start: the cap's rate).
            rate = min(rate, len(polls) / (now - polls[0]))
        return max(self.interval, self.waiting / rate)

    def floor_by(self, order_id: int, now: float) -> float:
        """When the order's floor is due: `TAIL_SHARE` x the fixed rate's gap after its
        last poll, unless its chance of a code within that gap is below `TAIL_CHANCE`
        (hopeless: the guarantee alone keeps it). The floor is what keeps late codes from
        waiting longer than under the fixed rate (the p99)."""
        known = self._waiting.get(order_id)
        if known is None:
            return math.inf
        gap = TAIL_SHARE * self.fixed_gap(now)
        seen = known.last_poll - known.bought_at
        if self.model.curve(known.key).chance(seen, seen + gap) < TAIL_CHANCE:
            return math.inf
        if known.last_poll < known.watched_since:
            # Not polled since this process found it (at start): the fixed rate's first
            # sweep reaches such orders one after another over a gap, and so do their
            # floors, rather than all at once a gap after the start.
            return known.watched_since + known.phase * gap
        return known.last_poll + gap

    def score(self, order_id: int, now: float) -> float:
        """Expected gain of polling the order now: how long its code has probably been
        waiting already (seconds). Ranking by it polls each order at a rate proportional
        to the square root of its chance of a code per second, the best spread of a
        budget for the mean delay."""
        known = self._waiting.get(order_id)
        if known is None:
            return 0.0
        curve = self.model.curve(known.key)
        return curve.accrued(known.last_poll - known.bought_at, now - known.bought_at)

    def choose(self, ready: Mapping[int, Due], now: float) -> int:
        """The ready order to step next (`ready` is not empty)."""
        urgent = None
        earliest = None
        for order_id, entry in ready.items():
            if not entry.routine:
                if urgent is None or entry.due < urgent[0]:
                    urgent = (entry.due, order_id)
            elif earliest is None or entry.due < earliest[0]:
                earliest = (entry.due, order_id)
        if urgent is not None:
            return urgent[1]
        assert earliest is not None
        if earliest[0] > now - self.interval and len(ready) <= self.max_rps * self.interval:
            # Nothing waited a whole interval past its time, and those due go within one:
            # the budget keeps up with the fixed rate, so poll as it does (earliest first).
            return earliest[1]
        if now >= self._next_rescore:
            self._rescore(ready, now)
        chosen = self._take(ready, now)
        if chosen is None:  # everything ranked went already: rank the newcomers
            self._rescore(ready, now)
            chosen = self._take(ready, now)
        assert chosen is not None  # a rescore ranks every ready order
        return chosen

    def _take(self, ready: Mapping[int, Due], now: float) -> int | None:
        while self._soon and self._soon[-1][0] <= now:
            _by, guarantee, order_id = self._soon.pop()
            # After those already due.
            (self._overdue if guarantee else self._floor).insert(0, order_id)
        for queue in (self._overdue, self._floor, self._ranked):
            while queue:
                order_id = queue.pop()
                if order_id in ready:
                    return order_id
        return None

    def _rescore(self, ready: Mapping[int, Due], now: float) -> None:
        self._next_rescore = now + RESCORE_EVERY
        overdue: list[tuple[float, int]] = []
        floor: list[tuple[float, int]] = []
        soon: list[tuple[float, bool, int]] = []
        ranked: list[tuple[float, int]] = []
        for order_id, entry in ready.items():
            if order_id not in self._waiting:  # bought, not stepped yet: due 1 interval on
                bought = entry.due - self.interval
                self._waiting[order_id] = _Waiting(None, bought, math.inf, bought, bought)
            by = self.must_poll_by(order_id)
            if by <= now:
                overdue.append((by, order_id))
                continue
            least = self.floor_by(order_id, now)
            if least <= now:  # those the fixed rate would have polled: earliest due first
                floor.append((entry.due, order_id))
                continue
            # Also ranked, so they may go before their time.
            if by <= self._next_rescore:
                soon.append((by, True, order_id))
            if least <= self._next_rescore:
                soon.append((least, False, order_id))
            ranked.append((self.score(order_id, now), order_id))
        # Lists are taken from their end: the first to go last.
        overdue.sort(reverse=True)
        floor.sort(reverse=True)
        soon.sort(reverse=True)
        ranked.sort()
        self._overdue = [order_id for _by, order_id in overdue]
        self._floor = [order_id for _by, order_id in floor]
        self._soon = soon
        self._ranked = [order_id for _score, order_id in ranked]
