"""A randomised concurrent run of money operations; the books must balance afterwards.

Credits, debits, purchases (some failing at SMS-Man), cancels, codes and expiries for
several users run at once, with deliberate races on single orders (two cancels, an expiry
and a code together). Once nothing moves any more, and again after the orders still
waiting expired and the bot stopped:
  * the ledger invariant holds (balances = ledger sums, one hold/capture/release per order);
  * per user: available + held + captured prices == credits - debits (as the test saw them);
  * an order is charged exactly when SMS-Man gave it a code.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Coroutine
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bot.app import App
from bot.settings import Settings
from sandbox.smsman import TERMINAL, FakeSmsMan
from sandbox.telegram import FakeTelegram
from storage.db import Database
from storage.errors import InsufficientFunds
from storage.models import Money, Order, OrderStatus
from tests.inprocess import running
from tests.test_shop import SHOP

pytestmark = pytest.mark.asyncio

SettingsFactory = Callable[..., Settings]


@pytest.fixture
def bot_settings(bot_settings_on_each_engine: SettingsFactory) -> SettingsFactory:
    """Every test here runs the bot once on SQLite and once on PostgreSQL."""
    return bot_settings_on_each_engine


USERS = (11, 12, 13, 14, 15, 16)
OPERATIONS = 320  # of which >= 200 must have found something to do
WAITING = OrderStatus.WAITING
OFFERS = [(c, s) for c in (1, 8, 14, 100) for s in (1, 2, 297)]
FAULTS = ("http500", "rate_limit", "malformed")


Op = Callable[[], Coroutine[Any, Any, "str | None"]]


class Run:
    """Each operation returns what it did, or None when it found nothing to act on."""

    def __init__(self, app: App, smsman: FakeSmsMan, seed: int) -> None:
        self.app = app
        self.smsman = smsman
        self.rng = random.Random(seed)
        self.credits: Counter[int] = Counter()
        self.debits: Counter[int] = Counter()
        self.seen: Counter[str] = Counter()
        self.idle = 0
        self.busy: set[str] = set()  # operations in flight (named if they ever hang)
        self.order_ids: list[int] = []
        self.step = 0

    def key(self, kind: str) -> str:
        self.step += 1
        return f"test:{kind}:{self.step}"

    async def jitter(self) -> None:
        await asyncio.sleep(self.rng.random() * 0.004)

    # -- the operations ------------------------------------------------------------------

    async def credit(self) -> str:
        user, amount = self.rng.choice(USERS), self.rng.randrange(1, 60_00)
        key = self.key("credit")
        await self.jitter()
        moves = [self.app.admin.credit(user, amount, note=None, key=key)]
        if self.rng.random() < 0.2:  # the same command twice (a re-delivered update)
            moves.append(self.app.admin.credit(user, amount, note=None, key=key))
        done = sorted(m.done for m in await asyncio.gather(*moves))
        assert done == [False] * (len(done) - 1) + [True]
        self.credits[user] += amount
        return "credit"

    async def debit(self) -> str:
        user, amount = self.rng.choice(USERS), self.rng.randrange(1, 40_00)
        await self.jitter()
        try:
            move = await self.app.admin.debit(user, amount, note="t", key=self.key("debit"))
        except InsufficientFunds:
            return "debit refused"
        assert move.done
        self.debits[user] += amount
        return "debit"

    async def buy(self) -> str:
        user = self.rng.choice(USERS)
        country, service = self.rng.choice(OFFERS)
        offer = await self.app.catalogue.offer(country, service)
        assert offer is not None
        if self.rng.random() < 0.1:
            self.smsman.fail_next(
                "get-number", self.rng.choice(FAULTS), after_effect=self.rng.random() < 0.5
            )
        key = self.key("buy")
        await self.jitter()
        result = await self.app.orders.buy(
            user_id=user,
            chat_id=user,
            country_id=country,
            service_id=service,
            quoted_cost=offer.service.cost,
            quoted_price=self.app.orders.price_for(offer.service.cost),
            multiple_sms=False,
            idempotency_key=key,
        )
        # A failed purchase has its row too (released): the races may pick it.
        order = result.order or await self.app.db.orders.by_idempotency_key(key)
        if order is not None:
            self.order_ids.append(order.id)
        return f"buy {result.outcome}"

    async def pick(self) -> Order | None:
        """Mostly a waiting order (where the races are), sometimes any order at all."""
        if self.rng.random() < 0.8:
            waiting = [o for o in await self.app.db.orders.list_open() if o.status is WAITING]
            if waiting:
                return self.rng.choice(waiting)
        if not self.order_ids:
            return None
        return await self.app.db.orders.get(self.rng.choice(self.order_ids))

    def code_now(self, order: Order) -> bool:
        request = self.smsman.requests.get(order.request_id or -1)
        if request is None or request.status in TERMINAL or request.codes:
            return False
        self.smsman.deliver_code(request.request_id)
        return True

    async def cancel(self) -> str | None:
        order = await self.pick()
        if order is None:
            return None
        await self.jitter()
        result = await self.app.orders.cancel(order.user_id, order.id)
        return f"cancel {result.outcome}"

    async def code(self) -> str | None:
        """A code arrives at SMS-Man; the poller, a cancel or an expiry may see it first."""
        order = await self.pick()
        if order is None or not self.code_now(order):
            return None
        return "code"

    async def expire(self) -> str | None:
        order = await self.pick()
        if order is None:
            return None
        await self.jitter()
        await self.app.orders.expire_due(order.id)
        return "expire"

    async def race(self) -> str | None:
        """Two cancels and an expiry, maybe with a code, all on one order at once."""
        order = await self.pick()
        if order is None:
            return None
        racers: list[Coroutine[Any, Any, Any]] = [
            self.app.orders.cancel(order.user_id, order.id),
            self.app.orders.cancel(order.user_id, order.id),
            self.app.orders.expire_due(order.id),
        ]
        self.rng.shuffle(racers)
        # Sometimes the code comes just now: SMS-Man then refuses the reject, and the
        # poller may be fetching it at the same time.
        with_code = self.rng.random() < 0.5 and self.code_now(order)
        await asyncio.gather(*racers)
        return "race with a code" if with_code else "race"

    async def next_operation(self) -> None:
        ops: list[tuple[Op, int]] = [
            (self.credit, 14),
            (self.debit, 8),
            (self.buy, 30),
            (self.cancel, 14),
            (self.code, 14),
            (self.expire, 10),
            (self.race, 10),
        ]
        (op,) = self.rng.choices([o for o, _ in ops], weights=[w for _, w in ops])
        self.step += 1
        tag = f"{op.__name__} #{self.step}"
        self.busy.add(tag)
        did = await op()
        self.busy.discard(tag)
        if did is None:
            self.idle += 1
        else:
            self.seen[did] += 1


async def settle(app: App, smsman: FakeSmsMan, timeout: float = 10.0) -> None:
    """Until no waiting order has a code at SMS-Man the poller has yet to fetch."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        late = [
            order
            for order in await app.db.orders.list_open()
            if order.status is OrderStatus.WAITING
            and order.request_id in smsman.requests
            and smsman.requests[order.request_id].codes
        ]
        if not late:
            return
        assert loop.time() < deadline, f"codes never fetched for {[o.id for o in late]}"
        await asyncio.sleep(0.05)


