"""storage under concurrency: the same transition from many tasks, exactly one winner;
money moves exactly once; two connections (as two processes would) race correctly."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar

import pytest

from storage import Database, DuplicateOrder, InsufficientFunds, TooManyActiveOrders
from storage.models import LedgerKind, Money, OrderStatus
from tests.test_storage import new_order, order_in

S = OrderStatus
T = TypeVar("T")
TASKS = 50


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = await Database.open(database_url)
    try:
        yield database
    finally:
        await database.close()


async def race(calls: Sequence[Awaitable[T]]) -> list[T | BaseException]:
    """Start every call at once (shuffled) and collect results and errors."""
    shuffled = list(calls)
    random.shuffle(shuffled)
    return await asyncio.gather(*shuffled, return_exceptions=True)


async def kinds_of(db: Database, user_id: int, order_id: int) -> list[LedgerKind]:
    """The kinds of an order's ledger rows, in the order they were written."""
    rows = await db.wallet.history(user_id, limit=10_000)
    return [row.kind for row in reversed(rows) if row.order_id == order_id]


@pytest.mark.parametrize("name", ["cancel", "expire", "mark_failed", "finish"])
async def test_same_transition_from_50_tasks_one_winner(db: Database, name: str) -> None:
    source = {"cancel": S.WAITING, "expire": S.WAITING, "mark_failed": S.PURCHASING}.get(
        name, S.RECEIVED
    )
    order = await order_in(db, source)
    results = await race([getattr(db.orders, name)(order.id) for _ in range(TASKS)])
    assert results.count(True) == 1 and results.count(False) == TASKS - 1
    kinds = await kinds_of(db, 1, order.id)
    if name == "finish":
        assert kinds == [LedgerKind.HOLD, LedgerKind.CAPTURE]
    else:
        assert kinds == [LedgerKind.HOLD, LedgerKind.RELEASE]
    assert await db.wallet.check_invariant() == []


