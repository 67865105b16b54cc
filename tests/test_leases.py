"""Leases (storage/leases.py): several replicas on one database share the open orders and
the queued messages; a replica stopped without giving its leases back (killed) loses its
work to the others within two poll intervals. On both engines: each replica here has a
Database of its own, as a process would."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

from bot.app import App, build_app
from bot.poller import Poller
from bot.services.leases import OrderLeases
from bot.services.orders import PollOutcome, StepResult
from bot.settings import Settings
from sandbox.smsman import FakeSmsMan
from sandbox.telegram import FakeTelegram
from storage.db import Database
from storage.leases import Leases, Replica
from storage.models import LedgerKind, Money, Order, OrderStatus
from storage.outbox import OutboxRow
from tests.botproc import wait_until

INTERVAL = 0.6
_keys = itertools.count(1)


async def waiting_orders(db: Database, count: int, *, multiple_sms: bool = False) -> list[int]:
    """`count` waiting orders nobody holds (bought by a replica that is gone)."""
    ids = []
    for n in range(count):
        order = await db.orders.create(
            user_id=1 + n % 3,
            chat_id=1 + n % 3,
            country_id=7,
            country_title="Russia",
            service_id=3,
            service_title="Telegram",
            price=0,
            cost=60,
            currency="RUB",
            idempotency_key=f"lease-{next(_keys)}",
            multiple_sms=multiple_sms,
            hold=False,
            max_active=10_000,
        )
        assert await db.orders.mark_waiting(
            order.id,
            request_id=next(_keys),
            number="79990000000",
            expires_at=time.time() + 3600,
            next_poll_at=time.time(),
        )
        ids.append(order.id)
    return ids


class StubOrders:
    """An OrderService stand-in: each step is a poll that finds no code, recorded as
    (replica, order, time) in the shared `polls`."""

    def __init__(self, db: Database, name: str, polls: list[tuple[str, int, float]]) -> None:
        self.on_scheduled: Any = None
        self._db = db
        self._name = name
        self._polls = polls

    async def recover(self) -> list[Order]:
        return []

    async def fail_stale_purchases(self) -> int:
        return 0

    def countdown(self, order: Order) -> None:
        pass

    async def step(self, order_id: int) -> StepResult:
        self._polls.append((self._name, order_id, time.monotonic()))
        order = await self._db.orders.get(order_id)
        await asyncio.sleep(0.01)  # get-sms
        waiting = order is not None and order.status is OrderStatus.WAITING
        return StepResult(
            PollOutcome.WAITING if waiting else PollOutcome.IDLE, order, answered=True
        )


@asynccontextmanager
async def replica_poller(
    url: str, name: str, polls: list[tuple[str, int, float]], *, leases: bool = True
) -> AsyncIterator[Poller]:
    """A poller of its own database connection and replica id; leaving the block stops it
    WITHOUT giving its leases back, as a kill would (the leases run out on their own)."""
    db = await Database.open(url)
    replica = Replica.new(INTERVAL)
    poller = Poller(
        orders=StubOrders(db, name, polls),  # type: ignore[arg-type]
        interval=INTERVAL,
        concurrency=20,
        leases=OrderLeases(db, replica) if leases else None,
    )
    await poller.start()
    try:
        yield poller
    finally:
        await poller.stop(grace=1.0)
        await db.close()


def double_polls(polls: list[tuple[str, int, float]]) -> list[tuple[int, float]]:
    """Orders polled by two replicas less than half an interval apart: (order, gap)."""
    by_order: dict[int, list[tuple[float, str]]] = defaultdict(list)
    for name, order_id, at in polls:
        by_order[order_id].append((at, name))
    found = []
    for order_id, seen in by_order.items():
        seen.sort()
        for (at1, who1), (at2, who2) in itertools.pairwise(seen):
            if who1 != who2 and at2 - at1 < INTERVAL / 2:
                found.append((order_id, at2 - at1))
    return found


async def test_two_pollers_share_the_orders_and_never_poll_one_twice_in_a_round(
    database_url: str,
) -> None:
    """A starts alone and takes every order; B starts: A gives back what is above its
    share, B takes it. No order is polled by both within half an interval (a round), and
    every order keeps being polled."""
    async with await Database.open(database_url) as db:
        ids = await waiting_orders(db, 30)
    polls: list[tuple[str, int, float]] = []
    async with replica_poller(database_url, "A", polls):
        await wait_until(lambda: {o for _n, o, _t in polls} == set(ids), timeout=5)
        async with replica_poller(database_url, "B", polls):
            await wait_until(lambda: any(name == "B" for name, _o, _t in polls), timeout=5)
            await asyncio.sleep(6 * INTERVAL)
            recent = time.monotonic() - 2 * INTERVAL
            by = {name for name, _o, at in polls if at >= recent}
            polled = {order for _n, order, at in polls if at >= recent}
    assert by == {"A", "B"}, "both replicas poll"
    assert polled == set(ids), "every order is still polled"
    a_last = {o for n, o, at in polls if n == "A" and at >= recent}
    b_last = {o for n, o, at in polls if n == "B" and at >= recent}
    assert not a_last & b_last, "each order by one replica"
    assert 8 <= len(b_last) <= 22, f"a fair share: B polls {len(b_last)} of 30"
    assert double_polls(polls) == []


async def test_a_killed_pollers_orders_are_taken_over_within_two_intervals(
    database_url: str,
) -> None:
    """A and B share the orders; A stops without giving its leases back (a kill): B polls
    every one of A's orders within two intervals, and none of them before the kill."""
    async with await Database.open(database_url) as db:
        ids = await waiting_orders(db, 20)
    polls: list[tuple[str, int, float]] = []
    async with replica_poller(database_url, "B", polls):
        async with replica_poller(database_url, "A", polls):
            # Balanced: both poll, and for a while each keeps its own orders.
            await wait_until(
                lambda: (
                    {o for _n, o, _t in polls} == set(ids)
                    and any(n == "A" for n, _o, at in polls if at > time.monotonic() - INTERVAL)
                ),
                timeout=8,
            )
            await asyncio.sleep(3 * INTERVAL)
        killed = time.monotonic()
        a_orders = {o for n, o, at in polls if n == "A" and at >= killed - INTERVAL}
        assert a_orders, "A held some orders when it was killed"
        await asyncio.sleep(2 * INTERVAL + 0.3)
    taken = {o: at for n, o, at in sorted(polls, key=lambda p: -p[2]) if n == "B" and at > killed}
    late = {o: round(taken.get(o, 99) - killed, 2) for o in a_orders}
    assert all(delay <= 2 * INTERVAL for delay in late.values()), late
    b_before = {o for n, o, at in polls if n == "B" and killed - INTERVAL <= at <= killed}
    assert not a_orders & b_before, "B did not poll A's orders while A held them"
    assert double_polls(polls) == []


