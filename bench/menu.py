"""Menu latency under load: `.venv/bin/python bench/menu.py [--users 50] [--rounds 5]`.

K simulated users click through the menus at once against the fakes over HTTP: FakeSmsMan
with a realistic catalogue (150 countries with CLDR names x 100 services, ~11k prices) and
`--latency` seconds per SMS-Man call, so any provider call on the navigation path shows,
and FakeTelegram, long polled by the bot, which runs in this process. One round per user:

    /start -> Buy number -> Next › (1-3 times) -> a country -> [Next › (services)]
    -> a service (confirm screen) -> ↩ Services -> ↩ Countries -> 🏠 Menu

Navigation only, never Buy. A click's latency is the time from putting its update into
the fake Telegram to the bot's first answering call for it (the edit, the new message or
answerCallbackQuery, whichever reaches the fake first). Each user waits for the whole
answer (callback answered / menu shown), thinks `--think` seconds (uniformly 0.5x..1.5x) and
clicks again; `--think 0` clicks again at once, which saturates the bot: latency is then
users / throughput (Little's law), whatever the code does.

By default the fakes and the users run in a child process, so the bot's process holds only
the bot (its CPU time and GC pauses are printed apart); `--one-process` puts everything on
one event loop as the tests do. Before measuring, the bot's startup warm-up must have read
the catalogue and every user has sent /start once (their row exists, not measured).

Printed: p50/p95/p99/max overall and per screen, clicks/s, CPU per click, GC pauses,
SMS-Man calls per navigation click (the aim is 0) and the Telegram 4xx the bot caused
(must be none). Exit status 0 when the aim holds: p99 <= `--aim` ms (issue 4: 50 ms with
50 users), no SMS-Man call and no Telegram error during the clicks.

`--pin-responses` and `--gc-freeze` apply, in the bot's process, the two fixes proposed for
bot/app.py (see bench/_common.py: pin_aiogram_responses, and gc.freeze() after start-up).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import multiprocessing
import os
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    CATALOGUE_METHODS,
    GcWatch,
    LoopLag,
    bench_settings,
    fakes,
    latency_line,
    percentile,
    pin_aiogram_responses,
    quiet_logs,
    wait_warm,
)
from sandbox.smsman import FakeSmsMan
from sandbox.telegram import Call, FakeMessage, FakeTelegram, FakeUser
from tests.inprocess import running

USER_BASE = 10_000  # simulated users are 10_001 .. 10_000 + K
ANSWERS = frozenset(
    {"answerCallbackQuery", "editMessageText", "editMessageReplyMarkup", "sendMessage"}
)
STEP_TIMEOUT = 10.0
MENU_TELEGRAM_RPS = 1000  # see bot_running: the overall budget is not what this measures
TRIM_EVERY = 0.5  # seconds between trims of the fake's call log and message histories


def user_ids(count: int) -> list[int]:
    return [USER_BASE + i + 1 for i in range(count)]


class Click(NamedTuple):
    screen: str  # what was clicked
    latency: float  # seconds from the update to the bot's first answering call
    at: float  # when, in seconds since the measuring began
    round: int  # 1: every user started at the same instant


@dataclass
class Results:
    """What the users' side measured (picklable: it crosses the process boundary)."""

    clicks: list[Click] = field(default_factory=list)
    provider_methods: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    cpu: float = 0.0  # CPU seconds of the process running the fakes and users
    gc: str = ""
    lag: str = ""  # event loop stalls of that process
    catalogue: str = ""
    load: tuple[float, float] = (0.0, 0.0)  # the machine's 1-minute load before and after


@dataclass
class BotSide:
    """What the bot's process measured during the clicks."""

    cpu: float = 0.0
    gc: str = ""
    lag: str = ""
    client_calls: int = 0


class Stuck(Exception):
    """The bot did not answer a click (or answered it wrongly)."""


