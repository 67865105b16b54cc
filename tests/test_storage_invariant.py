"""The money invariant: kept by random sequences of operations (checked against a model),
and check_invariant really reports tampered rows."""

from __future__ import annotations

import asyncio
import random
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from storage import Database, InsufficientFunds, TooManyActiveOrders
from storage.models import Money, OrderStatus

S = OrderStatus
USERS = (1, 2, 3)
MAX_ACTIVE = 3
ACTIONS = (
    "mark_waiting",
    "mark_failed",
    "cancel",
    "expire",
    "add_code",
    "finish",
    "request_more",
)


@dataclass
class ModelOrder:
    id: int
    user: int
    price: int
    multiple_sms: bool
    status: OrderStatus = S.PURCHASING
    money: Money = Money.NONE
    codes: set[str] = field(default_factory=set)
    want_more: bool = False


@dataclass
class Model:
    balance: dict[int, int] = field(default_factory=lambda: dict.fromkeys(USERS, 0))
    orders: list[ModelOrder] = field(default_factory=list)

    def release(self, order: ModelOrder) -> None:
        if order.money is Money.HELD:
            order.money = Money.RELEASED
            self.balance[order.user] += order.price

    def to_received(self, order: ModelOrder) -> None:
        order.status = S.RECEIVED
        if order.money is Money.HELD:
            order.money = Money.CAPTURED

    def act(self, order: ModelOrder, action: str, code: str) -> bool:
        """Apply `action`; True if it should have happened (a code stored, a move made)."""
        status = order.status
        if action == "mark_waiting" and status is S.PURCHASING:
            order.status = S.WAITING
        elif action == "mark_failed" and status is S.PURCHASING:
            order.status = S.FAILED
            self.release(order)
        elif action in ("cancel", "expire") and status is S.WAITING:
            order.status = S.CANCELLED if action == "cancel" else S.EXPIRED
            self.release(order)
        elif action == "add_code" and code not in order.codes and status in (S.WAITING, S.RECEIVED):
            order.codes.add(code)
            order.want_more = False
            if status is not S.RECEIVED:
                self.to_received(order)
        elif action == "finish" and status is S.RECEIVED:
            order.status = S.FINISHED
            order.want_more = False
        elif (
            action == "request_more"
            and status is S.RECEIVED
            and order.multiple_sms
            and not order.want_more
        ):
            order.want_more = True
        else:
            return False
        return True


credit_op = st.tuples(st.just("credit"), st.sampled_from(USERS), st.integers(1, 400))
debit_op = st.tuples(st.just("debit"), st.sampled_from(USERS), st.integers(1, 400))
create_op = st.tuples(
    st.just("create"), st.sampled_from(USERS), st.integers(0, 300), st.booleans(), st.booleans()
)
# Any call on any order (mostly refused), or "advance": a call that suits the order's status.
act_op = st.tuples(
    st.just("act"),
    st.integers(0, 30),
    st.sampled_from((*ACTIONS, "advance")),
    st.sampled_from("abc"),
    st.integers(0, 11),
)
advance_op = act_op.map(lambda op: (*op[:2], "advance", *op[3:]))
SUITABLE = {
    S.PURCHASING: ("mark_waiting", "mark_waiting", "mark_failed"),
    S.WAITING: ("add_code", "add_code", "cancel", "expire"),
    S.RECEIVED: ("add_code", "finish", "request_more"),
    S.CANCELLED: ("add_code", "cancel"),
    S.EXPIRED: ("add_code", "cancel"),
    S.FINISHED: ("finish", "add_code"),
    S.FAILED: ("mark_waiting", "cancel"),
}
# Weighted towards acting on orders, so that most examples walk orders through their lives.
_WEIGHTED = ["credit", "debit"] + ["create"] * 3 + ["act"] * 2 + ["advance"] * 6
_BY_KIND = {
    "credit": credit_op,
    "debit": debit_op,
    "create": create_op,
    "act": act_op,
    "advance": advance_op,
}
operations = st.lists(
    st.sampled_from(_WEIGHTED).flatmap(_BY_KIND.__getitem__), min_size=5, max_size=60
)


