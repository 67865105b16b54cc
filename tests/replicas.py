"""Several replicas of `python -m bot` in webhook mode on one database and one Redis.

    cluster = Cluster.for_fakes(telegram, smsman, tmp_path, count=3,
                                database_url=pg_url, redis_url=redis_url, **settings)
    await cluster.start()          # all of them, each on its own HTTP_PORT
    await cluster.kill(1)          # SIGKILL replica 1; the load balancer stops posting to it
    await cluster.revive(1)        # start it again; the load balancer posts to it again
    await cluster.stop()           # SIGTERM every replica still running

The fake Telegram plays the load balancer (`route_webhook`): it spreads the updates over
the replicas that are up, and posts again (to another one) whatever got no 2xx, as Telegram
does. A replica is ready when its own setWebhook was accepted (bot/app.py sets it once its
server listens), so several can start at once.

Redis is shared with other tests and helpers: each cluster gets a bot token and an SMS-Man
token of its own, so its keys (FSM `fsm:{bot_id}:...`, the budgets keyed by the tokens) are
its own; `forget_redis_keys` deletes them afterwards.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sandbox.smsman import FakeSmsMan
from sandbox.telegram import FakeTelegram
from tests.botproc import BotProcess, free_port, webhook_settings


def fresh_tokens() -> tuple[str, str]:
    """A bot token (with a bot id of its own) and an SMS-Man token nobody else uses."""
    bot_id = 700_000_000 + secrets.randbelow(99_999_999)
    return f"{bot_id}:REPLICAS-{secrets.token_hex(8)}", f"replicas-smsman-{secrets.token_hex(8)}"


class Replica(BotProcess):
    """A BotProcess whose readiness is its own setWebhook (others share the fake)."""

    def __init__(self, index: int, port: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.index = index
        self.port = port
        self.up = False  # ready and not killed since: the load balancer posts to it

    @property
    def url(self) -> str:
        return self.settings["WEBHOOK_URL"]

    def _ready(self, calls_before: int) -> bool:
        assert self.telegram is not None
        return any(
            call.method == "setWebhook" and call.ok and call.params.get("url") == self.url
            for call in self.telegram.calls[calls_before:]
        )


class Cluster:
    def __init__(self, telegram: FakeTelegram, replicas: list[Replica]) -> None:
        self.telegram = telegram
        self.replicas = replicas
        self.kills: list[tuple[float, int]] = []  # (monotonic time of the SIGKILL, index)

    @classmethod
    def for_fakes(
        cls,
        telegram: FakeTelegram,
        smsman: FakeSmsMan,
        workdir: Path,
        *,
        count: int,
        database_url: str,
        redis_url: str,
        **settings: Any,
    ) -> Cluster:
        """`count` replicas on one database and one Redis, each in `workdir/replica-N`
        (its log) on a free port; keyword arguments are Settings fields for all of them."""
        replicas = []
        for index in range(count):
            port = free_port()
            values = {
                **webhook_settings(port),
                "database_url": database_url,
                "redis_url": redis_url,
                **settings,
            }
            folder = workdir / f"replica-{index}"
            template = BotProcess.for_fakes(telegram, smsman, folder, **values)
            replicas.append(
                Replica(
                    index,
                    port,
                    settings=template.settings,
                    workdir=folder,
                    telegram=telegram,
                )
            )
        return cls(telegram, replicas)

    @property
    def database_url(self) -> str:
        return self.replicas[0].database_url

    def _route(self) -> None:
        """The load balancer's view: replicas that run (a health check would say so)."""
        self.telegram.route_webhook(r.url for r in self.up)

    @property
    def up(self) -> list[Replica]:
        return [r for r in self.replicas if r.up and r.running]

    async def start(self, timeout: float = 90.0) -> None:
        """Start every replica at once (as `docker compose up` does) and route to them."""
        await asyncio.gather(*(r.start(timeout) for r in self.replicas if not r.running))
        for replica in self.replicas:
            replica.up = True
        self._route()

    async def kill(self, index: int) -> None:
        """SIGKILL one replica. Posts already on their way to it fail and are posted again
        to another, as Telegram does; new ones no longer go to it."""
        replica = self.replicas[index]
        replica.up = False
        await replica.kill()
        # Stamped once the process is dead: a send that reached Telegram while the
        # SIGKILL was on its way still belongs to the run it interrupted.
        self.kills.append((time.monotonic(), index))
        self._route()

    async def revive(self, index: int, timeout: float = 90.0) -> None:
        await self.replicas[index].start(timeout)
        self.replicas[index].up = True
        self._route()

    async def stop(self) -> list[int | None]:
        """SIGTERM every running replica (all at once); their exit statuses."""

        async def one(replica: Replica) -> int | None:
            if not replica.running:
                return replica.returncode
            return await replica.terminate()

        return list(await asyncio.gather(*(one(r) for r in self.replicas)))

    async def ensure_stopped(self) -> None:
        await asyncio.gather(*(r.stop() for r in self.replicas))

    def log_text(self) -> str:
        return "\n".join(f"===== replica {r.index} =====\n{r.log_text()}" for r in self.replicas)


async def forget_redis_keys(redis_url: str, tokens: Iterable[str]) -> int:
    """Delete the keys a cluster with these tokens left in Redis; returns how many."""
    from redis.asyncio import Redis

    patterns: set[str] = set()
    for token in tokens:
        head = token.split(":", 1)[0]
        if head.isdigit():
            patterns.add(f"*{head}*")  # aiogram's FSM keys carry the bot id
        digest = hashlib.sha256(token.encode()).hexdigest()[:16]
        patterns.add(f"*{digest}*")  # budgets are keyed by a digest of the token
    client = Redis.from_url(redis_url)
    deleted = 0
    try:
        for pattern in patterns:
            keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
            if keys:
                deleted += await client.delete(*keys)
    finally:
        await client.aclose()
    return deleted


class StallWatch:
    """When this process's event loop (the one the fakes stamp their calls on) woke late.

    A fake stamps a request when its handler runs; while this loop is stalled (a long
    step, or no CPU on a loaded machine) requests wait in the kernel and are all stamped
    when it wakes, so a one-second window after a stall can count more than a second's
    worth. `busiest_second` judges only windows in which no stall longer than `threshold`
    ended, and says how many windows it left out."""

    def __init__(self, threshold: float = 0.05, interval: float = 0.01) -> None:
        self.threshold = threshold
        self.interval = interval
        self.stall_ends: list[float] = []  # time.monotonic() when a late wake-up came
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            lag = now - before - self.interval
            self.lags.append(lag)
            if lag > self.threshold:
                self.stall_ends.append(now)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def busiest_second(self, stamps: Iterable[float]) -> tuple[int, int]:
        """(most stamps in any one-second window in which no stall ended, most in any
        window at all)."""
        times = sorted(stamps)
        judged = raw = start = 0
        for end, at in enumerate(times):
            while at - times[start] >= 1.0:
                start += 1
            count = end - start + 1
            raw = max(raw, count)
            first = bisect.bisect_left(self.stall_ends, times[start])
            if first == len(self.stall_ends) or self.stall_ends[first] > at:
                judged = max(judged, count)
        return judged, raw

    def summary(self) -> str:
        if not self.lags:
            return "not sampled"
        ordered = sorted(self.lags)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        return (
            f"p99 {p99 * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms,"
            f" {len(self.stall_ends)} stalls > {self.threshold * 1000:.0f} ms"
        )