class CallLog:
    """Positions in `telegram.calls` that survive trimming its head."""

    def __init__(self, telegram: FakeTelegram) -> None:
        self.telegram = telegram
        self.dropped = 0

    def mark(self) -> int:
        return self.dropped + len(self.telegram.calls)

    def since(self, mark: int) -> list[Call]:
        return self.telegram.calls[mark - self.dropped :]

    def trim(self, mark: int) -> None:
        """Forget the calls before `mark` (no click still waiting needs them)."""
        count = mark - self.dropped
        if count > 0:
            del self.telegram.calls[:count]
            self.dropped += count


class Walker:
    """One simulated user clicking through the menus."""

    def __init__(self, log: CallLog, user: FakeUser, rng: random.Random, think: float) -> None:
        self.log = log
        self.user = user
        self.rng = rng
        self.think = think
        self.clicks: list[Click] = []
        self.epoch = 0.0  # time.monotonic() when the measuring began
        self.round_no = 0
        self.pending: int | None = None  # the call-log mark of the click in progress

    def _first_answer(self, t0: float, callback_id: str | None) -> float:
        """Seconds from t0 to the first answering call for this user that arrived after t0."""
        assert self.pending is not None
        first: float | None = None
        for call in self.log.since(self.pending):
            if call.method not in ANSWERS or call.time < t0:
                continue
            mine = (
                call.params.get("callback_query_id") == callback_id
                if call.method == "answerCallbackQuery"
                else call.params.get("chat_id") == self.user.id
            )
            if mine and (first is None or call.time < first):
                first = call.time
        if first is None:
            raise Stuck(f"no answering call found for user {self.user.id}")
        return first - t0

    def _record(self, screen: str, t0: float, callback_id: str | None) -> None:
        latency = self._first_answer(t0, callback_id)
        self.clicks.append(Click(screen, latency, t0 - self.epoch, self.round_no))

    async def _pause(self) -> None:
        if self.think > 0:
            await asyncio.sleep(self.think * self.rng.uniform(0.5, 1.5))
        else:
            await asyncio.sleep(0)

    async def start(self, record: bool = True) -> None:
        self.pending, t0 = self.log.mark(), time.monotonic()
        await self.user.send("/start")
        await self.user.wait_for(
            predicate=lambda m: any("Buy" in label for label in m.labels),
            new_only=True,
            timeout=STEP_TIMEOUT,
        )
        if record:
            self._record("/start", t0, None)
        self.pending = None
        await self._pause()

    async def press(self, screen: str, choose: Callable[[FakeMessage], str]) -> None:
        """Press the button whose callback_data `choose` picks on the newest keyboard."""
        message = self.user.keyboard_message()
        if message is None:
            raise Stuck(f"user {self.user.id}: no keyboard to click ({screen})")
        data = choose(message)
        self.pending, t0 = self.log.mark(), time.monotonic()
        callback_id = await self.user.click_data(data, message.message_id)
        await self.user.wait_answered(callback_id, timeout=STEP_TIMEOUT)
        self._record(screen, t0, callback_id)
        self.pending = None
        await self._pause()

    @staticmethod
    def label(text: str) -> Callable[[FakeMessage], str]:
        def choose(message: FakeMessage) -> str:
            for row in message.buttons:
                for label, data in row:
                    if text in label and data is not None:
                        return data
            raise Stuck(f"no {text!r} on #{message.message_id}: {message.labels}")

        return choose

    def any_of(self, prefix: str) -> Callable[[FakeMessage], str]:
        """A random button whose callback_data starts with `prefix` (a country, a service)."""

        def choose(message: FakeMessage) -> str:
            found = [d for row in message.buttons for _, d in row if d and d.startswith(prefix)]
            if not found:
                raise Stuck(f"no {prefix!r} button on #{message.message_id}: {message.labels}")
            return self.rng.choice(found)

        return choose

    def has(self, text: str) -> bool:
        message = self.user.keyboard_message()
        return message is not None and any(text in label for label in message.labels)

    async def round(self, number: int) -> None:
        self.round_no = number
        await self.start()
        await self.press("buy (countries p1)", self.label("Buy"))
        for _ in range(self.rng.randint(1, 3)):
            await self.press("next countries page", self.label("›"))
        await self.press("country (services)", self.any_of("c:"))
        if self.has("›"):
            await self.press("next services page", self.label("›"))
        await self.press("service (confirm)", self.any_of("s:"))
        await self.press("back to services", self.label("Services"))
        await self.press("back to countries", self.label("Countries"))
        await self.press("home", self.label("Menu"))