async def run_sequence(path: Path, ops: list[tuple[object, ...]], seed: int) -> None:
    model = Model()
    db = await Database.open(path)
    try:
        for user in USERS:  # start with some money, so that most purchases can happen
            await db.wallet.credit(user, 300, note=None, idempotency_key=f"start{user}")
            model.balance[user] = 300
        for step, op in enumerate(ops):
            await apply(db, model, step, op)
        for user in USERS:
            held = sum(o.price for o in model.orders if o.user == user and o.money is Money.HELD)
            assert await db.wallet.balance(user) == (model.balance[user], held)
        for mine in model.orders:
            got = await db.orders.get(mine.id)
            assert got is not None
            assert (got.status, got.money, got.want_more) == (
                mine.status,
                mine.money,
                mine.want_more,
            )
            assert {c.code for c in await db.orders.codes_of(mine.id)} == mine.codes
        assert await db.wallet.check_invariant() == []

        # The same kinds of operations all at once: whatever interleaving, still consistent.
        rng = random.Random(seed)
        burst = [
            apply(db, None, 1000 + i, op) for i, op in enumerate(rng.sample(ops, len(ops)) * 2)
        ]
        await asyncio.gather(*burst)
        assert await db.wallet.check_invariant() == []
    finally:
        await db.close()


