"""Delivery under load: `.venv/bin/python bench/delivery.py [--codes 1000] [--n 500]`.

The real bot, `python -m bot`, in its own process (tests/botproc.py) against the fakes over
HTTP; the fake Telegram enforces its flood limits (30 a second per bot, a burst of 3 then
one a second per chat) and answers 429 beyond them. Orders are bought before the bot
starts, the way bench/poller.py does it.

1. A burst: `--codes` waiting orders (one user each) whose codes all arrive within the
   same second. Printed: 429 answers (aim 0), codes delivered (aim all), the busiest
   second at Telegram, and when the last code went out after its arrival at SMS-Man
   (aim <= codes / TELEGRAM_MAX_RPS + 3 s).
2. A slow Telegram: every sendMessage, editMessageText and answerCallbackQuery takes 2 s.
   `--n` orders wait while as many other orders' codes arrive (so delivery has a full
   queue of slow calls); get-sms of the waiting ones is measured over whole poll cycles
   (aim: within 5 % of N / SMS_POLL_INTERVAL).
Exit status 0 when every aim holds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.poller import BOT_TOKEN, SMSMAN_TOKEN, busiest_second, make_orders
from sandbox.smsman import FakeSmsMan
from sandbox.telegram import FakeTelegram
from tests.botproc import BotProcess

SLOW_METHODS = ("sendMessage", "editMessageText", "answerCallbackQuery")


def code_times(telegram: FakeTelegram) -> dict[str, list[float]]:
    """Code messages Telegram accepted: code -> arrival times."""
    found: dict[str, list[float]] = {}
    for call in telegram.calls_to("sendMessage"):
        text = str(call.params.get("text", ""))
        if call.ok and text.startswith("🔔"):
            code = text.rsplit("<code>", 1)[-1].split("</code>", 1)[0]
            found.setdefault(code, []).append(call.time)
    return found


def bot_for(
    telegram: FakeTelegram, smsman: FakeSmsMan, folder: Path, **extra: object
) -> BotProcess:
    return BotProcess.for_fakes(
        telegram,
        smsman,
        folder,
        smsman_timeout=5,
        activation_timeout=1200,
        log_level="WARNING",
        admin_ids=[],
        allowed_user_ids=[],
        **extra,
    )


async def burst(codes: int, max_rps: float, interval: float) -> bool:
    telegram = FakeTelegram(token=BOT_TOKEN)
    smsman = FakeSmsMan(token=SMSMAN_TOKEN, seed=7)
    smsman.default_catalogue()
    await telegram.start()
    await smsman.start()
    try:
        with tempfile.TemporaryDirectory() as name:
            folder = Path(name)
            requests = await make_orders(folder, smsman, codes)
            for i in range(codes):
                telegram.user(1_000_000 + i, started=True)
            bot = bot_for(
                telegram,
                smsman,
                folder,
                sms_poll_interval=interval,
                smsman_max_rps=1000,
                smsman_max_concurrency=50,
                telegram_max_rps=max_rps,
            )
            await bot.start(timeout=60)
            try:
                await asyncio.sleep(2 * interval)  # reconciled, polling at its rate
                arrived: dict[str, float] = {}
                for request in requests:  # all within the same second
                    code = f"{request:09d}"
                    smsman.deliver_code(request, code)
                    arrived[code] = time.monotonic()
                limit = codes / max_rps + 3
                deadline = time.monotonic() + limit + 30
                # Polled: the fake keeps a log, not an event.
                while time.monotonic() < deadline and len(code_times(telegram)) < codes:  # noqa: ASYNC110
                    await asyncio.sleep(0.2)
                await asyncio.sleep(1.0)
            finally:
                await bot.stop()
            if "Traceback" in bot.log_text():
                print(bot.log_text()[-3000:], file=sys.stderr)
            sent = code_times(telegram)
            twice = sum(1 for times in sent.values() if len(times) > 1)
            last = max((times[0] - arrived[code] for code, times in sent.items()), default=0.0)
            first_at = min(arrived.values())
            spread = max(arrived.values()) - first_at
            rejected = len(telegram.rate_limited)
            ok = rejected == 0 and len(sent) == codes and twice == 0 and last <= limit
            print(
                f"burst: {codes} codes arrived within {spread:.2f}s, TELEGRAM_MAX_RPS={max_rps:g}"
                f"  delivered={len(sent)} twice={twice}  429s={rejected}"
                f"  busiest second at Telegram={telegram.max_in_a_second()}"
                f"  last code {last:.1f}s after its arrival (aim <= {limit:.1f}s)"
                f"  {'OK' if ok else 'MISSED'}"
            )
            return ok
    finally:
        await smsman.stop()
        await telegram.stop()


async def slow_telegram(n: int, interval: float, cycles: int) -> bool:
    telegram = FakeTelegram(token=BOT_TOKEN)
    smsman = FakeSmsMan(token=SMSMAN_TOKEN, seed=8)
    smsman.default_catalogue()
    await telegram.start()
    await smsman.start()
    try:
        with tempfile.TemporaryDirectory() as name:
            folder = Path(name)
            waiting = set(await make_orders(folder, smsman, n))
            with_codes = await make_orders(folder, smsman, n, first=n)
            for i in range(2 * n):
                telegram.user(1_000_000 + i, started=True)
            telegram.slow(SLOW_METHODS, 2.0)
            bot = bot_for(
                telegram,
                smsman,
                folder,
                sms_poll_interval=interval,
                smsman_max_rps=1000,
                smsman_max_concurrency=50,
            )
            await bot.start(timeout=60)
            ready = time.monotonic()  # every order is polled now, then each interval
            try:
                await asyncio.sleep(interval / 2)
                for request in with_codes:
                    smsman.deliver_code(request, f"{request:09d}")
                # Whole poll cycles, once the codes found have filled delivery's queue
                # with slow calls: every waiting order is due at the same moment of each
                # cycle, so the cycles are told apart by the quiet gaps between them.
                settled = ready + 2 * interval
                await asyncio.sleep(settled + (cycles + 1.5) * interval - time.monotonic())
                owed = len(with_codes) - len(code_times(telegram))
            finally:
                await bot.stop()
            if "Traceback" in bot.log_text():
                print(bot.log_text()[-3000:], file=sys.stderr)
            times = sorted(
                c.time
                for c in smsman.calls_to("get-sms")
                if int(c.params["request_id"]) in waiting and c.time >= settled
            )
            starts = [t for i, t in enumerate(times) if i == 0 or t - times[i - 1] > interval / 4]
            if len(starts) < cycles + 1:
                print(f"slow Telegram: only {len(starts)} poll cycles seen", file=sys.stderr)
                return False
            window = (starts[0], starts[cycles])
            polls = [t for t in times if window[0] <= t < window[1]]
            rate = len(polls) / (window[1] - window[0])
            ideal = n / interval
            slow_calls = Counter(
                c.method for c in telegram.calls if c.method in SLOW_METHODS and c.duration >= 1.9
            )
            ok = abs(rate / ideal - 1) <= 0.05
            print(
                f"slow Telegram (2 s a call): N={n} waiting, {n} codes queued meanwhile"
                f"  get-sms={rate:.1f}/s (ideal {ideal:.1f}, {100 * (rate / ideal - 1):+.1f}%)"
                f"  busiest 1s={busiest_second(polls)}"
                f"  calls that took 2 s: {dict(slow_calls)}; codes still owed at the end: {owed}"
                f"  {'OK' if ok else 'MISSED'}"
            )
            return ok
    finally:
        await smsman.stop()
        await telegram.stop()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--codes", type=int, default=1000, help="0: no burst run")
    parser.add_argument("--max-rps", type=float, default=25)
    parser.add_argument("--n", type=int, default=500, help="0: no slow-Telegram run")
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument(
        "--burst-interval", type=float, default=1.0, help="SMS_POLL_INTERVAL of the burst"
    )
    args = parser.parse_args()
    ok = True
    if args.codes > 0:
        ok &= await burst(args.codes, args.max_rps, args.burst_interval)
    if args.n > 0:
        ok &= await slow_telegram(args.n, args.interval, args.cycles)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
