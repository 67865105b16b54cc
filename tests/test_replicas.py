"""Three replicas behind the webhook, one PostgreSQL and one Redis, one of them SIGKILLed
and started again every 10 s for 2 minutes, while 100 shop users buy, cancel and receive
codes (the fake SMS-Man hands most of them a code at a random moment, some never one).

Afterwards: every code SMS-Man handed out reached its user; a code message went out again
only across a kill, at most once per kill; every order ended; nothing was charged or
released twice and the books balance (`check_invariant()`); SMS-Man calls per second summed
over the replicas (stamped at the fake SMS-Man, any one-second window) stayed within
SMSMAN_MAX_RPS + 10%; Telegram's counted calls (stamped at the fake Telegram, which answers
429 beyond its own limits and counts them) stayed within TELEGRAM_MAX_RPS, with no 429. A
window in which this process's loop stalled (the fakes' stamps bunch then) is left out of
the judged figure and counted in the raw one (tests/replicas.py, StallWatch). The figures
are printed (`pytest -s`) and shown in the run's summary.

Needs PostgreSQL (TEST_DATABASE_URL) and Redis (127.0.0.1:6379): skipped visibly without
them, failed instead with REQUIRE_POSTGRES=1 / REQUIRE_REDIS=1. About 3 minutes.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest

from sandbox.smsman import FakeSmsMan
from sandbox.telegram import FakeTelegram, FakeUser
from storage.db import Database
from storage.models import LedgerKind, Money, Order, OrderStatus
from tests.botproc import buy, code_sends, wait_until
from tests.conftest import RUN_FIGURES, postgres_database
from tests.replicas import Cluster, StallWatch, forget_redis_keys, fresh_tokens
from tests.test_chaos import _unexpected_errors

SEED = 20261201
REPLICAS = 3
USERS = 100
STRESS_SECONDS = 120.0
KILL_EVERY = 10.0
ACTIVATION_TIMEOUT = 20
SMSMAN_MAX_RPS = 25
TELEGRAM_MAX_RPS = 25
WALLET = 1_000_00  # minor units each user starts with
ADMIN = 1000
ENDED = {OrderStatus.FINISHED, OrderStatus.CANCELLED, OrderStatus.EXPIRED, OrderStatus.FAILED}


@dataclass
class Run:
    """What the users and the killer did."""

    telegram: FakeTelegram
    smsman: FakeSmsMan
    cluster: Cluster
    stalls: StallWatch = field(default_factory=StallWatch)
    rng: random.Random = field(default_factory=lambda: random.Random(SEED))
    stop_at: float = 0.0
    actions: Counter[str] = field(default_factory=Counter)
    scheduled: set[int] = field(default_factory=set)
    phases: dict[str, float] = field(default_factory=dict)  # seconds since the start
    interruptions: Counter[str] = field(default_factory=Counter)  # what a user waited for

    async def codes_appear(self) -> None:
        """Most numbers get a code at a random moment (some after the deadline: never)."""
        while True:
            for request_id in list(self.smsman.requests):
                if request_id not in self.scheduled:
                    self.scheduled.add(request_id)
                    if self.rng.random() < 0.7:
                        after = self.rng.uniform(0.5, ACTIVATION_TIMEOUT * 1.2)
                        self.smsman.schedule_code(request_id, after=after)
            await asyncio.sleep(0.1)

    async def stuck_watch(self) -> None:
        """An update a replica held past the webhook's timeout: every replica logs its
        tasks' stacks (bot/diagnostics.py), so the log says what the handler waits for."""
        finished = 0  # posts before this index have ended (a post is listed when it starts)
        dumps = 0
        while dumps < 3:
            await asyncio.sleep(1.0)
            posts = self.telegram.webhook_posts
            late = [p for p in posts[finished:] if p.status is None and "imeout" in p.error]
            while finished < len(posts) and (
                posts[finished].status is not None or posts[finished].error
            ):
                finished += 1
            if late:
                dumps += 1
                self.actions["stacks dumped (an update timed out)"] += 1
                for replica in self.cluster.up:
                    if replica.pid is not None:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(replica.pid, signal.SIGUSR1)
                await asyncio.sleep(15.0)

    async def killer(self) -> None:
        """Every KILL_EVERY seconds a random running replica is SIGKILLed, then started
        again in the background (on a loaded machine a start can outlast the period: the
        next kill does not wait for it, but one replica always stays up)."""
        revivals: list[asyncio.Task[None]] = []
        next_kill = time.monotonic() + KILL_EVERY
        while next_kill <= self.stop_at + 1:
            await asyncio.sleep(next_kill - time.monotonic())
            next_kill += KILL_EVERY
            running = [r.index for r in self.cluster.up]
            if len(running) < 2:
                self.actions["kill skipped: one replica up"] += 1
                continue
            index = self.rng.choice(running)
            await self.cluster.kill(index)
            revivals.append(asyncio.create_task(self.cluster.revive(index)))
        await asyncio.gather(*revivals)

    async def shopper(self, user: FakeUser) -> None:
        rng = random.Random(SEED + user.id)
        await asyncio.sleep(rng.uniform(0, 20))
        while time.monotonic() < self.stop_at:
            try:
                card = await buy(user)
            except AssertionError as exc:
                self.actions["buy interrupted"] += 1
                self.interruptions[_first_words(exc)] += 1
                await asyncio.sleep(rng.uniform(5, 15))
                continue
            self.actions["bought"] += 1
            choice = rng.random()
            try:
                if choice < 0.3:
                    await asyncio.sleep(rng.uniform(0.0, 3.0))
                    await user.click("Cancel", message_id=card.message_id)
                    self.actions["cancel clicked"] += 1
                elif choice < 0.7:
                    await self._finish_after_code(user, card.message_id)
                else:
                    self.actions["left alone"] += 1
            except AssertionError as exc:
                self.actions["action interrupted"] += 1
                self.interruptions[_first_words(exc)] += 1
            # A human's pace: about 2.5 orders a second from 100 users.
            await asyncio.sleep(min(rng.uniform(20, 50), max(0, self.stop_at - time.monotonic())))

    async def _finish_after_code(self, user: FakeUser, card_id: int) -> None:
        try:
            await user.wait_for(
                predicate=lambda m: m.message_id == card_id and "Finish" in " ".join(m.labels),
                # Past the stress the order is left to end by itself.
                timeout=max(1.0, min(ACTIVATION_TIMEOUT, self.stop_at - time.monotonic())),
            )
        except AssertionError:
            self.actions["no code came"] += 1  # 30% never get one
            return
        await user.click("Finish", message_id=card_id)
        self.actions["finish clicked"] += 1