async def test_another_code_asked_on_another_replica_is_polled_by_the_holder(
    database_url: str,
) -> None:
    """A holds an order that got its code (nothing to poll until its deadline, an hour
    away). The user's "another code" is handled by another replica (want_more set in the
    database): A polls the order again at its next lease round."""
    async with await Database.open(database_url) as db:
        [order_id] = await waiting_orders(db, 1, multiple_sms=True)
        assert await db.orders.add_code(order_id, "1234") is not None
        polls: list[tuple[str, int, float]] = []
        async with replica_poller(database_url, "A", polls):
            await wait_until(lambda: len(polls) == 1, timeout=5)
            await asyncio.sleep(INTERVAL)
            assert len(polls) == 1, "received, no other code asked: not polled"
            asked = time.monotonic()
            assert await db.orders.request_more(order_id)  # on "another replica"
            await wait_until(lambda: len(polls) >= 3, timeout=5)
        assert polls[1][2] - asked <= INTERVAL, "seen at the next lease round"


async def test_without_leases_two_pollers_poll_every_order_twice(database_url: str) -> None:
    """The control: the same two pollers without leases both poll every order (what the
    tests above rule out)."""
    async with await Database.open(database_url) as db:
        await waiting_orders(db, 5)
    polls: list[tuple[str, int, float]] = []

    async with (
        replica_poller(database_url, "A", polls, leases=False) as a,
        replica_poller(database_url, "B", polls, leases=False) as b,
    ):
        for poller in (a, b):
            for order_id in range(1, 6):
                poller.schedule(order_id, time.time())
        await asyncio.sleep(2 * INTERVAL)
    assert double_polls(polls) != []


