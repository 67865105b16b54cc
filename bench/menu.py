"""Menu latency and CPU per click: `.venv/bin/python bench/menu.py [--users 50] [--runs 3]`.

The bot runs as it ships: `python -m bot` in its own process (tests/botproc.py), nothing
pinned, warmed or tuned by the bench. This process holds the fakes and the users: FakeSmsMan
with a realistic catalogue (150 countries with CLDR names x 100 services, ~11k prices,
`--latency` seconds per call, so any provider call on the navigation path shows) and
FakeTelegram, long polled by the bot. One run has three parts:

1. Burst of new users: K users' /start are waiting in the fake Telegram when the process
   starts (it holds updates until someone asks for them, as Telegram does).
2. Walk: once the catalogue is warm, every user clicks through the menus `--rounds` times,
   pausing `--think` s (uniformly 0.5x..1.5x) between clicks:

       /start -> Buy number -> Next › (1-3 times) -> a country -> [Next › (services)]
       -> a service (confirm screen) -> ↩ Services -> ↩ Countries -> 🏠 Menu

   Navigation only, never Buy. The users' first clicks are spread over one pause (a burst
   is parts 1 and 3). `--think 0` clicks again at once, which saturates the bot.
3. Burst after a restart: SIGTERM, K /start waiting again (users the bot knows), restart.

A click's latency is the time from putting its update into the fake Telegram to the bot's
first answering call for it (the edit, the new message or answerCallbackQuery, whichever
reaches the fake first). A burst's latencies count from the moment the bot's first
getUpdates took the waiting updates. Time to first answer: from spawning the process to its
first answer. CPU is the bot process's user + system time from /proc (all its threads).
This process (fakes and users) collects and freezes its own garbage before each burst and
the walk, and prints its loop's longest stall during each burst: a stall here stamps the
bot's calls late (one of 200 ms once made a burst's p99 look like 242 ms).

Printed per run: burst p50/p99/max, startup, the walk's p50/p95/p99 and CPU per click;
then the spread over `--runs`. Exit status 0 when the aims hold in every run: walk p99 <=
`--aim` ms (50), both bursts p99 <= `--burst-aim` ms (250), CPU per click <= `--cpu-aim`
ms (3), no SMS-Man call for navigation and no Telegram error.

`--py-spy FILE` records the bot's process during the walk of the first run, sampling the
thread that holds the GIL (needs py-spy in the venv: `pip install py-spy`; raw format;
`python bench/pyspy_shares.py FILE` prints the shares).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    CATALOGUE_METHODS,
    LoopLag,
    fakes,
    latency_line,
    percentile,
    quiet_logs,
    wait_warm,
)
from sandbox.smsman import FakeSmsMan
from sandbox.telegram import Call, FakeMessage, FakeTelegram, FakeUser
from tests.botproc import BotProcess

USER_BASE = 10_000  # simulated users are 10_001 .. 10_000 + K
ANSWERS = frozenset(
    {"answerCallbackQuery", "editMessageText", "editMessageReplyMarkup", "sendMessage"}
)
STEP_TIMEOUT = 10.0
MENU_TELEGRAM_RPS = 1000  # see _spawn_bot: the overall budget is not what this measures
TRIM_EVERY = 0.5  # seconds between trims of the fake's call log and message histories


def user_ids(count: int) -> list[int]:
    return [USER_BASE + i + 1 for i in range(count)]


class Click(NamedTuple):
    screen: str  # what was clicked
    latency: float  # seconds from the update to the bot's first answering call
    at: float  # when, in seconds since the measuring began
    round: int  # 1: every user started at the same instant


@dataclass
class Burst:
    """K /start waiting when the process started."""

    latencies: list[float] = field(default_factory=list)  # s from hand-over to the answer
    first_answer: float = 0.0  # s from spawning the process to its first answer
    ready_cpu: float = 0.0  # CPU s of the process until its first getUpdates
    burst_cpu: float = 0.0  # CPU s from then until every user was answered
    bench_stall: float = 0.0  # s: this process's longest loop stall meanwhile (stamps late)


@dataclass
class Run:
    new_users: Burst
    walk: list[Click]
    walk_elapsed: float
    walk_cpu: float  # the bot process's CPU s during the walk
    restart: Burst
    provider_methods: dict[str, int]
    errors: list[str]
    load: tuple[float, float]  # the machine's 1-minute load average before and after

    @property
    def cpu_per_click_ms(self) -> float:
        return self.walk_cpu * 1000 / max(1, len(self.walk))

    @property
    def navigation_calls(self) -> int:
        return sum(n for m, n in self.provider_methods.items() if m in CATALOGUE_METHODS)


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


# --------------------------------------------------------------------------- one run


def _spawn_bot(telegram: FakeTelegram, smsman: FakeSmsMan, folder: Path, users: int) -> BotProcess:
    return BotProcess.for_fakes(
        telegram,
        smsman,
        folder,
        allowed_user_ids=user_ids(users),
        access_mode="private",
        admin_ids=[999_999],
        smsman_timeout=5.0,
        sms_poll_interval=3,
        log_level="WARNING",
        # The bot's own latency is measured, not Telegram's budget: 50 users clicking
        # flat out ask for more than the ~30 answers a second Telegram accepts.
        telegram_max_rps=MENU_TELEGRAM_RPS,
    )


async def burst(bot: BotProcess, log: CallLog, walkers: list[Walker]) -> Burst:
    """Every user's /start waiting, then start the process; wait until all are answered."""
    telegram = log.telegram
    mark = log.mark()
    for walker in walkers:
        await walker.user.send("/start")
    _settle_collector()
    lag = LoopLag(0.005)
    lag.start()
    spawned = time.monotonic()
    await bot.start(timeout=60)
    ready_cpu = bot.cpu_seconds()
    waiting = {walker.user.id for walker in walkers}
    answered: dict[int, float] = {}
    handed_over: float | None = None
    deadline = time.monotonic() + 60
    while len(answered) < len(waiting):
        if time.monotonic() > deadline:
            raise Stuck(f"burst: {len(waiting) - len(answered)} users never answered")
        await asyncio.sleep(0.02)
        for call in log.since(mark):
            if handed_over is None and call.method == "getUpdates" and call.response.get("result"):
                handed_over = call.time
            chat = call.params.get("chat_id")
            if call.method == "sendMessage" and chat in waiting and chat not in answered:
                answered[chat] = call.time
    cpu = bot.cpu_seconds()
    lag.stop()
    await telegram.wait_idle(timeout=30)
    assert handed_over is not None
    return Burst(
        latencies=[at - handed_over for at in answered.values()],
        first_answer=min(answered.values()) - spawned,
        ready_cpu=ready_cpu,
        burst_cpu=cpu - ready_cpu,
        bench_stall=max(lag.lags, default=0.0),
    )