def _first_words(exc: AssertionError) -> str:
    return str(exc).split(" in chat ", 1)[0][:70]


async def _credit_wallets(url: str) -> None:
    db = await Database.open(url)  # also creates the schema, before any replica starts
    try:
        for user_id in range(1, USERS + 1):
            await db.wallet.credit(
                user_id, WALLET, note="replicas", idempotency_key=f"seed:{user_id}"
            )
    finally:
        await db.close()


async def _orders(db: Database) -> list[Order]:
    return [
        order
        for user_id in range(1, USERS + 1)
        for order in await db.orders.list_for_user(user_id, limit=10_000)
    ]


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async with postgres_database() as url:
        yield url


@pytest.mark.slow
@pytest.mark.timeout(480)
async def test_replicas_lose_nothing_while_killed(
    tmp_path: Path, pg_url: str, redis_url: str
) -> None:
    bot_token, smsman_token = fresh_tokens()
    async with (
        FakeTelegram(token=bot_token, max_per_second=30) as telegram,
        FakeSmsMan(token=smsman_token, seed=SEED) as smsman,
    ):
        smsman.default_catalogue()
        smsman.balance = Decimal(10**9)
        smsman.latency = 0.02
        smsman.lifetime = 3600
        cluster = Cluster.for_fakes(
            telegram,
            smsman,
            tmp_path,
            count=REPLICAS,
            database_url=pg_url,
            redis_url=redis_url,
            access_mode="shop",
            markup_percent=10,
            admin_ids=[ADMIN],
            allowed_user_ids=[],
            sms_poll_interval=1.0,
            activation_timeout=ACTIVATION_TIMEOUT,
            smsman_timeout=2.0,
            smsman_max_rps=SMSMAN_MAX_RPS,
            smsman_max_concurrency=10,
            telegram_max_rps=TELEGRAM_MAX_RPS,
            purchases_per_minute=1000,
            max_active_orders=2,
            log_level="INFO",
        )
        await _credit_wallets(pg_url)
        users = [telegram.user(uid, first_name=f"U{uid}") for uid in range(1, USERS + 1)]
        run = Run(telegram, smsman, cluster)
        started = time.monotonic()
        tasks: list[asyncio.Task[None]] = []
        try:
            run.stalls.start()
            await cluster.start()
            run.phases["replicas ready"] = time.monotonic() - started
            run.stop_at = time.monotonic() + STRESS_SECONDS
            tasks.append(asyncio.create_task(run.codes_appear()))
            tasks.append(asyncio.create_task(run.stuck_watch()))
            stress = [
                asyncio.create_task(run.killer()),
                *(asyncio.create_task(run.shopper(user)) for user in users),
            ]
            tasks += stress
            await asyncio.wait_for(asyncio.gather(*stress), STRESS_SECONDS + 120)
            run.phases["stress over"] = time.monotonic() - started

            # Calm: no more kills or purchases; every order must now end by itself.
            db = await Database.open(pg_url)
            try:

                async def all_closed() -> bool:
                    return not await db.orders.list_open()

                with contextlib.suppress(AssertionError):  # checked below, with figures
                    await wait_until(all_closed, timeout=ACTIVATION_TIMEOUT * 3, interval=0.5)
                run.phases["orders ended"] = time.monotonic() - started
                owners = {o.request_id: o.user_id for o in await _orders(db) if o.request_id}

                def codes_out() -> bool:
                    return all(
                        code_sends(telegram, owners[rid], code)
                        for rid, code in smsman.handed_out
                        if rid in owners
                    )

                with contextlib.suppress(AssertionError):  # checked below, with names
                    await wait_until(codes_out, timeout=15, interval=0.5)
            finally:
                await db.close()
            run.phases["codes out"] = time.monotonic() - started
            statuses = await cluster.stop()
            run.stalls.stop()
            wall = time.monotonic() - started
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            await cluster.ensure_stopped()
            await forget_redis_keys(redis_url, [bot_token, smsman_token])

        _write_calls(tmp_path / "telegram-calls.tsv", telegram)
        db = await Database.open(pg_url)
        try:
            figures = await _check(db, run, wall)
        finally:
            await db.close()
        assert statuses == [0] * REPLICAS, statuses
        log = cluster.log_text()
        assert telegram.token.split(":")[1] not in log and smsman.token not in log
        assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]
        errors = _unexpected_errors(telegram, SimpleNamespace(kills=[t for t, _ in cluster.kills]))  # type: ignore[arg-type]
        # Two replicas may refresh one card at the same moment (a click's answer on one,
        # the queued refresh on the other; no lock spans replicas): the second identical
        # edit is refused as "not modified". The user sees nothing; counted, and bounded.
        races = [e for e in errors if _identical_card_edit(e)]
        print(f"replicas: identical card edits refused (two replicas at once): {len(races)}")
        assert len(races) <= len(cluster.kills), races
        errors = [e for e in errors if e not in races]
        assert errors == [], errors
        assert figures.ok, figures.problems


