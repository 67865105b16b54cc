"""Storage throughput, one run, three engines: `.venv/bin/python bench/storage.py`.

Each operation runs on aiosqlite (a temporary file), on PostgreSQL (a temporary database
on BENCH_DATABASE_URL or TEST_DATABASE_URL, skipped without either), and on the sqlite3-era
storage of commit f5ed78b (checked out in a temporary git worktree), and the table shows
ops/s with the ratio aiosqlite / sqlite3-era. Each engine runs in its own process (the same
script with --worker), importing `storage` from its own tree.

Aims: orders.create + hold >= 1,000/s with 16 tasks on each engine; within 2x of the
sqlite3-era driver per operation on SQLite. Exits 1 when an aim is missed.

Mind the two drivers' durability: the sqlite3-era driver committed with synchronous=NORMAL
(no fsync per commit), today's with FULL (one fsync of the WAL per COMMIT, shared by the
calls that group commit batches together). So the run also measures this disk's bare commit
rates in both modes (stdlib sqlite3, one-row transactions, the same folder) and one bare
aiosqlite round trip (a no-op on the connection's thread): a *sequential* write on SQLite
can never beat one FULL commit plus one hop, whatever the driver does with its statements.
That floor is measured right after each sequential write (the shared disk drifts) and
printed with the share of it the write reached. The load average is printed too: the
machine is shared.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OLD_COMMIT = "f5ed78b"
N = int(os.environ.get("BENCH_N", "2000"))
USERS = 200
TASKS = 16
CREATE_CONCURRENT = "orders.create + hold (16 tasks)"
# The aiosqlite worker also measures, after each sequential write, its floor: one FULL commit
# plus one bare hop (keys FLOOR + label).
FLOORS = os.environ.get("BENCH_FLOORS") == "1"
FLOOR = "floor: "


async def concurrently(count: int, op: Callable[[int], Awaitable[object]]) -> None:
    async def worker(start: int) -> None:
        for i in range(start, count, TASKS):
            await op(i)

    await asyncio.gather(*(worker(start) for start in range(TASKS)))


async def sequential(count: int, op: Callable[[int], Awaitable[object]]) -> None:
    for i in range(count):
        await op(i)


async def bench(url: str) -> dict[str, float]:
    from storage import Database

    db = await Database.open(Path(url) if "://" not in url else url)
    rates: dict[str, float] = {}

    async def timed(label: str, run: Callable[[], Awaitable[None]]) -> None:
        start = time.perf_counter()
        await run()
        rates[label] = N / (time.perf_counter() - start)
        if FLOORS and "(sequential)" in label and not label.startswith("orders.get"):
            # Measured right after: the shared disk's fsync time drifts within a run.
            folder = Path(url.removeprefix("sqlite:///")).parent
            commit = 1 / disk_commit_rates(folder, modes=("FULL",))["FULL"]
            rates[f"{FLOOR}{label}"] = 1 / (commit + await hop_seconds(folder))

    async def credit(i: int, tag: str) -> None:
        await db.wallet.credit(i % USERS + 1, 10**9, note=None, idempotency_key=f"{tag}{i}")

    async def create(i: int, tag: str) -> None:
        await db.orders.create(
            user_id=i % USERS + 1,
            chat_id=i % USERS + 1,
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
            max_active=10**9,
        )

    try:
        await timed("wallet.credit (sequential)", lambda: sequential(N, lambda i: credit(i, "c")))
        await timed("wallet.credit (16 tasks)", lambda: concurrently(N, lambda i: credit(i, "d")))
        await timed(
            "orders.create + hold (sequential)", lambda: sequential(N, lambda i: create(i, "o"))
        )
        await timed(CREATE_CONCURRENT, lambda: concurrently(N, lambda i: create(i, "p")))
        orders = sorted(o.id for o in await db.orders.list_open())
        first, second = orders[:N], orders[N : 2 * N]

        async def waiting(i: int, ids: list[int]) -> None:
            assert await db.orders.mark_waiting(
                ids[i], request_id=ids[i], number="+7000", expires_at=2e9, next_poll_at=0
            )

        await timed(
            "orders.mark_waiting (sequential)", lambda: sequential(N, lambda i: waiting(i, first))
        )
        await timed(
            "orders.mark_waiting (16 tasks)", lambda: concurrently(N, lambda i: waiting(i, second))
        )

        async def cancel(i: int) -> None:
            assert await db.orders.cancel(first[i])

        async def code(i: int) -> None:
            assert await db.orders.add_code(second[i], "123456") is not None

        async def get(i: int) -> None:
            assert await db.orders.get(orders[i]) is not None

        async def balance(i: int) -> None:
            await db.wallet.balance(i % USERS + 1)

        await timed("orders.cancel + release (sequential)", lambda: sequential(N, cancel))
        await timed("orders.add_code + capture (16 tasks)", lambda: concurrently(N, code))
        await timed("orders.get (sequential)", lambda: sequential(N, get))
        await timed("wallet.balance (16 tasks)", lambda: concurrently(N, balance))
        assert await db.wallet.check_invariant() == []
    finally:
        await db.close()
    return rates


def disk_commit_rates(
    folder: Path, count: int = 300, modes: tuple[str, ...] = ("FULL", "NORMAL")
) -> dict[str, float]:
    """One-row commits per second on this disk, WAL with synchronous FULL and NORMAL."""
    import sqlite3

    rates = {}
    for mode in modes:
        conn = sqlite3.connect(folder / f"disk-{mode}.sqlite3", isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {mode}")
            conn.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
            start = time.perf_counter()
            for i in range(count):
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO t VALUES (?)", (i,))
                conn.execute("COMMIT")
            rates[mode] = count / (time.perf_counter() - start)
        finally:
            conn.close()
    return rates


async def hop_seconds(folder: Path, count: int = 1000) -> float:
    """One round trip to an aiosqlite connection's thread and back, doing nothing there."""
    import aiosqlite

    async with aiosqlite.connect(folder / "hop.sqlite3") as conn:
        # The private queue storage/sqlite_driver.py uses too (untyped in aiosqlite).
        on_thread: Callable[..., Awaitable[object]] = conn._execute
        for _ in range(100):
            await on_thread(int)
        start = time.perf_counter()
        for _ in range(count):
            await on_thread(int)
        return (time.perf_counter() - start) / count


