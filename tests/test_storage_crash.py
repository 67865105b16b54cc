"""A writer process SIGKILLed mid-stream: the database opens, the books balance, and every
row the worker reported as committed is there."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from storage import Database
from storage.models import OPEN_STATUSES, OrderStatus
from storage.orders import TRANSITIONS
from tests.storage_crash_worker import TASKS

WORKER = Path(__file__).with_name("storage_crash_worker.py")
ROUNDS = 3


def run_and_kill(path: Path, seed: int, lines_before_kill: int) -> list[str]:
    """Start the worker, SIGKILL it after `lines_before_kill` reports, return every report."""
    process = subprocess.Popen(
        [sys.executable, str(WORKER), str(path), str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        for line in process.stdout:
            lines.append(line.strip())
            if len(lines) >= lines_before_kill:
                os.kill(process.pid, signal.SIGKILL)
                break
        # Whatever it printed before dying was committed too: read the pipe to the end.
        lines.extend(line.strip() for line in process.stdout)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        stderr = process.stderr.read() if process.stderr else ""
    assert process.returncode == -signal.SIGKILL, (process.returncode, stderr)
    assert lines and lines[0] == "ready", stderr
    return lines[1:]


async def test_sigkill_mid_stream_loses_nothing_committed(tmp_path: Path) -> None:
    path = tmp_path / "crash.sqlite3"
    rng = random.Random(1234)
    reported_status: dict[int, OrderStatus] = {}
    credits: dict[int, tuple[int, int]] = {}
    for round_ in range(ROUNDS):
        for line in run_and_kill(path, seed=round_ + 1, lines_before_kill=rng.randint(150, 600)):
            kind, *rest = line.split()
            if kind == "credit":
                credits[int(rest[0])] = (int(rest[1]), int(rest[2]))
            else:
                reported_status[int(rest[0])] = OrderStatus(rest[1])

        wal = path.with_name(path.name + "-wal")
        assert wal.exists() and wal.stat().st_size > 0  # recovery has work to do

        async with await Database.open(path) as db:
            assert await db.wallet.check_invariant() == []
            stored = {}
            for order_id, status in reported_status.items():
                order = await db.orders.get(order_id)
                assert order is not None, f"order {order_id} reported but lost"
                stored[order_id] = order.status
                # The stored status is the reported one, or one step further (the kill came
                # between the commit and its report).
                assert order.status is status or order.status in TRANSITIONS[status]
            ahead = [i for i, s in stored.items() if s is not reported_status[i]]
            assert len(ahead) <= TASKS
            for ledger_id, (user, amount) in credits.items():
                rows = await db.wallet.history(user, limit=100_000)
                assert any(r.id == ledger_id and r.amount == amount for r in rows), ledger_id
            every = await db.read(statuses)
            open_now = {o.id for o in await db.orders.list_open()}
            assert open_now == {i for i, s in every.items() if OrderStatus(s) in OPEN_STATUSES}
            assert {i for i, s in stored.items() if s in OPEN_STATUSES} <= open_now
            # Orders committed but not reported: at most one in flight per task.
            unreported = set(every) - set(stored)
            assert len(unreported) <= TASKS
            assert all(every[i] == OrderStatus.PURCHASING for i in unreported)
            # Carry on from what the database holds.
            reported_status.update({i: OrderStatus(s) for i, s in every.items()})


async def statuses(conn: Any) -> dict[int, str]:
    rows = await conn.exec_driver_sql("SELECT id, status FROM orders")
    return {row[0]: row[1] for row in rows}