def _identical_card_edit(error: object) -> bool:
    method = getattr(error, "method", "")
    description = getattr(error, "description", "")
    text = str(getattr(error, "params", {}).get("text", ""))
    return (
        method == "editMessageText"
        and "not modified" in description
        and text.startswith("<b>Order #")
    )


@dataclass
class Figures:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


async def _check(db: Database, run: Run, wall: float) -> Figures:
    """Every check of the run; problems are collected (all shown at once), figures printed."""
    telegram, smsman, kills = run.telegram, run.smsman, [t for t, _ in run.cluster.kills]
    out = Figures()
    orders = await _orders(db)
    owners = {o.request_id: o.user_id for o in orders if o.request_id is not None}
    statuses = Counter(o.status.value for o in orders)
    if not all(o.status in ENDED for o in orders):
        out.problems.append(f"orders not ended: {statuses}")

    # Codes: each reached its user; a repeat only across a kill, at most one per kill.
    delivered, never, repeats = 0, [], []
    for request_id, code in sorted(smsman.handed_out):
        if request_id not in owners:
            continue  # a number whose purchase answer was lost: never ours to poll
        sends = code_sends(telegram, owners[request_id], code)
        if not sends:
            never.append(code)
            continue
        delivered += 1
        repeats += [(sends[0], again, code) for again in sends[1:]]
    if never:
        out.problems.append(f"{len(never)} codes never reached their user: {never[:10]}")
    per_kill: Counter[float] = Counter()
    for first, again, code in repeats:
        between = [kill for kill in kills if first < kill < again]
        if not between:
            out.problems.append(f"code {code} sent again without a kill in between")
        else:
            per_kill[between[-1]] += 1
    if any(count > 1 for count in per_kill.values()):
        out.problems.append(f"more than one repeated code message per kill: {per_kill}")

    # Money: held once, captured or released once, never both; the books balance.
    charged_twice = released_twice = 0
    for order in orders:
        history = await db.wallet.history(order.user_id, limit=100_000)
        kinds = Counter(row.kind for row in history if row.order_id == order.id)
        codes = await db.orders.codes_of(order.id)
        charged_twice += kinds[LedgerKind.CAPTURE] > 1
        released_twice += kinds[LedgerKind.RELEASE] > 1
        if kinds[LedgerKind.CAPTURE] and kinds[LedgerKind.RELEASE]:
            out.problems.append(f"order {order.id} both captured and released: {kinds}")
        paid_as_it_should = (
            order.money is Money.CAPTURED if codes else order.money in (Money.RELEASED, Money.NONE)
        )
        if not paid_as_it_should:
            out.problems.append(f"order {order.id}: money {order.money} with {len(codes)} codes")
    if charged_twice or released_twice:
        out.problems.append(f"charged twice: {charged_twice}, released twice: {released_twice}")
    invariant = await db.wallet.check_invariant()
    if invariant:
        out.problems.append(f"check_invariant: {invariant[:5]}")

    # Rates, summed over the replicas, as the fakes saw them (see StallWatch).
    smsman_peak, smsman_raw = run.stalls.busiest_second(call.time for call in smsman.calls)
    smsman_calls = Counter(call.method for call in smsman.calls)
    if smsman_peak > SMSMAN_MAX_RPS * 1.1:
        out.problems.append(f"SMS-Man busiest second {smsman_peak} > {SMSMAN_MAX_RPS} + 10%")
    telegram_peak, telegram_raw = run.stalls.busiest_second(telegram.counted)
    if telegram_peak > TELEGRAM_MAX_RPS:
        out.problems.append(f"Telegram busiest second {telegram_peak} > {TELEGRAM_MAX_RPS}")
    overall_429s = _overall_429s(telegram)
    chat_429s = len(telegram.rate_limited) - overall_429s
    if telegram.rate_limited:
        out.problems.append(
            f"429 from Telegram: {overall_429s} over the bot's limit, {chat_429s} over a chat's"
        )

    posts = telegram.webhook_posts
    webhook_failed = Counter(post.error.split(":")[0] for post in posts if not post.ok)
    out.lines = [
        f"replicas: {REPLICAS} replicas, {len(kills)} SIGKILLs (every {KILL_EVERY:g} s),"
        f" {USERS} users, wall {wall:.0f} s"
        f" ({', '.join(f'{name} at {at:.0f} s' for name, at in run.phases.items())})",
        f"replicas: orders={len(orders)} {dict(statuses)} actions={dict(run.actions)}",
        f"replicas: codes handed out={len(smsman.handed_out)} delivered={delivered}"
        f" never={len(never)} repeated={len(repeats)} (per kill at most"
        f" {max(per_kill.values(), default=0)})",
        f"replicas: charged twice={charged_twice} released twice={released_twice}"
        f" check_invariant={'clean' if not invariant else len(invariant)}",
        f"replicas: SMS-Man busiest second={smsman_peak} (with the fakes' stalls:"
        f" {smsman_raw}; SMSMAN_MAX_RPS={SMSMAN_MAX_RPS}, +10% = {SMSMAN_MAX_RPS * 1.1:g})"
        f" calls={dict(smsman_calls)}",
        f"replicas: Telegram busiest second={telegram_peak} (with the fakes' stalls:"
        f" {telegram_raw}; TELEGRAM_MAX_RPS={TELEGRAM_MAX_RPS}) 429s: {overall_429s} overall,"
        f" {chat_429s} per chat"
        f" webhook posts={len(posts)} (failed, posted again: {dict(webhook_failed)})",
        f"replicas: the fakes' event loop: {run.stalls.summary()}; load average"
        f" {' '.join(f'{x:.1f}' for x in os.getloadavg())}",
        f"replicas: users' waits cut short: {dict(run.interruptions)}",
    ]
    if out.problems:
        out.lines.append(f"replicas: PROBLEMS: {out.problems}")
    for line in out.lines:
        print(line)
    RUN_FIGURES.extend(out.lines)
    return out


def _overall_429s(telegram: FakeTelegram) -> int:
    """429s the fake answered for its overall limit (the calls it accepted in the second
    before filled it); the others were for a chat's limit."""
    stamps = sorted(telegram.counted)
    refused = [c.time for c in telegram.calls if c.status == 429 and not c.injected]
    return sum(
        1
        for at in refused
        if bisect.bisect_left(stamps, at) - bisect.bisect_right(stamps, at - 1.0)
        >= telegram.max_per_second
    )


def _write_calls(path: Path, telegram: FakeTelegram) -> None:
    """Every call the fake Telegram answered, one a line, for a look after a failed run."""
    with path.open("w") as out:
        for call in telegram.calls:
            text = str(call.params.get("text", "")).replace("\n", " ")[:90]
            chat = call.params.get("chat_id", "")
            out.write(f"{call.time:.3f}\t{call.method}\t{call.status}\t{chat}\t{text}\n")