async def apply(db: Database, model: Model | None, step: int, op: tuple[object, ...]) -> None:
    """Run one operation; with a model, predict its outcome and compare."""
    kind = op[0]
    if kind == "credit":
        _, user, amount = op
        assert isinstance(user, int) and isinstance(amount, int)
        await db.wallet.credit(user, amount, note=None, idempotency_key=f"c{step}")
        if model:
            model.balance[user] += amount
    elif kind == "debit":
        _, user, amount = op
        assert isinstance(user, int) and isinstance(amount, int)
        short = (model.balance[user] if model else 0) < amount
        try:
            await db.wallet.debit(
                user,
                amount,
                note=None,
                idempotency_key=f"d{step}",
            )
        except InsufficientFunds as error:
            assert model is None or (short and error.available == model.balance[user])
        else:
            if model:
                assert not short
                model.balance[user] -= amount
    elif kind == "create":
        _, user, price, hold, multiple_sms = op
        assert isinstance(user, int) and isinstance(price, int)
        active = sum(
            1
            for o in (model.orders if model else [])
            if o.user == user and o.status in (S.PURCHASING, S.WAITING)
        )
        try:
            order = await db.orders.create(
                user_id=user,
                chat_id=user,
                country_id=1,
                country_title="X",
                service_id=1,
                service_title="Y",
                price=price,
                cost=price // 2,
                currency="RUB",
                idempotency_key=f"o{step}",
                multiple_sms=bool(multiple_sms),
                hold=bool(hold),
                max_active=MAX_ACTIVE,
            )
        except TooManyActiveOrders:
            assert model is None or active >= MAX_ACTIVE
        except InsufficientFunds:
            assert model is None or (active < MAX_ACTIVE and hold and model.balance[user] < price)
        else:
            if model:
                assert active < MAX_ACTIVE
                mine = ModelOrder(order.id, user, price, bool(multiple_sms))
                if hold:
                    assert model.balance[user] >= price
                    model.balance[user] -= price
                    mine.money = Money.HELD
                model.orders.append(mine)
    else:
        _, index, action, code, choice = op
        assert isinstance(index, int) and isinstance(action, str) and isinstance(code, str)
        assert isinstance(choice, int)
        if model is None:
            every = [o for u in USERS for o in await db.orders.list_for_user(u, limit=1000)]
            if not every:
                return
            order = every[index % len(every)]
            order_id, status = order.id, order.status
        elif not model.orders:
            return
        else:
            mine = model.orders[index % len(model.orders)]
            order_id, status = mine.id, mine.status
        if action == "advance":
            action = SUITABLE[status][choice % len(SUITABLE[status])]
        if action == "mark_waiting":
            happened = await db.orders.mark_waiting(
                order_id, request_id=step, number="+1", expires_at=2e9, next_poll_at=0
            )
        elif action == "add_code":
            happened = await db.orders.add_code(order_id, code) is not None
        else:
            happened = await getattr(db.orders, action)(order_id)
        if model:
            assert happened == model.act(mine, action, code), (action, mine)
            event(f"{action} {'happened' if happened else 'refused'}")


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(ops=operations, seed=st.integers(0, 2**16))
def test_random_operations_keep_the_books(ops: list[tuple[object, ...]], seed: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(run_sequence(Path(folder) / "h.sqlite3", ops, seed))


# -- tampering ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def books(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """A closed database with one order in each money state, and their ids."""
    path = tmp_path_factory.mktemp("books") / "books.sqlite3"

    async def build() -> dict[str, int]:
        async with await Database.open(path) as db:
            await db.wallet.credit(1, 1000, note=None, idempotency_key="top-up")
            ids = {}
            for name in ("held", "captured", "released", "private"):
                order = await db.orders.create(
                    user_id=1,
                    chat_id=1,
                    country_id=1,
                    country_title="X",
                    service_id=1,
                    service_title="Y",
                    price=0 if name == "private" else 100,
                    cost=50,
                    currency="RUB",
                    idempotency_key=name,
                    multiple_sms=False,
                    hold=name != "private",
                    max_active=10,
                )
                ids[name] = order.id
                if name != "held":
                    await db.orders.mark_waiting(
                        order.id, request_id=order.id, number="+1", expires_at=9, next_poll_at=0
                    )
                if name in ("captured", "private"):
                    await db.orders.add_code(order.id, "1")
                if name == "released":
                    await db.orders.cancel(order.id)
            await db.wallet.debit(1, 10, note=None, idempotency_key="fix")
            assert await db.wallet.check_invariant() == []
            return ids

    return path, asyncio.run(build())


TAMPERING = [
    ("UPDATE users SET balance = balance + 1", ["user 1: balance 791 != ledger sum 790"]),
    (
        "UPDATE ledger SET amount = -99 WHERE idempotency_key = 'hold:{held}'",
        ["user 1: balance", "order {held}: 1 ledger row(s) not matching price 100"],
    ),
    (
        "DELETE FROM ledger WHERE idempotency_key = 'release:{released}'",
        ["user 1: balance", "order {released}: money=released but ledger has hold=1 capture=0"],
    ),
    (
        "UPDATE orders SET money = 'held' WHERE id = {captured}",
        [
            "order {captured}: money=held but ledger has hold=1 capture=1 release=0",
            "order {captured}: money=held with status=received",
        ],
    ),
    (
        "UPDATE orders SET status = 'waiting' WHERE id = {captured}",
        ["order {captured}: money=captured with status=waiting"],
    ),
    (
        "UPDATE orders SET money = 'released' WHERE id = {held}",
        ["order {held}: money=released but ledger has hold=1 capture=0 release=0"],
    ),
    (
        "INSERT INTO ledger (user_id, amount, kind, order_id, created_at, idempotency_key)"
        " VALUES (1, 0, 'capture', {private}, 0, 'capture:{private}')",
        ["order {private}: money=none but ledger has hold=0 capture=1 release=0"],
    ),
    (
        "UPDATE ledger SET idempotency_key = 'hold:999' WHERE idempotency_key = 'hold:{held}'",
        ["ledger row"],
    ),
    (
        "UPDATE ledger SET amount = 10 WHERE idempotency_key = 'fix'",
        ["user 1: balance", "ledger row"],
    ),
    (
        "INSERT INTO users (id, first_seen, balance) VALUES (2, 0, 0);"
        "UPDATE ledger SET user_id = 2 WHERE idempotency_key = 'capture:{captured}'",
        ["order {captured}: 1 ledger row(s) of another user"],
    ),
]


@pytest.mark.parametrize(("sql", "expected"), TAMPERING)
async def test_check_invariant_reports_tampering(
    books: tuple[Path, dict[str, int]], tmp_path: Path, sql: str, expected: list[str]
) -> None:
    source, ids = books
    path = tmp_path / "tampered.sqlite3"
    shutil.copy(source, path)
    conn = sqlite3.connect(path)
    conn.executescript(sql.format(**ids))
    conn.close()
    async with await Database.open(path) as db:
        problems = await db.wallet.check_invariant()
    for fragment in expected:
        wanted = fragment.format(**ids)
        assert any(wanted in line for line in problems), (wanted, problems)


async def test_untouched_copy_is_clean(books: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    source, _ = books
    shutil.copy(source, tmp_path / "copy.sqlite3")
    async with await Database.open(tmp_path / "copy.sqlite3") as db:
        assert await db.wallet.check_invariant() == []
        assert await db.wallet.balance(1) == (790, 100)