# -- the SQL alone -----------------------------------------------------------------------


async def test_an_order_is_claimed_by_one_of_two_racing_replicas(database_url: str) -> None:
    """Two replicas claim at once, many times over: no order is ever held by both, the
    fair share holds, and a renewal keeps what is held."""
    async with await Database.open(database_url) as db_a, await Database.open(database_url) as db_b:
        ids = await waiting_orders(db_a, 40)
        a, b = Replica.new(5.0), Replica.new(5.0)
        await Leases(db_a).heartbeat(a)
        await Leases(db_b).heartbeat(b)
        first_a, first_b = await asyncio.gather(
            Leases(db_a).order_round(a), Leases(db_b).order_round(b)
        )
        held_a = {o.id for o in first_a.claimed}
        held_b = {o.id for o in first_b.claimed}
        assert not held_a & held_b
        assert len(held_a) <= 20 and len(held_b) <= 20, "each at most its share"
        for _ in range(3):
            again_a, again_b = await asyncio.gather(
                Leases(db_a).order_round(a), Leases(db_b).order_round(b)
            )
            held_a |= {o.id for o in again_a.claimed}
            held_b |= {o.id for o in again_b.claimed}
            assert set(again_a.held) <= held_a and set(again_b.held) <= held_b
            assert not held_a & held_b
        assert held_a | held_b == set(ids)
        assert len(held_a) == len(held_b) == 20


async def test_a_lease_is_free_only_once_it_ran_out(database_url: str) -> None:
    async with await Database.open(database_url) as db:
        [order_id] = await waiting_orders(db, 1)
        leases = Leases(db)
        a, b = Replica.new(1.0), Replica.new(1.0)
        now = time.time()
        assert [o.id for o in (await leases.order_round(a, now=now)).claimed] == [order_id]
        got = await leases.order_round(b, now=now + 0.5)
        assert got.claimed == [] and got.held == {}, "A's lease is live"
        assert (await leases.order_round(a, now=now + 0.9)).held == {order_id: False}
        assert (await leases.order_round(b, now=now + 1.5)).claimed == [], "renewed at 0.9"
        got = await leases.order_round(b, now=now + 2.0)
        assert [o.id for o in got.claimed] == [order_id], "ran out at 1.9: B takes it"
        assert (await leases.order_round(a, now=now + 2.1)).held == {}, "A lost it"
        assert await leases.release_orders(b, [order_id]) == 1
        assert [o.id for o in (await leases.order_round(a, now=now + 2.2)).claimed] == [order_id], (
            "released: free at once"
        )


async def test_an_order_bought_here_is_held_from_the_start(database_url: str) -> None:
    async with await Database.open(database_url) as db:
        a, b = Replica.new(5.0), Replica.new(5.0)
        order = await db.orders.create(
            user_id=1,
            chat_id=1,
            country_id=7,
            country_title="Russia",
            service_id=3,
            service_title="Telegram",
            price=0,
            cost=60,
            currency="RUB",
            idempotency_key="bought-here",
            multiple_sms=False,
            hold=False,
            max_active=10,
        )
        assert await db.orders.mark_waiting(
            order.id,
            request_id=77,
            number="7999",
            expires_at=time.time() + 60,
            next_poll_at=time.time(),
            lease=a.lease(),
        )
        assert (await Leases(db).order_round(b)).claimed == []
        assert (await Leases(db).order_round(a)).held == {order.id: False}


