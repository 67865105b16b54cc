"""The SMS poller under load: `.venv/bin/python bench/poller.py [--n 100 500 1000]`.

For each N: N waiting orders (N users, one order each) against the fake SMS-Man over
HTTP with `--latency` seconds per call, and the real bot, `python -m bot`, in its own
process (tests/botproc.py), so its peak RSS and CPU time are its own; the fakes run here.

The orders are bought the way OrderService.buy does it, before the bot starts: a
`purchasing` row (storage), get-number over HTTP (the real SmsManClient), `waiting` with
the request id (storage). The bot then finds them at start and reconciles them at once,
as after a restart, and its poller polls them from then on. After a warm-up that measures
the get-sms rate (all N still waiting), each order's code appears at a random time over
`--spread` seconds; a code's latency runs from the moment it appeared at the fake SMS-Man
to the moment the fake Telegram received the message carrying it.

Printed per run: p50 / p99 / max delivery latency, get-sms requests per second against
the ideal N / interval, the busiest one-second window of get-sms, peak RSS (VmHWM) and CPU
seconds of the bot process, and the same bot idle with no orders for comparison.

Aims (issue 5), N = 500, interval 2 s, cap not binding: p99 <= interval + 0.5 s; get-sms
rate within 5 % of N / interval; peak RSS <= idle + 40 MB. `--capped RPS` adds a run of
500 orders with SMSMAN_MAX_RPS=RPS, which binds: the rate must never exceed it.
Exit status 0 when every aim holds.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import percentile
from bot.smsman.client import SmsManClient
from sandbox.smsman import FakeSmsMan
from sandbox.telegram import FakeTelegram
from storage.db import Database
from tests.botproc import BotProcess

BOT_TOKEN = "123456:BENCH-TOKEN-do-not-leak"
SMSMAN_TOKEN = "smsman-bench-token-do-not-leak"
COST = 1000  # minor units


@dataclass
class Run:
    label: str
    n: int
    interval: float
    max_rps: float
    latencies: list[float]
    undelivered: int
    rate: float  # get-sms per second over the measuring window
    busiest: int  # most get-sms started in any one-second window (whole run)
    peak_rss_mb: float
    cpu_s: float
    seconds: float
    warned: bool

    @property
    def ideal(self) -> float:
        return self.n / self.interval

    def line(self) -> str:
        p50 = percentile(self.latencies, 50)
        p99 = percentile(self.latencies, 99)
        top = max(self.latencies, default=float("nan"))
        return (
            f"{self.label:<22} N={self.n:>5}  p50={p50:5.2f}s  p99={p99:5.2f}s  max={top:5.2f}s"
            f"  undelivered={self.undelivered}  get-sms={self.rate:7.1f}/s"
            f" (ideal {self.ideal:6.1f}, {100 * (self.rate / self.ideal - 1):+5.1f}%)"
            f"  busiest 1s={self.busiest:>4}  peak RSS={self.peak_rss_mb:6.1f} MB"
            f"  CPU={self.cpu_s:5.1f}s in {self.seconds:4.1f}s"
        )


async def make_orders(
    folder: Path, smsman: FakeSmsMan, n: int, *, first: int = 0, expires_in: float = 1200
) -> list[int]:
    """N waiting orders, each with its own user (1_000_000 + first + i) and SMS-Man
    request, running out in `expires_in` seconds; returns request ids."""
    smsman.set_price(1, 1, "10.00", 10 * n + 10)
    smsman.balance = Decimal(10**9)
    db = await Database.open(folder / "bot.sqlite3")
    requests: list[int] = []
    try:
        async with SmsManClient(smsman.url, smsman.token, max_concurrency=20, max_rps=1000) as c:

            async def one(i: int) -> None:
                user_id = 1_000_000 + first + i
                order = await db.orders.create(
                    user_id=user_id,
                    chat_id=user_id,
                    country_id=1,
                    country_title="Russia",
                    service_id=1,
                    service_title="Telegram",
                    price=0,
                    cost=COST,
                    currency="RUB",
                    idempotency_key=f"bench:{first + i}",
                    multiple_sms=False,
                    hold=False,
                    max_active=5,
                )
                number = await c.get_number(1, 1, max_price=Decimal("10.00"), currency="RUB")
                now = time.time()
                await db.orders.mark_waiting(
                    order.id,
                    request_id=number.request_id,
                    number=number.number,
                    expires_at=now + expires_in,
                    next_poll_at=now,
                )
                requests.append(number.request_id)

            for start in range(0, n, 50):
                await asyncio.gather(*(one(i) for i in range(start, min(n, start + 50))))
    finally:
        await db.close()
    return requests


def busiest_second(times: list[float]) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - 1.0:
            j += 1
        best = max(best, i - j + 1)
    return best


async def run(
    label: str,
    n: int,
    *,
    interval: float,
    latency: float,
    max_rps: float,
    concurrency: int,
    warmup_cycles: int,
    spread: float,
    seed: int,
) -> Run:
    rng = random.Random(seed)
    telegram = FakeTelegram(token=BOT_TOKEN)
    smsman = FakeSmsMan(token=SMSMAN_TOKEN, seed=seed)
    smsman.default_catalogue()
    await telegram.start()
    await smsman.start()
    try:
        with tempfile.TemporaryDirectory() as name:
            folder = Path(name)
            requests = await make_orders(folder, smsman, n)
            for i in range(n):
                telegram.user(1_000_000 + i, started=True)
            smsman.latency = latency
            smsman.calls.clear()
            bot = BotProcess.for_fakes(
                telegram,
                smsman,
                folder,
                sms_poll_interval=interval,
                smsman_max_rps=max_rps,
                smsman_max_concurrency=concurrency,
                smsman_timeout=5,
                activation_timeout=1200,
                log_level="WARNING",
                admin_ids=[],
                allowed_user_ids=[],
            )
            started = time.monotonic()
            await bot.start(timeout=60)
            try:
                ready = time.monotonic()
                # The get-sms rate: whole cycles after the first (reconciling) one.
                window = (ready + interval, ready + interval * (1 + warmup_cycles))
                await asyncio.sleep(window[1] - time.monotonic())
                codes: dict[str, float] = {}
                base = time.monotonic() + 0.5
                for request_id in requests:
                    code = f"{rng.randrange(10**8):08d}"
                    while code in codes:
                        code = f"{rng.randrange(10**8):08d}"
                    after = base - time.monotonic() + rng.uniform(0, spread)
                    smsman.schedule_code(request_id, after, code)
                    codes[code] = time.monotonic() + after
                deadline = base + spread + interval + 15
                sent: dict[str, float] = {}
                seen = 0
                while time.monotonic() < deadline and len(sent) < len(codes):
                    calls = telegram.calls_to("sendMessage")
                    for call in calls[seen:]:
                        text = str(call.params.get("text", ""))
                        if call.ok and text.startswith("🔔"):
                            code = text.rsplit("<code>", 1)[-1].split("</code>", 1)[0]
                            sent.setdefault(code, call.time)
                    seen = len(calls)
                    await asyncio.sleep(0.2)
                peak_mb = bot.peak_rss_kb() / 1024
                cpu = bot.cpu_seconds()
                seconds = time.monotonic() - started
            finally:
                await bot.stop()
            log = bot.log_text()
            if "Traceback" in log:
                print(log[-3000:], file=sys.stderr)
            get_sms = [c.time for c in smsman.calls_to("get-sms")]
            in_window = sum(1 for t in get_sms if window[0] <= t < window[1])
            return Run(
                label=label,
                n=n,
                interval=interval,
                max_rps=max_rps,
                latencies=[sent[code] - codes[code] for code in sent],
                undelivered=len(codes) - len(sent),
                rate=in_window / (window[1] - window[0]),
                busiest=busiest_second(get_sms),
                peak_rss_mb=peak_mb,
                cpu_s=cpu,
                seconds=seconds,
                warned="cap reached" in log,
            )
    finally:
        await smsman.stop()
        await telegram.stop()


async def idle(*, interval: float, seconds: float) -> tuple[float, float]:
    """Peak RSS (MB) and CPU seconds of the bot with no orders, `seconds` after start."""
    telegram = FakeTelegram(token=BOT_TOKEN)
    smsman = FakeSmsMan(token=SMSMAN_TOKEN)
    smsman.default_catalogue()
    await telegram.start()
    await smsman.start()
    try:
        with tempfile.TemporaryDirectory() as name:
            bot = BotProcess.for_fakes(
                telegram,
                smsman,
                Path(name),
                sms_poll_interval=interval,
                log_level="WARNING",
                admin_ids=[],
                allowed_user_ids=[],
            )
            await bot.start(timeout=60)
            try:
                await asyncio.sleep(seconds)
                return bot.peak_rss_kb() / 1024, bot.cpu_seconds()
            finally:
                await bot.stop()
    finally:
        await smsman.stop()
        await telegram.stop()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per SMS-Man call")
    parser.add_argument("--spread", type=float, default=12.0, help="codes appear over it")
    parser.add_argument("--cycles", type=int, default=3, help="poll cycles measuring the rate")
    parser.add_argument("--rps", type=float, default=1000, help="SMSMAN_MAX_RPS, not binding")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--capped", type=float, default=50, help="a binding RPS; 0: skip")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    print(
        f"interval {args.interval}s, SMS-Man latency {args.latency * 1000:.0f} ms per call,"
        f" codes spread over {args.spread}s; the bot is `python -m bot` in its own process"
    )
    idle_mb, idle_cpu = await idle(interval=args.interval, seconds=8.0)
    print(f"{'idle, no orders':<22} peak RSS={idle_mb:6.1f} MB  CPU={idle_cpu:5.1f}s in ~8s")
    ok = True
    for n in args.n:
        result = await run(
            "cap not binding",
            n,
            interval=args.interval,
            latency=args.latency,
            max_rps=args.rps,
            concurrency=args.concurrency,
            warmup_cycles=args.cycles,
            spread=args.spread,
            seed=args.seed,
        )
        print(result.line(), f"  RSS over idle={result.peak_rss_mb - idle_mb:+5.1f} MB")
        if n == 500:
            p99 = percentile(result.latencies, 99)
            aims = {
                f"p99 {p99:.2f}s <= {args.interval + 0.5}s": p99 <= args.interval + 0.5,
                f"rate within 5% of {result.ideal:.0f}/s": abs(result.rate / result.ideal - 1)
                <= 0.05,
                "RSS <= idle + 40 MB": result.peak_rss_mb - idle_mb <= 40,
                "every code delivered": result.undelivered == 0,
            }
            for aim, held in aims.items():
                print(f"    aim {aim}: {'yes' if held else 'NO'}")
                ok &= held
    if args.capped:
        capped = await run(
            f"cap binding ({args.capped:g}/s)",
            500,
            interval=args.interval,
            latency=args.latency,
            max_rps=args.capped,
            concurrency=10,
            warmup_cycles=args.cycles,
            spread=args.spread,
            seed=args.seed,
        )
        print(capped.line())
        held = capped.busiest <= args.capped
        print(
            f"    aim busiest second {capped.busiest} <= SMSMAN_MAX_RPS {args.capped:g}:"
            f" {'yes' if held else 'NO'}; cap warning logged: {capped.warned}"
        )
        ok &= held and capped.warned
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