async def test_cancel_versus_expiry_one_winner_one_release(db: Database) -> None:
    for _ in range(5):
        order = await order_in(db, S.WAITING, price=30)
        calls = [db.orders.cancel(order.id) for _ in range(TASKS // 2)]
        calls += [db.orders.expire(order.id) for _ in range(TASKS // 2)]
        results = await race(calls)
        assert results.count(True) == 1
        got = await db.orders.get(order.id)
        assert got is not None and got.status in (S.CANCELLED, S.EXPIRED)
        assert got.money is Money.RELEASED
        assert await kinds_of(db, 1, order.id) == [LedgerKind.HOLD, LedgerKind.RELEASE]
    assert await db.wallet.balance(1) == (150, 0)
    assert await db.wallet.check_invariant() == []


async def test_cancel_versus_code_exactly_one_outcome(db: Database) -> None:
    for _ in range(5):
        order = await order_in(db, S.WAITING)
        calls: list[Awaitable[object]] = [db.orders.cancel(order.id) for _ in range(TASKS // 2)]
        calls += [db.orders.add_code(order.id, "777") for _ in range(TASKS // 2)]
        results = await race(calls)
        got = await db.orders.get(order.id)
        assert got is not None
        stored = [r for r in results if r is not None and r is not True and r is not False]
        if got.status is S.CANCELLED:
            assert results.count(True) == 1 and stored == []
            assert await kinds_of(db, 1, order.id) == [LedgerKind.HOLD, LedgerKind.RELEASE]
        else:
            assert got.status is S.RECEIVED and len(stored) == 1 and True not in results
            assert await kinds_of(db, 1, order.id) == [LedgerKind.HOLD, LedgerKind.CAPTURE]
    assert await db.wallet.check_invariant() == []


async def test_codes_from_50_tasks_capture_once(db: Database) -> None:
    order = await order_in(db, S.WAITING, multiple_sms=True)
    same = await race([db.orders.add_code(order.id, "1234") for _ in range(TASKS)])
    assert sum(r is not None for r in same) == 1
    different = await race([db.orders.add_code(order.id, f"c{i}") for i in range(TASKS)])
    assert all(r is not None for r in different)
    assert len(await db.orders.codes_of(order.id)) == TASKS + 1
    assert await kinds_of(db, 1, order.id) == [LedgerKind.HOLD, LedgerKind.CAPTURE]
    assert await db.wallet.check_invariant() == []


async def test_same_idempotency_key_from_50_tasks_one_order(db: Database) -> None:
    await db.wallet.credit(1, 10_000, note=None, idempotency_key="t")
    results = await race([new_order(db, key="tap") for _ in range(TASKS)])
    created = [r for r in results if not isinstance(r, BaseException)]
    duplicates = [r for r in results if isinstance(r, DuplicateOrder)]
    assert len(created) == 1 and len(duplicates) == TASKS - 1
    assert all(d.order == created[0] for d in duplicates)
    assert await db.wallet.balance(1) == (9_900, 100)


async def test_balance_and_limit_hold_under_a_rush(db: Database) -> None:
    await db.wallet.credit(1, 1_000, note=None, idempotency_key="t")
    results = await race([new_order(db, price=100) for _ in range(TASKS)])
    assert sum(not isinstance(r, BaseException) for r in results) == 10
    assert sum(isinstance(r, InsufficientFunds) for r in results) == TASKS - 10
    assert await db.wallet.balance(1) == (0, 1_000)

    results = await race([new_order(db, user_id=2, hold=False, max_active=5) for _ in range(TASKS)])
    assert sum(not isinstance(r, BaseException) for r in results) == 5
    assert sum(isinstance(r, TooManyActiveOrders) for r in results) == TASKS - 5
    assert await db.wallet.check_invariant() == []


async def test_credits_with_one_key_from_50_tasks(db: Database) -> None:
    results = await race(
        [db.wallet.credit(1, 10, note=None, idempotency_key="once") for _ in range(TASKS)]
    )
    assert sum(r is not None for r in results) == 1
    results = await race(
        [db.wallet.credit(1, 10, note=None, idempotency_key=f"k{i}") for i in range(TASKS)]
    )
    assert all(r is not None for r in results)
    assert await db.wallet.balance(1) == (10 * (TASKS + 1), 0)


async def test_two_connections_race_like_two_processes(database_url: str) -> None:
    first = await Database.open(database_url)
    second = await Database.open(database_url)
    try:
        for _ in range(5):
            order = await order_in(first, S.WAITING)
            calls = [first.orders.cancel(order.id) for _ in range(TASKS // 2)]
            calls += [second.orders.expire(order.id) for _ in range(TASKS // 2)]
            results = await race(calls)
            assert results.count(True) == 1
            assert await kinds_of(second, 1, order.id) == [LedgerKind.HOLD, LedgerKind.RELEASE]
        # Credits through both at once: the balance sees every one.
        calls2 = [
            db.wallet.credit(9, 1, note=None, idempotency_key=f"x{i}")
            for i, db in enumerate([first, second] * 25)
        ]
        assert all(r is not None for r in await race(calls2))
        assert await first.wallet.balance(9) == (50, 0)
        assert await second.wallet.check_invariant() == []
    finally:
        await first.close()
        await second.close()


async def test_reads_during_writes(db: Database) -> None:
    await db.wallet.credit(1, 100_000, note=None, idempotency_key="t")

    async def writer(i: int) -> None:
        order = await new_order(db, key=f"w{i}")
        await db.orders.mark_waiting(
            order.id, request_id=order.id, number="+1", expires_at=2e9, next_poll_at=0
        )
        await (db.orders.cancel if i % 2 else db.orders.expire)(order.id)

    async def reader() -> None:
        for _ in range(20):
            available, held = await db.wallet.balance(1)
            assert available + held <= 100_000
            await db.orders.list_open()

    await asyncio.gather(*(writer(i) for i in range(TASKS)), *(reader() for _ in range(5)))
    assert await db.wallet.balance(1) == (100_000, 0)
    assert await db.wallet.check_invariant() == []


async def test_cancelled_caller_leaves_a_whole_transaction(db: Database) -> None:
    """Cancelling the awaiting task never leaves half a transaction."""
    await db.wallet.credit(1, 100_000, note=None, idempotency_key="t")
    tasks = [asyncio.create_task(new_order(db, key=f"c{i}")) for i in range(TASKS)]
    await asyncio.sleep(0)
    for task in tasks[::2]:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await db.drain()  # a cancelled caller's transaction still ends on its own
    made = await db.orders.list_for_user(1, limit=1000)
    available, held = await db.wallet.balance(1)
    assert held == 100 * len(made) and available == 100_000 - held
    assert await db.wallet.check_invariant() == []


async def test_cancelling_callers_at_random_points_of_1000_transactions(db: Database) -> None:
    """Callers are cancelled at random moments of 1,000 money transactions (create with a
    hold, mark_waiting, add_code, cancel, credit): each one commits whole or not at all."""
    rng = random.Random(13)
    users = range(1, 9)
    for user in users:
        await db.wallet.credit(user, 1_000_000, note=None, idempotency_key=f"seed-{user}")
    waiting: list[int] = []
    received: list[int] = []

    async def one(i: int) -> None:
        user = rng.choice(users)
        kind = rng.random()
        if kind < 0.35 or not waiting:
            order = await new_order(db, user, price=rng.randint(1, 500), key=f"r{i}")
            if await db.orders.mark_waiting(
                order.id, request_id=order.id, number="+1", expires_at=2e9, next_poll_at=0
            ):
                waiting.append(order.id)
        elif kind < 0.6:
            order_id = waiting.pop(rng.randrange(len(waiting)))
            if await db.orders.add_code(order_id, f"code{i}") is not None:
                received.append(order_id)
        elif kind < 0.8:
            await db.orders.cancel(waiting.pop(rng.randrange(len(waiting))))
        elif kind < 0.9 and received:
            await db.orders.finish(received.pop())
        else:
            await db.wallet.credit(user, rng.randint(1, 100), note=None, idempotency_key=f"k{i}")

    cancelled = 0
    for batch in range(0, 1000, 25):
        tasks = [asyncio.create_task(one(i)) for i in range(batch, batch + 25)]
        # A random number of loop turns: callers die before, during or after their commit.
        for _ in range(rng.randint(0, 12)):
            await asyncio.sleep(0)
        for task in tasks:
            if rng.random() < 0.5 and task.cancel():
                cancelled += 1
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            # A caller that was not cancelled never sees the others' cancellations.
            assert not isinstance(outcome, Exception), repr(outcome)
    assert cancelled > 300
    await db.drain()  # orphaned transactions end on their own
    assert await db.wallet.check_invariant() == []
    for order in await db.orders.list_open():
        kinds = await kinds_of(db, order.user_id, order.id)
        if order.status in (S.PURCHASING, S.WAITING):
            assert kinds == [LedgerKind.HOLD] and order.money is Money.HELD
        elif order.status is S.RECEIVED:
            assert kinds == [LedgerKind.HOLD, LedgerKind.CAPTURE]
            assert len(await db.orders.codes_of(order.id)) == 1


async def test_a_started_transaction_ends_whole_though_its_caller_is_cancelled(
    db: Database,
) -> None:
    """The caller is cancelled between two statements of one transaction: the transaction
    still runs to its COMMIT on its own (it is not cut at the cancelled await)."""
    from sqlalchemy import text

    started: threading.Event | asyncio.Event
    go: threading.Event | asyncio.Event
    if db.is_sqlite:
        # The transaction runs on the connection's thread (storage/inline.py), where it may
        # await only its statements: it holds that thread between the two instead.
        started, go = threading.Event(), threading.Event()

        async def pause() -> None:
            assert isinstance(go, threading.Event)
            go.wait(10)

        async def wait_started() -> None:
            assert isinstance(started, threading.Event)
            await asyncio.to_thread(started.wait, 10)
    else:
        started, go = asyncio.Event(), asyncio.Event()

        async def pause() -> None:
            assert isinstance(go, asyncio.Event)
            await go.wait()

        async def wait_started() -> None:
            assert isinstance(started, asyncio.Event)
            await started.wait()

    async def two_rows(conn: Any) -> None:
        await conn.execute(text("INSERT INTO kv (key, value) VALUES ('first', '1')"))
        started.set()
        await pause()
        await conn.execute(text("INSERT INTO kv (key, value) VALUES ('second', '2')"))

    caller = asyncio.create_task(db.write(two_rows))
    await wait_started()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    go.set()
    await db.drain()
    assert (await db.kv.get("first"), await db.kv.get("second")) == ("1", "2")
