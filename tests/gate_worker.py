"""One replica's share of tests/test_redis.py's two-process run: CALLS calls through a
SharedCallGate on Redis, each held HOLD seconds; prints one `start end` line (wall clock)
per call. Usage: python -m tests.gate_worker REDIS_URL PREFIX CALLS HOLD"""

from __future__ import annotations

import asyncio
import sys
import time

from redis.asyncio import Redis

from bot.smsman.shared_gate import SharedCallGate


async def main(url: str, prefix: str, calls: int, hold: float) -> None:
    redis = Redis.from_url(url)
    gate = SharedCallGate(redis, prefix=prefix, max_concurrency=3, max_rps=20, lease=10)
    spans: list[tuple[float, float]] = []

    async def call() -> None:
        await gate.acquire()
        started = time.time()
        try:
            await asyncio.sleep(hold)
        finally:
            spans.append((started, time.time()))
            gate.release()

    await asyncio.gather(*(call() for _ in range(calls)))
    await gate.drain()
    await redis.aclose()
    for started, ended in spans:
        print(f"{started:.6f} {ended:.6f}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