async def _trim(log: CallLog, walkers: list[Walker]) -> None:
    """Keep the fake's records small, so its garbage does not weigh on the GC."""
    while True:
        await asyncio.sleep(TRIM_EVERY)
        marks = [w.pending for w in walkers if w.pending is not None]
        log.trim(min(marks, default=log.mark()))
        for walker in walkers:
            for message in walker.user.all_messages:
                message.history.clear()
                message.edits.clear()


async def drive(
    telegram: FakeTelegram,
    smsman: FakeSmsMan,
    args: argparse.Namespace,
    measuring: Callable[[bool], None],
) -> Results:
    """Wait for the bot's warm-up, let every user /start once, then measure the walk.
    `measuring(True)` / `measuring(False)` bracket the measured part."""
    results = Results()
    warm = await wait_warm(smsman)
    in_stock = sum(1 for _, count in smsman.prices.values() if count > 0)
    results.catalogue = (
        f"catalogue: {len(smsman.countries)} countries, {len(smsman.applications)} services, "
        f"{len(smsman.prices)} prices ({in_stock} in stock); SMS-Man latency "
        f"{args.latency * 1000:.0f} ms/call; the bot's warm-up read it in {warm:.2f} s"
    )
    log = CallLog(telegram)
    walkers = [
        Walker(log, telegram.user(uid), random.Random(uid), args.think)
        for uid in user_ids(args.users)
    ]
    await asyncio.gather(*(w.start(record=False) for w in walkers))
    await telegram.wait_idle(timeout=30)
    errors_before = len(telegram.errors)
    calls_before = len(smsman.calls)

    async def walk(walker: Walker) -> None:
        for number in range(1, args.rounds + 1):
            await walker.round(number)

    trimmer = asyncio.create_task(_trim(log, walkers))
    lag = LoopLag()
    load = os.getloadavg()[0]
    measuring(True)
    lag.start()
    started, cpu = time.monotonic(), time.process_time()
    for walker in walkers:
        walker.epoch = started
    try:
        with GcWatch() as gc_watch:
            await asyncio.gather(*(walk(w) for w in walkers))
    finally:
        results.elapsed = time.monotonic() - started
        results.cpu = time.process_time() - cpu
        lag.stop()
        measuring(False)
        trimmer.cancel()
    results.lag = lag.summary()
    results.load = (load, os.getloadavg()[0])
    await telegram.wait_idle(timeout=30)
    results.gc = gc_watch.summary()
    results.clicks = [click for w in walkers for click in w.clicks]
    results.provider_methods = dict(Counter(c.method for c in smsman.calls[calls_before:]))
    results.errors = [
        f"{e.method} {e.status} {e.description}" for e in telegram.errors[errors_before:]
    ]
    return results


# --------------------------------------------------------------------------- the bot side


@contextlib.asynccontextmanager
async def bot_running(
    args: argparse.Namespace, telegram_url: str, smsman_url: str
) -> AsyncIterator[Any]:
    with tempfile.TemporaryDirectory() as folder:
        settings = bench_settings(
            Path(folder),
            telegram_url,
            smsman_url,
            allowed_user_ids=user_ids(args.users),
            access_mode="private",
            # The bot's own latency is measured, not Telegram's budget: 50 users clicking
            # flat out ask for more than the ~30 answers a second Telegram accepts.
            telegram_max_rps=MENU_TELEGRAM_RPS,
        )
        async with running(settings) as app:
            if args.gc_freeze:
                gc.freeze()  # the proposed fix: start-up objects out of every collection
            yield app