def run_worker(url: str, tree: Path, *, floors: bool = False) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree), "BENCH_FLOORS": "1" if floors else "0"}
    done = subprocess.run(
        [sys.executable, __file__, "--worker", url],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench worker for {url} failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def _pg(statement: str, base: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(base.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def main() -> int:
    columns: dict[str, dict[str, float]] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        disk = disk_commit_rates(Path(folder))
        columns["aiosqlite"] = run_worker(f"sqlite:///{folder}/new.sqlite3", ROOT, floors=True)
        base = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL")
        if base:
            name = f"bench_{uuid.uuid4().hex[:12]}"
            asyncio.run(_pg(f'CREATE DATABASE "{name}"', base))
            try:
                columns["PostgreSQL"] = run_worker(f"{base.rsplit('/', 1)[0]}/{name}", ROOT)
            finally:
                asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', base))
        old = Path(folder) / "old-tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), OLD_COMMIT],
            check=True,
            capture_output=True,
        )
        try:
            columns[f"sqlite3 ({OLD_COMMIT})"] = run_worker(str(Path(folder) / "old.sqlite3"), old)
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False
            )
    names = list(columns)
    old_name = names[-1]
    print(f"{N} ops per line, {TASKS} tasks where said; ops/s\n")
    print(f"{'operation':<40}" + "".join(f"{n:>20}" for n in names) + f"{'aiosqlite/sqlite3':>20}")
    missed = []
    labels = [label for label in columns["aiosqlite"] if not label.startswith(FLOOR)]
    for label in labels:
        ratio = columns["aiosqlite"][label] / columns[old_name][label]
        cells = "".join(f"{columns[n][label]:>20,.0f}" for n in names)
        print(f"{label:<40}{cells}{ratio:>20.2f}")
        if ratio < 0.5:
            missed.append(f"{label}: aiosqlite at {ratio:.2f}x of the sqlite3-era driver")
    for name in names[:-1]:
        if columns[name][CREATE_CONCURRENT] < 1000:
            missed.append(f"{CREATE_CONCURRENT} on {name}: below 1,000/s")
    load = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(load_before, os.getloadavg(), strict=True))
    print(
        f"\nthis disk, bare sqlite3 one-row commits: {disk['FULL']:,.0f}/s with synchronous=FULL,"
        f" {disk['NORMAL']:,.0f}/s with NORMAL"
    )
    print("sequential writes against their floor (one FULL commit + one hop, measured after):")
    for label in labels:
        floor = columns["aiosqlite"].get(f"{FLOOR}{label}")
        if floor is not None:
            reached = columns["aiosqlite"][label] / floor
            print(
                f"  {label:<38} floor {floor:>6,.0f}/s, reached {reached:.0%};"
                f" the floor is {floor / columns[old_name][label]:.2f}x the sqlite3-era figure"
            )
    print(f"load average (1, 5, 15 min) before/after: {load}")
    if "PostgreSQL" not in columns:
        print("\nPostgreSQL: not run (set BENCH_DATABASE_URL or TEST_DATABASE_URL)")
    for line in missed:
        print(f"AIM MISSED: {line}")
    return 1 if missed else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        # `storage` must be the tree's package, not this script (its folder is sys.path[0]).
        here = Path(__file__).resolve().parent
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
        sys.path.insert(0, os.environ["PYTHONPATH"].split(os.pathsep)[0])
        sys.modules.pop("storage", None)
        print(json.dumps(asyncio.run(bench(sys.argv[2]))))
    else:
        sys.exit(main())