async def test_outbox_rows_are_claimed_once_and_a_dead_holders_rows_taken_over(
    database_url: str,
) -> None:
    async with await Database.open(database_url) as db_a, await Database.open(database_url) as db_b:
        a, b = Replica.new(1.0), Replica.new(1.0)
        mine = await db_a.outbox.enqueue(chat_id=1, priority=3, kind="notice", lease=a.lease())
        for chat in range(2, 42):  # queued without a lease (like codes found at start)
            await db_a.outbox.enqueue(chat_id=chat, priority=3, kind="notice")
        (held_a, got_a), (_held_b, got_b) = await asyncio.gather(
            Leases(db_a).outbox_round(a, claim=25), Leases(db_b).outbox_round(b, claim=25)
        )
        claimed_a, claimed_b = {r.id for r in got_a}, {r.id for r in got_b}
        assert held_a == {mine.id} and mine.id not in claimed_b
        assert not claimed_a & claimed_b
        _held, rest_b = await Leases(db_b).outbox_round(b, claim=100)
        claimed_b |= {r.id for r in rest_b}
        assert len(claimed_a | claimed_b | {mine.id}) == 41
        # Queued again by B while A holds it: it stays A's (A sends the newest state).
        card = await db_a.outbox.enqueue(
            chat_id=1, priority=3, kind="card", ref=9, dedupe="card:9", lease=a.lease()
        )
        again = await db_b.outbox.enqueue(
            chat_id=1, priority=3, kind="card", ref=9, dedupe="card:9", lease=b.lease()
        )
        assert again.lease_owner == a.id and again.version == card.version + 1
        # A dies: after its leases ran out B takes its rows.
        _held, none_yet = await Leases(db_b).outbox_round(b, claim=100)
        assert none_yet == []
        _held, taken = await Leases(db_b).outbox_round(b, claim=100, now=time.time() + 1.5)
        assert {r.id for r in taken} == claimed_a | {mine.id, card.id}
        assert all(r.lease_owner == b.id for r in taken)


async def test_live_replicas_are_counted_and_a_clean_stop_leaves(database_url: str) -> None:
    count = 3
    async with await Database.open(database_url) as db:
        leases = Leases(db)
        replicas = [Replica.new(1.0) for _ in range(count)]
        for replica in replicas:
            await leases.heartbeat(replica)
        assert await leases.live_replicas() == count
        await leases.leave(replicas[0])
        assert await leases.live_replicas() == count - 1
        assert await leases.live_replicas(now=time.time() + 1.5) == 0
        assert await OrderLeases(db, replicas[1]).alone() is False


# -- two whole replicas: a user's Cancel on one, the poller's expiry on the other --------


@asynccontextmanager
async def replica_app(settings: Settings) -> AsyncIterator[App]:
    """The bot's app without its Telegram polling (two would fight over getUpdates): the
    poller and delivery run, the handlers' services are called directly."""
    app = await build_app(settings)
    await app.on_startup()
    try:
        yield app
    finally:
        await app.on_shutdown()
        await app.close()