class BotMeter:
    """Measures the bot's process between measuring(True) and measuring(False)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.side = BotSide()
        self._watch = GcWatch()
        self._lag = LoopLag()
        self._cpu = 0.0
        self._calls = 0

    def __call__(self, on: bool) -> None:
        if on:
            self._watch.__enter__()
            self._lag.start()
            self._cpu, self._calls = time.process_time(), self.app.client.calls_made
        else:
            self._watch.__exit__(None, None, None)
            self._lag.stop()
            self.side.lag = self._lag.summary()
            self.side.cpu = time.process_time() - self._cpu
            self.side.client_calls = self.app.client.calls_made - self._calls
            self.side.gc = self._watch.summary()


async def one_process(args: argparse.Namespace) -> tuple[Results, BotSide | None]:
    async with (
        fakes(
            latency=args.latency,
            countries=args.countries,
            services=args.services,
            telegram_max_per_second=MENU_TELEGRAM_RPS + 50,
        ) as (
            telegram,
            smsman,
        ),
        bot_running(args, telegram.url, smsman.url),
    ):
        # One process: the users' side measures CPU and GC pauses of everything.
        return await drive(telegram, smsman, args, lambda on: None), None


def _users_process(conn: Connection, args: argparse.Namespace) -> None:
    """The child: the fakes and the users; talks to the parent over `conn`."""
    quiet_logs()

    async def main() -> None:
        async with fakes(
            latency=args.latency,
            countries=args.countries,
            services=args.services,
            telegram_max_per_second=MENU_TELEGRAM_RPS + 50,
        ) as (telegram, smsman):
            gc.freeze()  # the fakes' own start-up objects: out of this process's collections
            conn.send((telegram.url, smsman.url))
            if await asyncio.to_thread(conn.recv) != "go":
                return
            results = await drive(telegram, smsman, args, lambda on: conn.send(on))
            conn.send(results)
            await asyncio.to_thread(conn.recv)  # "stop": the bot has stopped polling

    asyncio.run(main())


async def two_processes(args: argparse.Namespace) -> tuple[Results, BotSide | None]:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_users_process, args=(child, args), daemon=True)
    process.start()
    try:
        telegram_url, smsman_url = await asyncio.to_thread(parent.recv)
        async with bot_running(args, telegram_url, smsman_url) as app:
            meter = BotMeter(app)
            parent.send("go")
            while True:
                message = await asyncio.to_thread(parent.recv)
                if isinstance(message, bool):
                    meter(message)
                else:
                    results: Results = message
                    break
        parent.send("stop")
        await asyncio.to_thread(process.join, 30)
        return results, meter.side
    finally:
        if process.is_alive():
            process.kill()


# --------------------------------------------------------------------------- report


def report(args: argparse.Namespace, results: Results, bot: BotSide | None) -> int:
    clicks = results.clicks
    if not clicks:
        print("no clicks measured")
        return 1
    ms = [click.latency * 1000 for click in clicks]
    by_screen: dict[str, list[float]] = defaultdict(list)
    for click in clicks:
        by_screen[click.screen].append(click.latency * 1000)
    first = [click.latency * 1000 for click in clicks if click.round == 1]
    later = [click.latency * 1000 for click in clicks if click.round > 1]
    navigation = sum(n for m, n in results.provider_methods.items() if m in CATALOGUE_METHODS)
    fixes = (("Response types pinned", args.pin_responses), ("gc.freeze", args.gc_freeze))
    applied = [name for name, on in fixes if on]
    rate = len(clicks) / results.elapsed

    print(results.catalogue)
    print(
        f"\n{args.users} users x {args.rounds} rounds, think {args.think:.2f} s, "
        f"{'one process' if bot is None else 'fakes in a child process'}"
        f"{', bot fixes: ' + ' + '.join(applied) if applied else ''}: "
        f"{len(clicks)} clicks in {results.elapsed:.2f} s ({rate:.0f} clicks/s)"
    )
    print(
        f"machine: {os.cpu_count()} CPUs, 1-min load average {results.load[0]:.2f} before, "
        f"{results.load[1]:.2f} after (other processes compete for the CPU)"
    )
    if bot is None:
        print(
            f"CPU per click: {results.cpu * 1000 / len(clicks):.2f} ms (bot + fakes + users); "
            f"GC pauses: {results.gc}; loop lag: {results.lag}"
        )
    else:
        print(
            f"bot process:   CPU {bot.cpu * 1000 / len(clicks):.2f} ms per click "
            f"({bot.cpu / results.elapsed:.0%} of a core); GC pauses: {bot.gc}; "
            f"loop lag: {bot.lag}"
        )
        print(
            f"users process: CPU {results.cpu * 1000 / len(clicks):.2f} ms per click "
            f"({results.cpu / results.elapsed:.0%} of a core); GC pauses: {results.gc}; "
            f"loop lag: {results.lag}"
        )
    print()
    print(latency_line("all clicks", ms))
    print(latency_line("  round 1 (all at once)", first))
    if later:
        label = "round 2" if args.rounds == 2 else f"rounds 2-{args.rounds}"
        print(latency_line(f"  {label}", later))
    for screen, values in by_screen.items():
        print(latency_line(f"  {screen}", values))
    methods = results.provider_methods
    counted = "" if bot is None else f"; the bot's client counted {bot.client_calls}"
    print(
        f"\nSMS-Man calls during the clicks: {sum(methods.values())} {methods or ''}".rstrip()
        + counted
    )
    print(f"SMS-Man catalogue calls per navigation click: {navigation / len(clicks):.4f}")
    print(f"Telegram errors caused by the bot: {len(results.errors)}")
    for error in results.errors[:5]:
        print(f"  {error}")
    if args.slowest:
        print(f"\nthe {args.slowest} slowest clicks (ms, clicked at s since the start):")
        for click in sorted(clicks, key=lambda c: -c.latency)[: args.slowest]:
            print(
                f"  {click.latency * 1000:7.1f}  at {click.at:7.3f}  round {click.round}  "
                f"{click.screen}"
            )

    p99 = percentile(ms, 99)
    ok = p99 <= args.aim and navigation == 0 and not results.errors
    print(
        f"\n{'meets' if ok else 'MISSES'} the aim: p99 {p99:.1f} ms (<= {args.aim:.0f}), "
        f"{navigation} provider calls for navigation (0), {len(results.errors)} errors (0)"
    )
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--users", type=int, default=50, help="simulated users (K)")
    parser.add_argument("--rounds", type=int, default=5, help="menu rounds per user")
    parser.add_argument(
        "--think",
        type=float,
        default=1.0,
        help="mean pause between a user's clicks in s; 0: click again at once (saturation)",
    )
    parser.add_argument("--latency", type=float, default=0.1, help="SMS-Man seconds per call")
    parser.add_argument("--countries", type=int, default=150)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--aim", type=float, default=50.0, help="p99 aim in ms")
    parser.add_argument(
        "--one-process", action="store_true", help="fakes, users and bot on one event loop"
    )
    parser.add_argument(
        "--pin-responses",
        action="store_true",
        help="bot process: keep aiogram's Response[T] models alive (proposed fix)",
    )
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="bot process: gc.freeze() once started (proposed fix)",
    )
    parser.add_argument("--slowest", type=int, default=0, help="list the N slowest clicks")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the bot's process to FILE")
    args = parser.parse_args()
    quiet_logs()
    if args.pin_responses:
        pin_aiogram_responses()
    run = one_process if args.one_process else two_processes
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        results, bot = profiler.runcall(asyncio.run, run(args))
        profiler.dump_stats(args.profile)
        print(f"profile of the bot's process written to {args.profile}")
    else:
        results, bot = asyncio.run(run(args))
    sys.exit(report(args, results, bot))


if __name__ == "__main__":
    main()
