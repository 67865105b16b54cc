"""Nothing lost: the bot process in shop mode under SIGKILLs, provider faults and floods.

Fifty users buy, cancel and finish numbers, and ten more top their wallets up with
Telegram Stars (some payments redelivered), while the run kills and restarts the bot at
random moments, the fake SMS-Man fails a fifth of all calls in every way it can (before
and after the effect), and the fake Telegram answers bursts of 429. Afterwards the books
and the chats must agree with what SMS-Man handed out, and every Star Telegram took must be
credited exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import re
import time
from collections import Counter
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from sandbox.smsman import FAULT_KINDS, FakeSmsMan
from sandbox.telegram import Call, FakeTelegram, FakeUser, StarPayment
from storage.db import Database
from storage.models import LedgerKind, Money, OrderStatus
from tests.botproc import BotProcess, buy, code_sends, wait_until
from tests.conftest import RUN_FIGURES
from tests.test_stars import invoice_for

SEED = 20261128
USERS = 50
STRESS_SECONDS = 40.0
MIN_RESTARTS = 10
ACTIVATION_TIMEOUT = 10
WALLET = 1_000_00  # minor units each user starts with
ADMIN = 1000
TOPPERS = range(101, 111)  # users who only top up with Stars
STARS_RATE = Decimal("1.35")


class Chaos:
    def __init__(self, telegram: FakeTelegram, smsman: FakeSmsMan, bot: BotProcess) -> None:
        self.telegram = telegram
        self.smsman = smsman
        self.bot = bot
        self.rng = random.Random(SEED)
        self.kills: list[float] = []  # monotonic times of SIGKILL
        self.stop_at = 0.0
        self.actions: Counter[str] = Counter()
        self.scheduled: set[int] = set()
        self.payments: list[StarPayment] = []

    async def codes_appear(self) -> None:
        """Most numbers get a code at a random moment, some never do."""
        while True:
            for request_id in list(self.smsman.requests):
                if request_id in self.scheduled:
                    continue
                self.scheduled.add(request_id)
                if self.rng.random() < 0.7:
                    self.smsman.schedule_code(request_id, after=self.rng.uniform(0.2, 6.0))
            await asyncio.sleep(0.05)

    async def floods(self) -> None:
        """Bursts of 429 from Telegram, a second or two at a time."""
        while time.monotonic() < self.stop_at:
            await asyncio.sleep(self.rng.uniform(2.0, 4.0))
            self.telegram.flood(0.4, retry_after=1, seed=self.rng.randrange(10**6))
            await asyncio.sleep(self.rng.uniform(0.5, 1.5))
            self.telegram.flood(0)

    async def killer(self) -> None:
        """SIGKILL at random moments, then start again on the same database."""
        while time.monotonic() < self.stop_at or len(self.kills) < MIN_RESTARTS:
            await asyncio.sleep(self.rng.uniform(1.5, 3.5))
            await self.bot.kill()
            # Stamped once the process is dead: a send that reached Telegram while the
            # SIGKILL was on its way still belongs to the run it interrupted.
            self.kills.append(time.monotonic())
            await self.bot.start(timeout=60)

    async def topper(self, user: FakeUser) -> None:
        """Top-ups with Stars; now and then Telegram hands the payment out twice."""
        rng = random.Random(SEED - user.id)
        while time.monotonic() < self.stop_at:
            try:
                invoice = await invoice_for(user, rng.choice([50, 100, 250]))
            except AssertionError:
                self.actions["topup interrupted"] += 1
                await asyncio.sleep(rng.uniform(0.2, 1.0))
                continue
            payment = await user.pay(invoice)
            if payment.ok:
                self.payments.append(payment)
                self.actions["topped up"] += 1
                if rng.random() < 0.3:
                    self.telegram.deliver_payment(payment)
                    self.actions["payment redelivered"] += 1
            else:
                self.actions[f"payment refused: {payment.error_message}"] += 1
            await asyncio.sleep(rng.uniform(0.3, 1.5))

    async def shopper(self, user: FakeUser) -> None:
        rng = random.Random(SEED + user.id)
        while time.monotonic() < self.stop_at:
            try:
                card = await buy(user)
            except AssertionError:
                self.actions["buy interrupted"] += 1
                await asyncio.sleep(rng.uniform(0.2, 1.0))
                continue
            self.actions["bought"] += 1
            choice = rng.random()
            try:
                if choice < 0.3:
                    await asyncio.sleep(rng.uniform(0.0, 2.0))
                    await user.click("Cancel", message_id=card.message_id)
                    self.actions["cancel clicked"] += 1
                elif choice < 0.7:
                    await user.wait_for(
                        predicate=lambda m, mid=card.message_id: (
                            m.message_id == mid and "Finish" in " ".join(m.labels)
                        ),
                        timeout=8.0,
                    )
                    await user.click("Finish", message_id=card.message_id)
                    self.actions["finish clicked"] += 1
                else:
                    self.actions["left alone"] += 1
            except AssertionError:
                self.actions["action interrupted"] += 1
            await asyncio.sleep(rng.uniform(0.1, 1.0))


async def _credit_wallets(url: str, users: range) -> None:
    db = await Database.open(url)
    try:
        for user_id in users:
            await db.wallet.credit(user_id, WALLET, note="chaos", idempotency_key=f"seed:{user_id}")
    finally:
        await db.close()


@pytest.mark.slow
async def test_chaos_nothing_lost(tmp_path: Path, database_url: str) -> None:
    """Runs once on SQLite and once on PostgreSQL (database_url)."""
    user_ids = range(1, USERS + 1)
    async with (
        # Crash safety is what this shows, not pacing (bench/delivery.py): a bot allowed
        # ten times Telegram's overall rate, so 50 busy users are not queued behind it.
        FakeTelegram(token="777000:CHAOS-bot-token", max_per_second=300) as telegram,
        FakeSmsMan(token="chaos-smsman-token", seed=SEED) as smsman,
    ):
        smsman.default_catalogue()
        smsman.balance = Decimal(10**9)
        smsman.hang_seconds = 1.5
        bot = BotProcess.for_fakes(
            telegram,
            smsman,
            tmp_path,
            access_mode="shop",
            markup_percent=10,
            admin_ids=[ADMIN],
            allowed_user_ids=[],
            sms_poll_interval=0.3,
            activation_timeout=ACTIVATION_TIMEOUT,
            smsman_timeout=0.7,
            smsman_max_rps=200,
            smsman_max_concurrency=20,
            purchases_per_minute=1000,
            max_active_orders=3,
            stars_rate=STARS_RATE,
            log_level="INFO",
            telegram_max_rps=250,
        )
        await _credit_wallets(bot.database_url, user_ids)
        users = [telegram.user(uid, first_name=f"U{uid}") for uid in user_ids]
        toppers = [telegram.user(uid, first_name=f"T{uid}") for uid in TOPPERS]
        chaos = Chaos(telegram, smsman, bot)
        await bot.start(timeout=60)
        smsman.fault_rate = 0.2
        smsman.fault_kinds = set(FAULT_KINDS)
        smsman.fault_after_effect_rate = 0.5
        chaos.stop_at = time.monotonic() + STRESS_SECONDS

        background = [asyncio.create_task(chaos.codes_appear())]
        stress = [
            asyncio.create_task(chaos.killer()),
            asyncio.create_task(chaos.floods()),
            *(asyncio.create_task(chaos.shopper(user)) for user in users),
            *(asyncio.create_task(chaos.topper(user)) for user in toppers),
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*stress), STRESS_SECONDS + 120)

            # Calm: no more faults; every order must now reach an end by itself.
            smsman.fault_rate = 0
            telegram.flood(0)
            db = await Database.open(bot.database_url)
            try:

                async def all_closed() -> bool:
                    return not await db.orders.list_open()

                await wait_until(all_closed, timeout=ACTIVATION_TIMEOUT * 4, interval=0.5)
                orders_by_request = await _orders_by_request(db)

                def codes_out() -> bool:
                    return all(
                        code_sends(telegram, orders_by_request[rid][1], code)
                        for rid, code in smsman.handed_out
                        if rid in orders_by_request
                    )

                await wait_until(codes_out, timeout=10)

                async def all_credited() -> bool:
                    known = await db.payments.known(str(p.charge_id) for p in chaos.payments)
                    return len(known) == len(chaos.payments)

                await wait_until(all_credited, timeout=10, interval=0.2)
            finally:
                await db.close()
            assert await bot.terminate() == 0
        finally:
            for task in [*background, *stress]:
                task.cancel()
            for task in [*background, *stress]:
                with contextlib.suppress(BaseException):
                    await task
            await bot.stop()

        db = await Database.open(bot.database_url)
        try:
            await _check_books(db, telegram, smsman, chaos)
        finally:
            await db.close()
        log = bot.log_text()
        # One line per event, naming the order and its user.
        delivered = [line for line in log.splitlines() if ": code delivered" in line]
        assert delivered and all(re.search(r"order \d+ user \d+: code", line) for line in delivered)
        assert telegram.token not in log and telegram.token.split(":")[1] not in log
        assert smsman.token not in log
        assert _unexpected_errors(telegram, chaos) == []


def _unexpected_errors(telegram: FakeTelegram, chaos: Chaos) -> list[object]:
    """Telegram errors the bot caused by itself. Three come from the crashes, not the bot:
    409 when a killed process's long poll still holds the line; "query is too old" for a
    callback answered by a process that was then killed before confirming the update, so
    the next process received it again; and "message is not modified" for a card whose
    edit Telegram accepted just before a kill, before the bot had recorded it, so the next
    process sent the same edit again."""
    refused_at = {
        str(call.params.get("callback_query_id")): call.time
        for call in telegram.calls_to("answerCallbackQuery")
        if call.status == 400
    }
    edits = telegram.calls_to("editMessageText")
    unexpected: list[object] = []
    for error in telegram.errors:
        if error.status == 409:
            continue
        if (
            error.method == "editMessageText"
            and "not modified" in error.description
            and _repeated_across_a_kill(error.params, edits, chaos.kills)
        ):
            continue
        if error.method == "answerCallbackQuery" and "too old" in error.description:
            callback_id = str(error.params.get("callback_query_id"))
            callback = telegram._callbacks.get(callback_id)
            refused = refused_at.get(callback_id, 0.0)
            if callback is not None and any(
                callback.created < kill < refused for kill in chaos.kills
            ):
                continue
        if error.method == "answerPreCheckoutQuery" and "too old" in error.description:
            query = telegram._pre_checkouts.get(str(error.params.get("pre_checkout_query_id")))
            if query is not None and any(query.created < kill for kill in chaos.kills):
                continue  # the same: answered by a process killed before confirming it
        unexpected.append(error)
    return unexpected


async def _reconciled(db: Database, chaos: Chaos) -> set[str]:
    found = set()
    for payment in chaos.payments:
        stored = await db.payments.get(str(payment.charge_id))
        if stored is not None and stored.source.value == "reconciled":
            found.add(stored.charge_id)
    return found


def _repeated_across_a_kill(
    params: Mapping[str, Any], edits: list[Call], kills: list[float]
) -> bool:
    """The same edit of the same message was accepted, then a kill, then it was refused."""
    same = [
        call
        for call in edits
        if call.params.get("message_id") == params.get("message_id")
        and call.params.get("chat_id") == params.get("chat_id")
        and call.params.get("text") == params.get("text")
    ]
    accepted = [call.time for call in same if call.status == 200]
    refused = [call.time for call in same if call.status == 400]
    return any(a < kill < r for a in accepted for r in refused for kill in kills)


async def _orders_by_request(db: Database) -> dict[int, tuple[int, int]]:
    """request_id -> (order id, user id), over every order with a number."""
    found: dict[int, tuple[int, int]] = {}
    for user_id in range(1, USERS + 1):
        for order in await db.orders.list_for_user(user_id, limit=10_000):
            if order.request_id is not None:
                found[order.request_id] = (order.id, order.user_id)
    return found


async def _check_books(
    db: Database, telegram: FakeTelegram, smsman: FakeSmsMan, chaos: Chaos
) -> None:
    orders_by_request = await _orders_by_request(db)
    orders = [
        o for uid in range(1, USERS + 1) for o in await db.orders.list_for_user(uid, limit=10_000)
    ]
    ended = {OrderStatus.FINISHED, OrderStatus.CANCELLED, OrderStatus.EXPIRED, OrderStatus.FAILED}
    assert all(o.status in ended for o in orders), Counter(o.status for o in orders)

    # Every code SMS-Man handed out for a number we know reached its user, and a code
    # message is only ever sent again across a crash that interrupted its delivery.
    delivered = 0
    for request_id, code in sorted(smsman.handed_out):
        if request_id not in orders_by_request:
            continue  # a number whose purchase answer was lost: never ours to poll
        _order_id, user_id = orders_by_request[request_id]
        sends = code_sends(telegram, user_id, code)
        assert sends, f"code {code} of request {request_id} never reached user {user_id}"
        for first, again in itertools.pairwise(sends):
            assert any(first < kill < again for kill in chaos.kills), (
                f"code {code} sent twice without a crash in between"
            )
        delivered += 1

    # Every Star Telegram took is in exactly one wallet, at the rate quoted.
    for payment in chaos.payments:
        stored = await db.payments.get(str(payment.charge_id))
        assert stored is not None, f"payment {payment.charge_id} never credited"
        assert (stored.user_id, stored.stars) == (payment.user_id, payment.amount)
        assert stored.amount == int(payment.amount * STARS_RATE * 100)
    for user_id in TOPPERS:
        paid = sum(int(p.amount * STARS_RATE * 100) for p in chaos.payments if p.user_id == user_id)
        assert await db.wallet.balance(user_id) == (paid, 0), user_id
    assert telegram.stars_balance == sum(p.amount for p in chaos.payments)
    reconciled = len(await _reconciled(db, chaos))

    refunds = 0
    for order in orders:
        codes = await db.orders.codes_of(order.id)
        history = [
            row
            for row in await db.wallet.history(order.user_id, limit=100_000)
            if row.order_id == order.id
        ]
        kinds = Counter(row.kind for row in history)
        if not codes:
            # nobody paid for an order that got no code
            assert order.money in (Money.RELEASED, Money.NONE), (order.id, order.money)
            assert kinds[LedgerKind.CAPTURE] == 0
        else:
            assert order.money is Money.CAPTURED, (order.id, order.money)
        assert kinds[LedgerKind.RELEASE] <= 1, (order.id, kinds)
        refunds += kinds[LedgerKind.RELEASE]
    assert await db.wallet.check_invariant() == []

    # Shown at the end of the pytest run (conftest's terminal summary), -s or not.
    RUN_FIGURES.append(
        " ".join(
            [
                f"chaos: users={USERS} orders={len(orders)}",
                f"codes handed out={len(smsman.handed_out)} codes delivered={delivered}",
                f"refunds={refunds} restarts={len(chaos.kills)}",
                f"stars top-ups={len(chaos.payments)} (reconciled after a lost update:"
                f" {reconciled})",
                f"provider faults={sum(smsman.faults_injected.values())}",
                f"telegram 429s={len(telegram.injected)} actions={dict(chaos.actions)}",
                f"statuses={dict(Counter(o.status.value for o in orders))}",
            ]
        )
    )
