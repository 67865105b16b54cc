"""The polling policy (bot/schedule.py), pure logic: the learning, the guarantees, the
equivalence with the fixed rate when the budget suffices, and the gain when it binds.

`simulate` replays the poller's own rules in simulated time: an order is bought, its first
poll is due one interval later, a routine poll is due one interval after the previous one
was due (or at once when late), the deadline step is due at the deadline; `budget` calls a
second, purchases and deadline steps included. Which ready order goes next is either the
earliest due (today's fixed rate) or the policy's choice.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field

import pytest

from bot.schedule import EDGES, TAIL_SHARE, ArrivalModel, PollPolicy

INTERVAL = 3.0
LIFETIME = 1200.0
KEY = (1, 1)


@dataclass
class _Sim:
    due: float
    routine: bool
    bought_at: float
    code_at: float
    key: tuple[int, int] = KEY
    polls: list[float] = field(default_factory=list)


@dataclass
class Outcome:
    delays: list[float]
    late_delays: list[float]  # those of codes that came 2 minutes or more after purchase
    gaps_ok: bool  # every gap between polls within the guarantee
    worst_gap_ratio: float  # the longest gap over the guarantee that applied
    deadline_polls: list[float]  # seconds before the deadline of each order's last poll
    closed_late: list[float]  # seconds after its deadline each order without a code closed
    polls: dict[int, list[float]]
    waiting_max: int


def mixture(rng: random.Random) -> float:
    """The bench's mix: 60% lognormal (median 40 s, sigma 1), 15% 2-15 min, 25% never."""
    u = rng.random()
    if u < 0.6:
        return math.exp(math.log(40) + rng.gauss(0, 1))
    if u < 0.75:
        return rng.uniform(120, 900)
    return math.inf


def warm_model(rng: random.Random, orders: int, draw=mixture, key=KEY) -> ArrivalModel:
    model = ArrivalModel()
    for _ in range(orders):
        at = draw(rng)
        if at < LIFETIME:
            model.observe(key, at + rng.uniform(0, INTERVAL), got_code=True)
        else:
            model.observe(key, LIFETIME, got_code=False)
    return model


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def simulate(
    *,
    policy: PollPolicy | None,
    budget: float,
    rate: float,
    seconds: float,
    warmup: float,
    seed: int,
    initial: int = 0,
    draw=mixture,
) -> Outcome:
    rng = random.Random(seed)
    orders: dict[int, _Sim] = {}
    delays: list[float] = []
    late_delays: list[float] = []
    gap_ratio = 0.0
    deadline_polls: list[float] = []
    closed_late: list[float] = []
    every: dict[int, list[float]] = {}
    waiting_max = 0
    next_id = 0
    pending = 0  # purchases and rejects take calls too
    next_buy = rng.expovariate(rate) if rate else math.inf

    def buy(at: float) -> None:
        nonlocal next_id
        orders[next_id] = _Sim(at + INTERVAL, True, at, at + draw(rng))
        every[next_id] = orders[next_id].polls
        next_id += 1

    for _ in range(initial):
        buy(0.0)
    t = 0.0
    step = 1.0 / budget
    while t < seconds:
        while next_buy <= t:
            buy(next_buy)
            pending += 1
            next_buy += rng.expovariate(rate)
        waiting_max = max(waiting_max, len(orders))
        if pending:
            pending -= 1
            t += step
            continue
        ready = {i: o for i, o in orders.items() if o.due <= t}
        if not ready:
            t += step
            continue
        if policy is None:
            chosen = min(ready, key=lambda i: (ready[i].due, i))
        else:
            chosen = policy.choose(ready, t)
            policy.polled(chosen, t)
        order = orders[chosen]
        if order.polls and policy is not None:
            limit = 4 * max(INTERVAL, len(orders) / budget)
            gap_ratio = max(gap_ratio, (t - order.polls[-1]) / limit)
        order.polls.append(t)
        deadline = order.bought_at + LIFETIME
        if order.code_at <= t:
            if t >= warmup:
                delays.append(t - order.code_at)
                if order.code_at - order.bought_at >= 120:
                    late_delays.append(t - order.code_at)
            del orders[chosen]
            if policy is not None:
                policy.code_came(chosen, t)
        elif t >= deadline:
            deadline_polls.append(deadline - order.polls[-2] if len(order.polls) > 1 else 0)
            closed_late.append(t - deadline)
            del orders[chosen]
            pending += 0  # this step was the reject call
            if policy is not None:
                policy.ended(chosen, t)
        else:
            if policy is not None:
                policy.track(chosen, key=order.key, bought_at=order.bought_at, deadline=deadline)
            nxt = max(order.due + INTERVAL, t)
            order.due, order.routine = (nxt, True) if nxt < deadline else (deadline, False)
        t += step
    return Outcome(
        delays,
        late_delays,
        gap_ratio <= 1.0,
        gap_ratio,
        deadline_polls,
        closed_late,
        every,
        waiting_max,
    )