async def test_cancel_on_one_replica_and_expiry_on_the_other_have_one_winner(
    telegram: FakeTelegram,
    smsman: FakeSmsMan,
    bot_settings_on_each_engine: Callable[..., Settings],
) -> None:
    """Orders bought (and polled) on A; for each, the user's Cancel goes to B while A's
    poller finds the deadline passed, at once: one transition, one release, books clean."""
    settings = bot_settings_on_each_engine(
        access_mode="shop", sms_poll_interval=0.3, purchases_per_minute=100
    )
    smsman.balance = Decimal(10_000)
    async with replica_app(settings) as a, replica_app(settings) as b:
        await a.db.wallet.credit(1, 1_000_00, note=None, idempotency_key="fund")
        telegram.user(1, started=True)
        ended = []
        for n in range(6):
            offer = await a.catalogue.offer(1, 1)
            assert offer is not None
            bought = await a.orders.buy(
                user_id=1,
                chat_id=1,
                country_id=1,
                service_id=1,
                quoted_cost=offer.service.cost,
                quoted_price=a.orders.price_for(offer.service.cost),
                multiple_sms=False,
                idempotency_key=f"race-{n}",
            )
            assert bought.order is not None and bought.order.status is OrderStatus.WAITING
            order_id = bought.order.id
            await asyncio.gather(
                b.orders.cancel(1, order_id), a.orders.expire_due(order_id), return_exceptions=True
            )
            ended.append(order_id)
        for order_id in ended:
            order = await a.db.orders.get(order_id)
            assert order is not None
            assert order.status in (OrderStatus.CANCELLED, OrderStatus.EXPIRED)
            assert order.money is Money.RELEASED
        rows = await a.db.wallet.history(1, limit=1000)
        releases = [r.order_id for r in rows if r.kind is LedgerKind.RELEASE]
        assert sorted(releases) == sorted(ended), "one release per order"
        assert await a.db.wallet.balance(1) == (1_000_00, 0)
        assert await a.db.wallet.check_invariant() == []


async def test_replicas_racing_rounds_claims_and_releases_never_deadlock(
    database_url: str,
) -> None:
    """Four replicas' rounds at once, many times over, leases running out in between (so
    claims take rows their holders are renewing) and orders given back: on PostgreSQL,
    multi-row UPDATEs locking the same rows in different orders would deadlock; every
    round here must go through."""
    dbs = [await Database.open(database_url) for _ in range(4)]
    try:
        ids = await waiting_orders(dbs[0], 120)
        replicas = [Replica.new(1.0) for _ in dbs]
        base = time.time()

        async def replica_rounds(k: int) -> None:
            leases, me = Leases(dbs[k]), replicas[k]
            for step in range(40):
                # A replica's clock runs a little ahead of the previous one's: each sees
                # some of the others' leases as run out.
                now = base + step * 0.35 + k * 0.3
                got = await leases.order_round(me, now=now)
                await leases.outbox_round(me, claim=5, now=now)
                if step % 4 == k % 4 and got.held:
                    await leases.release_orders(me, list(got.held)[::2])

        await asyncio.gather(*(replica_rounds(k) for k in range(len(dbs))))
        owners = await Leases(dbs[0]).order_round(Replica.new(1.0), now=base + 100)
        assert {o.id for o in owners.claimed} <= set(ids)
    finally:
        for db in dbs:
            await db.close()


async def test_a_push_keeps_its_row_for_a_whole_ttl_or_learns_it_lost_it(
    database_url: str,
) -> None:
    """Just before a push the holder extends its lease (a stalled replica whose lease ran
    out and was taken must not push what the taker pushes)."""
    async with await Database.open(database_url) as db_a, await Database.open(database_url) as db_b:
        a, b = Replica.new(1.0), Replica.new(1.0)
        now = time.time()
        row = await db_a.outbox.enqueue(chat_id=1, priority=1, kind="notice", lease=a.lease(now))
        # Kept at now + 0.9: extended to now + 1.9, so B cannot take it at now + 1.5.
        kept = await Leases(db_a).keep_outbox_row(a, row.id, now=now + 0.9)
        assert isinstance(kept, OutboxRow) and kept.id == row.id
        _held, taken = await Leases(db_b).outbox_round(b, claim=10, now=now + 1.5)
        assert taken == []
        # A stalls past its lease; B takes the row; A, waking, learns it lost it.
        _held, taken = await Leases(db_b).outbox_round(b, claim=10, now=now + 2.0)
        assert [r.id for r in taken] == [row.id]
        assert await Leases(db_a).keep_outbox_row(a, row.id, now=now + 2.1) is True
        assert isinstance(await Leases(db_b).keep_outbox_row(b, row.id, now=now + 2.1), OutboxRow)
        await db_b.outbox.drop(row.id)
        assert await Leases(db_a).keep_outbox_row(a, row.id) is False, "gone: done elsewhere"