async def check_books(db: Database, run: Run, smsman: FakeSmsMan) -> int:
    """Every check of the module docstring; returns the total still on hold."""
    assert await db.wallet.check_invariant() == []
    total_held = 0
    for user in USERS:
        available, held = await db.wallet.balance(user)
        orders = await db.orders.list_for_user(user, limit=10_000)
        assert held == sum(o.price for o in orders if o.money is Money.HELD)
        captured = sum(o.price for o in orders if o.money is Money.CAPTURED)
        assert available >= 0
        assert available + held + captured == run.credits[user] - run.debits[user], user
        for order in orders:
            request = smsman.requests.get(order.request_id or -1)
            got_code = request is not None and bool(request.codes)
            assert (order.money is Money.CAPTURED) == got_code, order
            assert order.money is not Money.NONE
        total_held += held
    return total_held


@pytest.mark.parametrize("seed", [1, 2])
async def test_randomised_concurrent_money_run_keeps_the_books(
    telegram: FakeTelegram,
    smsman: FakeSmsMan,
    bot_settings: SettingsFactory,
    tmp_path: Path,
    seed: int,
) -> None:
    smsman.balance = Decimal("1000000")
    for user in USERS:
        telegram.user(user, started=True)
    settings = bot_settings(
        **SHOP,
        max_active_orders=3,
        purchases_per_minute=1000,
        smsman_max_rps=1000,
        smsman_max_concurrency=50,
        sms_poll_interval=0.1,
    )
    async with running(settings) as app:
        run = Run(app, smsman, seed)
        for _ in range(3):  # some money to start with
            await run.credit()
        slots = asyncio.Semaphore(24)  # operations in flight at once

        async def one() -> None:
            async with slots:
                await run.next_operation()

        try:
            await asyncio.wait_for(asyncio.gather(*(one() for _ in range(OPERATIONS))), 60)
        except TimeoutError:
            stuck = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in stuck:
                task.print_stack(limit=6)
            raise AssertionError(f"operations stuck; in flight: {sorted(run.busy)}") from None
        await settle(app, smsman)
        await telegram.wait_idle(10.0)
        # Quiet now: no code is left to fetch and no deadline is near, so nothing moves.
        await check_books(app.db, run, smsman)
        # The orders still waiting end by expiry: every hold goes back.
        for order in await app.db.orders.list_open():
            if order.status is OrderStatus.WAITING:
                await app.orders.expire_due(order.id)
        await telegram.wait_idle(10.0)

    assert sum(run.seen.values()) >= 200, (run.seen, run.idle)
    # The mix really happened (interleavings vary, so only what is near certain).
    seen = run.seen
    for kind in ("credit", "debit", "buy bought", "buy short", "buy failed", "expire"):
        assert seen[kind] > 0, (kind, seen)
    assert seen["cancel done"] > 0 and seen["race"] + seen["race with a code"] > 0, seen
    assert seen["code"] + seen["race with a code"] > 0, seen

    async with await Database.open(settings.database_url) as db:  # after a clean stop
        held = await check_books(db, run, smsman)
        assert held == 0
    assert telegram.errors == []
