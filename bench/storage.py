"""Storage throughput on a temporary file database: `.venv/bin/python bench/storage.py`.

Prints operations per second for: creating an order with its hold, one state transition,
one ledger row (credit), and a few reads; sequentially (one task awaiting each call) and
from concurrent tasks.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storage import Database

N = 5000
USERS = 500
TASKS = 16


async def timed(label: str, count: int, run: Callable[[], Awaitable[None]]) -> float:
    start = time.perf_counter()
    await run()
    elapsed = time.perf_counter() - start
    rate = count / elapsed
    print(f"{label:<44} {count:>6} ops  {elapsed:7.3f} s  {rate:>9,.0f} ops/s")
    return rate


async def concurrently(count: int, op: Callable[[int], Awaitable[object]]) -> None:
    async def worker(start: int) -> None:
        for i in range(start, count, TASKS):
            await op(i)

    await asyncio.gather(*(worker(start) for start in range(TASKS)))


async def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        db = await Database.open(Path(folder) / "bench.sqlite3")
        try:
            await bench(db)
        finally:
            await db.close()


async def bench(db: Database) -> None:
    print(f"SQLite {__import__('sqlite3').sqlite_version}, {N} ops per line, {TASKS} tasks\n")

    async def credit(i: int, tag: str = "c") -> None:
        await db.wallet.credit(i % USERS, 1_000_000, note=None, idempotency_key=f"{tag}{i}")

    async def create(i: int, tag: str = "o") -> None:
        await db.orders.create(
            user_id=i % USERS,
            chat_id=i % USERS,
            country_id=1,
            country_title="Russia",
            service_id=2,
            service_title="Telegram",
            price=1500,
            cost=1000,
            currency="RUB",
            idempotency_key=f"{tag}{i}",
            multiple_sms=False,
            hold=True,
            max_active=1_000_000,
        )

    async def sequential(op: Callable[[int], Awaitable[object]], start: int = 0) -> None:
        for i in range(start, start + N):
            await op(i)

    await timed("wallet.credit (sequential)", N, lambda: sequential(credit))
    await timed("wallet.credit (concurrent)", N, lambda: concurrently(N, lambda i: credit(i, "cc")))
    await timed("orders.create + hold (sequential)", N, lambda: sequential(create))
    await timed(
        "orders.create + hold (concurrent)",
        N,
        lambda: concurrently(N, lambda i: create(i, "oc")),
    )

    orders = [o.id for o in await db.orders.list_open()]
    first, second = orders[:N], orders[N : 2 * N]

    async def waiting(i: int, ids: list[int]) -> None:
        assert await db.orders.mark_waiting(
            ids[i], request_id=ids[i], number="+70000000000", expires_at=2e9, next_poll_at=0
        )

    await timed(
        "orders.mark_waiting (sequential)", N, lambda: sequential(lambda i: waiting(i, first))
    )
    await timed(
        "orders.mark_waiting (concurrent)", N, lambda: concurrently(N, lambda i: waiting(i, second))
    )

    async def due(_: int) -> None:
        assert len(await db.orders.list_due(time.time(), 50)) == 50

    await timed(
        f"orders.list_due(limit=50) of {2 * N} waiting", 1000, lambda: sequential_n(due, 1000)
    )

    async def cancel(i: int, ids: list[int]) -> None:
        assert await db.orders.cancel(ids[i])

    await timed(
        "orders.cancel + release (sequential)", N, lambda: sequential(lambda i: cancel(i, first))
    )

    async def code(i: int, ids: list[int]) -> None:
        assert await db.orders.add_code(ids[i], "123456") is not None

    await timed(
        "orders.add_code + capture (concurrent)",
        N,
        lambda: concurrently(N, lambda i: code(i, second)),
    )

    async def get(i: int) -> None:
        assert await db.orders.get(orders[i]) is not None

    await timed("orders.get (sequential)", N, lambda: sequential(get))

    async def balance(i: int) -> None:
        await db.wallet.balance(i % USERS)

    await timed("wallet.balance (concurrent)", N, lambda: concurrently(N, balance))

    rows = await db.read(lambda c: c.execute("SELECT COUNT(*) FROM ledger").fetchone()[0])
    start = time.perf_counter()
    problems = await db.wallet.check_invariant()
    print(
        f"\ncheck_invariant over {len(orders)} orders, {rows} ledger rows:"
        f" {time.perf_counter() - start:.3f} s, {len(problems)} problems"
    )


async def sequential_n(op: Callable[[int], Awaitable[object]], count: int) -> None:
    for i in range(count):
        await op(i)


if __name__ == "__main__":
    asyncio.run(main())