def make_policy(budget: float, model: ArrivalModel | None = None) -> PollPolicy:
    return PollPolicy(interval=INTERVAL, max_rps=budget, max_concurrency=10, model=model)


# -- learning ------------------------------------------------------------------------------


def test_unseen_orders_follow_a_flat_prior_so_the_longest_waiting_goes_first() -> None:
    policy = make_policy(20)
    for i, (bought, last) in enumerate([(0, 100), (50, 60), (200, 210)]):
        policy.track(i, key=(i, i), bought_at=bought, deadline=LIFETIME)
        policy.polled(i, last)
    scores = [policy.score(i, 260) for i in range(3)]
    assert scores[1] > scores[0] > scores[2]  # 200, 160 and 50 s since the last poll


def test_learning_separates_fast_and_slow_services_and_shrinks_toward_the_parent() -> None:
    model = ArrivalModel()
    rng = random.Random(3)
    for _ in range(300):
        model.observe((1, 7), rng.uniform(5, 25), got_code=True)  # fast service
        model.observe((2, 7), rng.uniform(200, 400), got_code=True)  # slow service
    fast, slow = model.curve((1, 7)), model.curve((2, 7))
    assert fast.survival(0, 30) < 0.05
    assert slow.survival(0, 30) > 0.9
    assert slow.survival(0, 450) < 0.1
    # A country never seen for the fast service: the service's curve, not the flat prior.
    assert model.curve((1, 99)).survival(0, 30) < 0.1
    # A service never seen: all orders' curve (half fast, half slow).
    assert 0.3 < model.curve((3, 7)).survival(0, 30) < 0.7
    # A handful of orders moves a pair only part of the way from its parent.
    for _ in range(3):
        model.observe((1, 8), 300, got_code=True)
    few = model.curve((1, 8)).survival(0, 30)
    assert fast.survival(0, 30) < few < 0.9


def test_orders_that_never_got_a_code_are_censored_not_ignored() -> None:
    model = ArrivalModel()
    rng = random.Random(8)
    for _ in range(100):
        model.observe(KEY, rng.uniform(20, 40), got_code=True)
        model.observe(KEY, LIFETIME, got_code=False)  # watched until the deadline
    curve = model.curve(KEY)
    assert curve.survival(0, 60) == pytest.approx(0.5, abs=0.05)
    assert curve.survival(60, 1100) > 0.9  # after a minute with nothing, little comes
    assert curve.accrued(600, 700) < 5


def test_history_rows_from_storage_are_learned() -> None:
    model = ArrivalModel()
    model.learn([(1, 2, 12.5, 12.5), (1, 2, None, 1200.0), (5, 6, 40.0, 40.0)])
    assert model.observed == 3
    assert model.curve((1, 2)).survival(0, 20) < model.curve((9, 9)).survival(0, 20)


def test_the_curve_integrates_exactly_for_a_constant_rate() -> None:
    model = ArrivalModel()
    curve = model.curve(None)  # flat prior, rate r
    r = curve.rates[0]
    assert all(rate == r for rate in curve.rates)
    a, u = 17.0, 517.0
    exact = (u - a) - (1 - math.exp(-r * (u - a))) / r
    assert curve.accrued(a, u) == pytest.approx(exact, rel=1e-9)
    assert curve.survival(a, u) == pytest.approx(math.exp(-r * (u - a)), rel=1e-9)
    assert len(curve.rates) == len(EDGES) - 1


# -- the guarantees ---------------------------------------------------------------------------


