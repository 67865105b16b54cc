"""Polling and delivery split over replicas: `.venv/bin/python bench/replicas.py
[--n 1000] [--replicas 1 2 3]`.

For each N and each replica count R: N waiting orders (one user each) in a fresh PostgreSQL
database, bought before the bot starts the way bench/poller.py does it, then R replicas of
`python -m bot` in webhook mode (tests/replicas.py) on that database and one Redis, against
the fake SMS-Man (`--latency` seconds per call) and the fake Telegram over HTTP.
SMS_POLL_INTERVAL 3 s; the caps above the demand (SMSMAN_MAX_RPS 1000, concurrency 100,
TELEGRAM_MAX_RPS 80 at a fake allowing 100: each code costs two sends, the code and the
card), so what is measured is how the replicas split the work, not a budget.

After the replicas are ready, `--settle` poll cycles (the orders shared out by their
leases), then `--cycles` cycles measuring the get-sms rate (ideal N / interval: each
order polled by one replica at a time, once per interval); then each order's code appears
at a random moment over `--spread` seconds. A code's delay runs from the moment it
appeared at the fake SMS-Man to the moment the fake Telegram accepted the message carrying
it. Printed per run: p50 / p99 / max delay, codes undelivered or delivered twice, get-sms
per second against the ideal, the busiest second of get-sms at the fake SMS-Man, the CPU
seconds of the replicas, and the load average (the machine is shared: figures are noisy).

Aims: p99 <= interval + 0.5 s at every N and replica count, every code delivered once,
and the replicas splitting the polls rather than repeating them: a get-sms rate at most
5 % above the higher of N / interval and the rate one replica showed at that N (the poll
schedule itself may poll a little faster than the interval), and at most 5 % below
N / interval. Replicas that each polled every order would show R times it. Exit status 1
when an aim is missed.

Needs PostgreSQL (`--database-url`, default TEST_DATABASE_URL or the local test server;
each run makes and drops a database of its own) and Redis (`--redis-url`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import LoopLag, percentile
from bench.poller import busiest_second, make_orders
from sandbox.smsman import FakeSmsMan
from sandbox.telegram import FakeTelegram
from tests.replicas import Cluster, forget_redis_keys, fresh_tokens

DEFAULT_DATABASE = "postgresql://postgres@127.0.0.1:5432/test"
CODE_MARK = "🔔"


@dataclass
class Run:
    n: int
    replicas: int
    interval: float
    delays: list[float]
    found: list[float]  # of each delay: code available -> the get-sms that found it
    undelivered: int
    twice: int
    rate: float  # get-sms per second over the measuring cycles
    busiest: int  # most get-sms in any one-second window, over the whole run
    cpu_s: float  # the replicas' CPU seconds, start to end
    bench_cpu_s: float  # this process's (the fakes', the measuring) over the same time
    seconds: float
    load: tuple[float, float, float]
    loop_lag: str
    baseline: float = 0.0  # one replica's get-sms rate at this N (0: not measured)

    @property
    def ideal(self) -> float:
        return self.n / self.interval

    @property
    def p99(self) -> float:
        return percentile(self.delays, 99)

    def misses(self) -> list[str]:
        found = []
        if not self.p99 <= self.interval + 0.5:
            found.append(f"p99 {self.p99:.2f}s > {self.interval + 0.5:g}s")
        if self.undelivered or self.twice:
            found.append(f"{self.undelivered} codes undelivered, {self.twice} twice")
        most = 1.05 * max(self.ideal, self.baseline)
        if not 0.95 * self.ideal <= self.rate <= most:
            found.append(f"get-sms {self.rate:.1f}/s outside {0.95 * self.ideal:.1f}-{most:.1f}/s")
        return found

    def line(self) -> str:
        return (
            f"N={self.n:>5} R={self.replicas}  p50={percentile(self.delays, 50):5.2f}s"
            f"  p99={self.p99:5.2f}s  max={max(self.delays, default=float('nan')):5.2f}s"
            f" (of which polling: p50={percentile(self.found, 50):5.2f}s"
            f" p99={percentile(self.found, 99):5.2f}s)"
            f"  undelivered={self.undelivered} twice={self.twice}"
            f"  get-sms={self.rate:6.1f}/s (ideal {self.ideal:.1f},"
            f" {100 * (self.rate / self.ideal - 1):+5.1f}%)  busiest 1s={self.busiest:>4}"
            f"  CPU: replicas {self.cpu_s:5.1f}s, fakes {self.bench_cpu_s:5.1f}s,"
            f" in {self.seconds:4.0f}s"
            f"  load {self.load[0]:.1f} {self.load[1]:.1f} {self.load[2]:.1f}"
            f"  {'OK' if not self.misses() else 'MISSED: ' + '; '.join(self.misses())}"
        )


@contextlib.asynccontextmanager
async def fresh_database(base: str) -> AsyncIterator[str]:
    """A database of its own on `base`'s server, dropped afterwards."""
    import asyncpg

    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = base.replace("postgresql+asyncpg://", "postgresql://")

    async def execute(statement: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    await execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{admin.rsplit('/', 1)[0]}/{name}"
    finally:
        await execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def code_sends(telegram: FakeTelegram) -> dict[str, list[float]]:
    """Code messages Telegram accepted: code -> arrival times."""
    found: dict[str, list[float]] = {}
    for call in telegram.calls_to("sendMessage"):
        text = str(call.params.get("text", ""))
        if call.ok and text.startswith(CODE_MARK):
            code = text.rsplit("<code>", 1)[-1].split("</code>", 1)[0]
            found.setdefault(code, []).append(call.time)
    return found


async def run(n: int, replicas: int, args: argparse.Namespace) -> Run:
    rng = random.Random(args.seed)
    interval = args.interval
    bot_token, smsman_token = fresh_tokens()
    telegram = FakeTelegram(token=bot_token, max_per_second=100)
    smsman = FakeSmsMan(token=smsman_token, seed=args.seed)
    smsman.default_catalogue()
    lag = LoopLag()
    await telegram.start()
    await smsman.start()
    try:
        async with fresh_database(args.database_url) as url:
            with tempfile.TemporaryDirectory() as name:
                folder = Path(name)
                requests = await make_orders(folder, smsman, n, database_url=url)
                for i in range(n):
                    telegram.user(1_000_000 + i, started=True)
                smsman.latency = args.latency
                smsman.calls.clear()
                cluster = Cluster.for_fakes(
                    telegram,
                    smsman,
                    folder,
                    count=replicas,
                    database_url=url,
                    redis_url=args.redis_url,
                    sms_poll_interval=interval,
                    smsman_max_rps=1000,
                    smsman_max_concurrency=100,
                    smsman_timeout=5,
                    telegram_max_rps=80,
                    activation_timeout=1200,
                    log_level="WARNING",
                    admin_ids=[],
                    allowed_user_ids=[],
                )
                started, cpu_before = time.monotonic(), time.process_time()
                lag.start()
                try:
                    await cluster.start(timeout=120)
                    ready = time.monotonic()
                    window = (
                        ready + interval * args.settle,
                        ready + interval * (args.settle + args.cycles),
                    )
                    await asyncio.sleep(window[1] - time.monotonic())
                    codes: dict[str, float] = {}
                    base = time.monotonic() + 0.5
                    for request_id in requests:
                        code = f"{rng.randrange(10**8):08d}"
                        while code in codes:
                            code = f"{rng.randrange(10**8):08d}"
                        after = base - time.monotonic() + rng.uniform(0, args.spread)
                        smsman.schedule_code(request_id, after, code)
                        codes[code] = time.monotonic() + after
                    deadline = base + args.spread + interval + 20
                    while time.monotonic() < deadline and len(code_sends(telegram)) < n:  # noqa: ASYNC110
                        await asyncio.sleep(0.5)
                    await asyncio.sleep(1.0)  # a repeat would come now
                    cpu = sum(r.cpu_seconds() for r in cluster.replicas)
                    bench_cpu = time.process_time() - cpu_before
                    seconds = time.monotonic() - started
                finally:
                    lag.stop()
                    await cluster.ensure_stopped()
                    await forget_redis_keys(args.redis_url, [bot_token, smsman_token])
                log = cluster.log_text()
                if "Traceback" in log:
                    print(log[log.index("Traceback") - 500 :][:4000], file=sys.stderr)
    finally:
        await smsman.stop()
        await telegram.stop()
    sent = code_sends(telegram)
    get_sms = [call.time for call in smsman.calls_to("get-sms")]
    available = {request_id: codes[code] for request_id, code in zip(requests, codes, strict=True)}
    found: dict[int, float] = {}
    for call in smsman.calls_to("get-sms"):  # the first poll after the code came found it
        request_id = int(call.params["request_id"])
        if call.time >= available.get(request_id, float("inf")):
            found.setdefault(request_id, call.time - available[request_id])
    in_window = sum(1 for t in get_sms if window[0] <= t < window[1])
    return Run(
        n=n,
        replicas=replicas,
        interval=interval,
        delays=[times[0] - codes[code] for code, times in sent.items() if code in codes],
        found=list(found.values()),
        undelivered=sum(1 for code in codes if code not in sent),
        twice=sum(1 for times in sent.values() if len(times) > 1),
        rate=in_window / (window[1] - window[0]),
        busiest=busiest_second(get_sms),
        cpu_s=cpu,
        bench_cpu_s=bench_cpu,
        seconds=seconds,
        load=os.getloadavg(),
        loop_lag=lag.summary(),
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000], help="waiting orders")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--interval", type=float, default=3.0, help="SMS_POLL_INTERVAL")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per SMS-Man call")
    parser.add_argument("--spread", type=float, default=60.0, help="codes appear over it")
    parser.add_argument("--settle", type=int, default=3, help="poll cycles before measuring")
    parser.add_argument("--cycles", type=int, default=4, help="poll cycles measuring the rate")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--database-url", default=os.environ.get("TEST_DATABASE_URL") or DEFAULT_DATABASE
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    print(
        f"interval {args.interval:g}s, {args.latency * 1000:.0f} ms per SMS-Man call, codes over"
        f" {args.spread:g}s; aims: p99 <= {args.interval + 0.5:g}s, get-sms at most 5% over"
        " one replica's or the ideal, at most 5% under the ideal"
    )
    missed = False
    for n in args.n:
        one_replica = 0.0
        for replicas in args.replicas:
            result = await run(n, replicas, args)
            if replicas == 1:
                one_replica = result.rate
            result.baseline = one_replica
            print(result.line(), flush=True)
            print(f"  this process's event loop (the fakes' stamps): {result.loop_lag}")
            missed |= bool(result.misses())
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
