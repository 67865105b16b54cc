"""Writes a stream of credits, orders and transitions until killed.

Usage: python tests/storage_crash_worker.py DB_PATH SEED

After each commit it prints (and flushes) one line naming what is now durable:
    credit <ledger_id> <user_id> <amount>
    order <order_id> <status>
Several tasks write at once (each with its own users), so transactions interleave on the
writer like in the bot. The test SIGKILLs this process at a random moment.
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storage import Database, InsufficientFunds, TooManyActiveOrders
from storage.models import OrderStatus

S = OrderStatus
TASKS = 4
USERS_PER_TASK = 5


def report(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def writer(db: Database, seed: int, task: int) -> None:
    rng = random.Random(seed * 100 + task)
    users = [seed * 1000 + task * USERS_PER_TASK + i for i in range(USERS_PER_TASK)]
    mine: dict[int, OrderStatus] = {}
    step = 0
    while True:
        step += 1
        user = rng.choice(users)
        roll = rng.random()
        key = f"{seed}:{task}:{step}"
        if roll < 0.25:
            amount = rng.randint(100, 1000)
            row = await db.wallet.credit(user, amount, note=None, idempotency_key=f"c{key}")
            assert row is not None
            report(f"credit {row.id} {user} {amount}")
        elif roll < 0.55 or not [
            s for s in mine.values() if s in (S.PURCHASING, S.WAITING, S.RECEIVED)
        ]:
            try:
                order = await db.orders.create(
                    user_id=user,
                    chat_id=user,
                    country_id=1,
                    country_title="X",
                    service_id=1,
                    service_title="Y",
                    price=rng.randint(0, 200),
                    cost=10,
                    currency="RUB",
                    idempotency_key=f"o{key}",
                    multiple_sms=False,
                    hold=True,
                    max_active=20,
                )
            except (InsufficientFunds, TooManyActiveOrders):
                continue
            mine[order.id] = order.status
            report(f"order {order.id} {order.status}")
        else:
            order_id = rng.choice(
                [i for i, s in mine.items() if s in (S.PURCHASING, S.WAITING, S.RECEIVED)]
            )
            status = mine[order_id]
            if status is S.PURCHASING:
                if rng.random() < 0.8:
                    ok = await db.orders.mark_waiting(
                        order_id,
                        request_id=order_id,
                        number="+1",
                        expires_at=2e9,
                        next_poll_at=0,
                    )
                    new = S.WAITING
                else:
                    ok, new = await db.orders.mark_failed(order_id), S.FAILED
            elif status is S.WAITING:
                pick = rng.random()
                if pick < 0.4:
                    ok = await db.orders.add_code(order_id, "123") is not None
                    new = S.RECEIVED
                elif pick < 0.7:
                    ok, new = await db.orders.cancel(order_id), S.CANCELLED
                else:
                    ok, new = await db.orders.expire(order_id), S.EXPIRED
            else:
                ok, new = await db.orders.finish(order_id), S.FINISHED
            assert ok, (order_id, status, new)
            mine[order_id] = new
            report(f"order {order_id} {new}")


async def main() -> None:
    db = await Database.open(Path(sys.argv[1]))
    seed = int(sys.argv[2])
    report("ready")
    await asyncio.gather(*(writer(db, seed, task) for task in range(TASKS)))


if __name__ == "__main__":
    asyncio.run(main())