def test_without_a_binding_cap_every_order_is_polled_every_interval_as_today() -> None:
    kwargs = {"budget": 50.0, "rate": 0.2, "seconds": 400.0, "warmup": 0.0, "seed": 5}
    fixed = simulate(policy=None, **kwargs)
    learned = simulate(policy=make_policy(50.0, warm_model(random.Random(1), 500)), **kwargs)
    # The same polls, at most a few call slots apart (who of two due at once goes first).
    assert fixed.polls.keys() == learned.polls.keys()
    for order_id, polls in fixed.polls.items():
        other = learned.polls[order_id]
        assert len(polls) == len(other)
        assert all(abs(a - b) <= 0.1 for a, b in zip(polls, other, strict=True))
    assert sorted(fixed.delays) == pytest.approx(sorted(learned.delays), abs=0.1)
    for polls in learned.polls.values():
        gaps = [b - a for a, b in itertools.pairwise(polls)]
        assert all(abs(gap - INTERVAL) < 0.05 for gap in gaps)


def test_under_a_binding_cap_no_order_waits_past_the_guarantee() -> None:
    # 400 orders bought at once and more coming, 5 calls a second: N / B = 80 s.
    policy = make_policy(5.0, warm_model(random.Random(2), 2000))
    outcome = simulate(
        policy=policy, budget=5.0, rate=0.6, seconds=1500.0, warmup=0.0, seed=9, initial=400
    )
    assert outcome.waiting_max >= 400
    assert outcome.gaps_ok, outcome.worst_gap_ratio
    assert outcome.worst_gap_ratio > 0.5  # the guarantee, not the ranking, kept some


def test_under_a_binding_cap_each_order_is_polled_just_before_its_deadline() -> None:
    policy = make_policy(5.0, warm_model(random.Random(2), 2000))
    outcome = simulate(policy=policy, budget=5.0, rate=0.6, seconds=1800.0, warmup=0.0, seed=3)
    assert len(outcome.deadline_polls) > 50
    assert outcome.gaps_ok, outcome.worst_gap_ratio
    # The last poll before the deadline step came within the policy's last-call window,
    # although the guarantee alone would allow minutes.
    window = policy.last_call_before_deadline()
    assert max(outcome.deadline_polls) <= window + 1.0, max(outcome.deadline_polls)
    assert 4 * outcome.waiting_max / 5.0 > 10 * window


def test_under_a_binding_cap_an_order_without_a_code_is_closed_at_its_deadline() -> None:
    # The step at the deadline rejects the number, refunds and tells the user: after the
    # last call before the deadline, the order's next poll is not left to the guarantee
    # (minutes later under this cap) but is due at the deadline itself.
    policy = make_policy(5.0, warm_model(random.Random(3), 500))
    outcome = simulate(policy=policy, budget=5.0, rate=0.6, seconds=1800.0, warmup=0.0, seed=3)
    assert len(outcome.closed_late) > 50
    assert policy.guarantee_gap() > 100
    assert max(outcome.closed_late) <= 2.0, sorted(outcome.closed_late)[-5:]


# -- the gain -------------------------------------------------------------------------------


def test_under_a_binding_cap_codes_are_found_sooner_and_the_tail_is_no_worse() -> None:
    """Steady state at 1/4 of the bench's scale (about 250 waiting orders, 5 calls a
    second: the same N/B), the same bought orders and codes for both schedulers."""
    kwargs = {"budget": 5.0, "rate": 0.6, "seconds": 4000.0, "warmup": 1300.0, "seed": 11}
    fixed = simulate(policy=None, **kwargs)
    learned = simulate(policy=make_policy(5.0, warm_model(random.Random(4), 2000)), **kwargs)
    mean_fixed = sum(fixed.delays) / len(fixed.delays)
    mean_learned = sum(learned.delays) / len(learned.delays)
    assert len(learned.delays) > 500
    assert mean_learned <= 0.9 * mean_fixed, (mean_learned, mean_fixed)
    assert percentile(learned.delays, 99) <= percentile(fixed.delays, 99)
    assert learned.gaps_ok


# -- the floor (the p99) and the cap that does not bind -------------------------------------


@dataclass
class _Ready:
    due: float
    routine: bool = True


def busy_policy(orders: int, polls_a_second: float, now: float) -> PollPolicy:
    """A policy of the bench's mix tracking `orders` waiting orders (ids 1000 on, bought
    over the last 20 minutes), told of polls at `polls_a_second` for the last 30 s."""
    policy = make_policy(5.0, warm_model(random.Random(2), 2000))
    for i in range(orders):
        bought = now - LIFETIME + i * LIFETIME / orders
        policy.track(1000 + i, key=KEY, bought_at=bought, deadline=bought + LIFETIME)
    step = 1 / polls_a_second
    for k in range(int(30 * polls_a_second)):
        policy.polled(1000 + k % orders, now - 30 + k * step)
    return policy