def _settle_collector() -> None:
    """This process's own GC, not the bot's: the fakes stamp each call when this loop reads
    it, and a full collection here (a new run's catalogue, the last run's call logs) stalled
    the loop ~200 ms during a burst, stamping the bot's 50 answers together that late. Freeze
    what there is, so no pass walks it while the bot is measured."""
    gc.collect()
    gc.freeze()


@contextlib.asynccontextmanager
async def py_spy(pid: int | None, path: str | None):  # type: ignore[no-untyped-def]
    """py-spy record of `pid` while the block runs (nothing without a path)."""
    if pid is None or path is None:
        yield
        return
    exe = Path(sys.executable).with_name("py-spy")
    spy = await asyncio.create_subprocess_exec(
        str(exe), "record", "--gil", "-r", "100", "-f", "raw", "-o", path, "--pid", str(pid),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        await spy.wait()


async def one_run(args: argparse.Namespace, profile: str | None) -> Run:
    async with fakes(
        latency=args.latency,
        countries=args.countries,
        services=args.services,
        telegram_max_per_second=MENU_TELEGRAM_RPS + 50,
    ) as (telegram, smsman):
        log = CallLog(telegram)
        walkers = [
            Walker(log, telegram.user(uid), random.Random(uid), args.think)
            for uid in user_ids(args.users)
        ]
        with tempfile.TemporaryDirectory() as folder:
            bot = _spawn_bot(telegram, smsman, Path(folder), args.users)
            try:
                new_users = await burst(bot, log, walkers)
                await wait_warm(smsman)
                await telegram.wait_idle(timeout=30)
                errors_before, calls_before = len(telegram.errors), len(smsman.calls)

                async def walk(walker: Walker) -> None:
                    # A human pace from the first click on: the users start spread over one
                    # pause, not in the same instant (that is the bursts' case).
                    await asyncio.sleep(walker.rng.uniform(0, args.think))
                    for number in range(1, args.rounds + 1):
                        await walker.round(number)

                _settle_collector()
                trimmer = asyncio.create_task(_trim(log, walkers))
                load = os.getloadavg()[0]
                async with py_spy(bot.pid, profile):
                    started, cpu = time.monotonic(), bot.cpu_seconds()
                    for walker in walkers:
                        walker.epoch = started
                    try:
                        await asyncio.gather(*(walk(w) for w in walkers))
                    finally:
                        elapsed = time.monotonic() - started
                        walk_cpu = bot.cpu_seconds() - cpu
                        trimmer.cancel()
                load_after = os.getloadavg()[0]
                await telegram.wait_idle(timeout=30)
                methods = dict(Counter(c.method for c in smsman.calls[calls_before:]))
                errors = [
                    f"{e.method} {e.status} {e.description}"
                    for e in telegram.errors[errors_before:]
                ]
                if await bot.terminate() != 0:
                    raise Stuck("the bot did not stop cleanly:\n" + bot.log_text()[-2000:])
                restart = await burst(bot, log, walkers)
            finally:
                await bot.stop()
    return Run(
        new_users=new_users,
        walk=[click for w in walkers for click in w.clicks],
        walk_elapsed=elapsed,
        walk_cpu=walk_cpu,
        restart=restart,
        provider_methods=methods,
        errors=errors,
        load=(load, load_after),
    )


# --------------------------------------------------------------------------- report


def _ms(values: list[float]) -> list[float]:
    return [value * 1000 for value in values]


def burst_line(label: str, b: Burst) -> str:
    return (
        f"{latency_line(label, _ms(b.latencies))}; first answer {b.first_answer:.2f} s after "
        f"spawn (CPU {b.ready_cpu:.2f} s to ready), burst CPU {b.burst_cpu * 1000:.0f} ms; "
        f"bench loop's longest stall {b.bench_stall * 1000:.0f} ms"
    )


def report_run(number: int, args: argparse.Namespace, run: Run) -> None:
    ms = _ms([click.latency for click in run.walk])
    print(
        f"\nrun {number}: load average {run.load[0]:.2f} before the walk, {run.load[1]:.2f} "
        f"after; {len(run.walk)} clicks in {run.walk_elapsed:.1f} s"
    )
    print(burst_line("burst, new users", run.new_users))
    print(burst_line("burst after restart", run.restart))
    print(
        f"walk: bot CPU {run.cpu_per_click_ms:.2f} ms per click "
        f"({run.walk_cpu / run.walk_elapsed:.0%} of a core)"
    )
    print(latency_line("walk, all clicks", ms))
    if args.verbose:
        screens: dict[str, list[float]] = {}
        for click in run.walk:
            screens.setdefault(click.screen, []).append(click.latency * 1000)
        for screen, values in screens.items():
            print(latency_line(f"  {screen}", values))
    methods = run.provider_methods
    print(
        f"SMS-Man calls during the walk: {sum(methods.values())} {methods or ''}; "
        f"catalogue calls per click {run.navigation_calls / max(1, len(run.walk)):.4f}; "
        f"Telegram errors caused by the bot: {len(run.errors)} {run.errors[:3] or ''}"
    )


def spread(label: str, values: list[float], unit: str, digits: int = 1) -> str:
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{label:<34} {low:8.{digits}f} {mid:8.{digits}f} {high:8.{digits}f} {unit}"


def report(args: argparse.Namespace, runs: list[Run]) -> int:
    walk_p99 = [percentile(_ms([c.latency for c in r.walk]), 99) for r in runs]
    new_p99 = [percentile(_ms(r.new_users.latencies), 99) for r in runs]
    restart_p99 = [percentile(_ms(r.restart.latencies), 99) for r in runs]
    cpu = [r.cpu_per_click_ms for r in runs]
    print(f"\n{len(runs)} run(s), {args.users} users, {os.cpu_count()} CPUs")
    print(f"{'':<34} {'min':>8} {'median':>8} {'max':>8}")
    print(spread("bot CPU per click", cpu, "ms", 2))
    print(
        spread("walk p50", [percentile(_ms([c.latency for c in r.walk]), 50) for r in runs], "ms")
    )
    print(spread("walk p99", walk_p99, "ms"))
    print(spread("burst of new users p99", new_p99, "ms"))
    print(spread("burst after restart p99", restart_p99, "ms"))
    print(spread("spawn to first answer", [r.restart.first_answer for r in runs], "s", 2))
    print(spread("load average (1 min) before walk", [r.load[0] for r in runs], "", 2))
    errors = sum(len(r.errors) for r in runs)
    navigation = sum(r.navigation_calls for r in runs)
    ok = (
        max(walk_p99) <= args.aim
        and max(new_p99 + restart_p99) <= args.burst_aim
        and max(cpu) <= args.cpu_aim
        and navigation == 0
        and errors == 0
    )
    print(
        f"\n{'meets' if ok else 'MISSES'} the aims in every run: walk p99 <= {args.aim:.0f} ms, "
        f"bursts p99 <= {args.burst_aim:.0f} ms, CPU per click <= {args.cpu_aim:.1f} ms, "
        f"no SMS-Man call for navigation ({navigation}), no Telegram error ({errors})"
    )
    return 0 if ok else 1


async def run_all(args: argparse.Namespace) -> list[Run]:
    runs = []
    for number in range(1, args.runs + 1):
        run = await one_run(args, args.py_spy if number == 1 else None)
        report_run(number, args, run)
        runs.append(run)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--users", type=int, default=50, help="simulated users (K)")
    parser.add_argument("--rounds", type=int, default=5, help="menu rounds per user")
    parser.add_argument("--runs", type=int, default=1, help="whole runs, for the spread")
    parser.add_argument(
        "--think",
        type=float,
        default=1.0,
        help="mean pause between a user's clicks in s; 0: click again at once (saturation)",
    )
    parser.add_argument("--latency", type=float, default=0.1, help="SMS-Man seconds per call")
    parser.add_argument("--countries", type=int, default=150)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--aim", type=float, default=50.0, help="walk p99 aim in ms")
    parser.add_argument("--burst-aim", type=float, default=250.0, help="burst p99 aim in ms")
    parser.add_argument("--cpu-aim", type=float, default=3.0, help="bot CPU ms per click aim")
    parser.add_argument("--py-spy", metavar="FILE", help="py-spy the bot during run 1's walk")
    parser.add_argument("-v", "--verbose", action="store_true", help="latency per screen")
    args = parser.parse_args()
    quiet_logs()
    print(
        f"catalogue: {args.countries} countries x {args.services} services; SMS-Man latency "
        f"{args.latency * 1000:.0f} ms/call; {args.users} users x {args.rounds} rounds, think "
        f"{args.think:.2f} s; the bot: python -m bot, as it ships"
    )
    runs = asyncio.run(run_all(args))
    sys.exit(report(args, runs))


if __name__ == "__main__":
    main()