def test_the_fixed_rates_gap_is_measured_from_the_polls_made() -> None:
    now = 10_000.0
    policy = busy_policy(200, 4.0, now)  # not the 5 a second of the cap: purchases take some
    assert policy.fixed_gap(now) == pytest.approx(200 / 4.0, rel=0.05)
    quiet = busy_policy(6, 2.0, now)  # the budget keeps up: the interval
    assert quiet.fixed_gap(now) == INTERVAL


def test_an_order_that_may_still_get_a_code_is_polled_within_the_fixed_rates_gap() -> None:
    """A late code must not wait longer than the fixed rate would make it wait (the p99):
    an order of 8 minutes, last polled more than the fixed rate's gap ago, goes before a
    young order whose code is more likely, but that was polled recently."""
    now = 10_000.0
    policy = busy_policy(250, 5.0, now)
    gap = 250 / 5.0  # the fixed rate's gap; the floor is a share of it
    policy.track(1, key=KEY, bought_at=now - 40, deadline=now + LIFETIME)  # young
    policy.polled(1, now - 20)
    policy.track(2, key=KEY, bought_at=now - 480, deadline=now + LIFETIME)  # 8 minutes
    policy.polled(2, now - TAIL_SHARE * gap - 2)
    assert policy.score(1, now) > policy.score(2, now)  # the ranking alone: the young one
    ready = {1: _Ready(now - 17), 2: _Ready(now - TAIL_SHARE * gap + 1)}
    assert policy.choose(ready, now) == 2
    assert policy.floor_by(2, now) == pytest.approx(now - 2, abs=0.5)


def test_a_hopeless_order_has_no_floor_and_waits_for_the_guarantee() -> None:
    now = 10_000.0
    policy = busy_policy(250, 5.0, now)
    policy.track(1, key=KEY, bought_at=now - 40, deadline=now + LIFETIME)
    policy.polled(1, now - 20)
    policy.track(3, key=KEY, bought_at=now - 1000, deadline=now + 200)  # past 15 minutes
    policy.polled(3, now - 100)
    assert policy.floor_by(3, now) == math.inf
    assert now < policy.must_poll_by(3) < now + 100
    ready = {1: _Ready(now - 17), 3: _Ready(now - 97)}
    assert policy.choose(ready, now) == 1


def test_while_nothing_waits_an_interval_past_its_time_the_earliest_due_goes_first() -> None:
    """The cap does not bind (every due order goes within an interval): today's order,
    whatever the ranking would say."""
    now = 10_000.0
    policy = busy_policy(20, 20 / INTERVAL, now)
    policy.track(1, key=KEY, bought_at=now - 40, deadline=now + LIFETIME)  # likely code
    policy.polled(1, now - INTERVAL)
    policy.track(2, key=KEY, bought_at=now - 1000, deadline=now + 200)  # hopeless
    policy.polled(2, now - INTERVAL - 1)
    assert policy.score(1, now) > policy.score(2, now)
    ready = {1: _Ready(now), 2: _Ready(now - 1)}
    assert policy.choose(ready, now) == 2


def test_at_start_the_floors_come_due_spread_over_one_gap_not_all_at_once() -> None:
    """Orders found at start (when each was last polled is unknown): the fixed rate's first
    sweep reaches them one after another over N/B seconds; their floors come due alike,
    so the floor does not take the whole budget a gap after the start."""
    now = 10_000.0
    policy = make_policy(5.0, warm_model(random.Random(2), 2000))
    for i in range(400):
        bought = now - LIFETIME + i * 3.0
        policy.track(i, key=KEY, bought_at=bought, deadline=bought + LIFETIME, unseen_since=now)
    assert policy.fixed_gap(now) == 400 / 5.0  # no polls made yet: the cap's rate
    gap = TAIL_SHARE * policy.fixed_gap(now)
    floors = [policy.floor_by(i, now) for i in range(400)]
    due = sorted(at - now for at in floors if at < math.inf)
    assert len(due) > 250  # those that may still get a code
    assert due[0] >= 0
    assert due[-1] <= gap
    for k in range(10):  # about a tenth of them in each tenth of the gap
        share = sum(1 for at in due if k * gap / 10 <= at < (k + 1) * gap / 10) / len(due)
        assert 0.05 < share < 0.15, (k, share)
