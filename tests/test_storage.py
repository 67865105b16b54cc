"""storage: opening, migrations, and every repository call (real files in tmp_path)."""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from storage import (
    TRANSITIONS,
    Database,
    DuplicateOrder,
    InsufficientFunds,
    InvalidAmount,
    MigrationError,
    TooManyActiveOrders,
    UserBanned,
)
from storage.migrate import apply_legacy_steps, head_revision, legacy_steps, split_statements
from storage.models import LedgerKind, Money, Order, OrderStatus
from storage.orders import _move

S = OrderStatus
_keys = itertools.count(1)
_requests = itertools.count(10_000)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = await Database.open(database_url)
    try:
        yield database
    finally:
        await database.close()


async def new_order(
    db: Database,
    user_id: int = 1,
    *,
    price: int = 100,
    cost: int = 60,
    hold: bool = True,
    multiple_sms: bool = False,
    max_active: int = 100,
    key: str | None = None,
    now: float | None = None,
) -> Order:
    return await db.orders.create(
        user_id=user_id,
        chat_id=user_id,
        country_id=7,
        country_title="Russia",
        service_id=3,
        service_title="Telegram",
        price=price,
        cost=cost,
        currency="RUB",
        idempotency_key=key or f"key-{next(_keys)}",
        multiple_sms=multiple_sms,
        hold=hold,
        max_active=max_active,
        now=now,
    )


async def order_in(db: Database, status: OrderStatus, user_id: int = 1, **kw: Any) -> Order:
    """A fresh order brought to `status` through the legal path."""
    if kw.get("hold", True):
        await db.wallet.credit(
            user_id, kw.get("price", 100), note=None, idempotency_key=f"fund-{next(_keys)}"
        )
    order = await new_order(db, user_id, **kw)
    if status is S.FAILED:
        assert await db.orders.mark_failed(order.id)
    elif status is not S.PURCHASING:
        request_id = next(_requests)
        assert await db.orders.mark_waiting(
            order.id, request_id=request_id, number="+79990001122", expires_at=2e9, next_poll_at=0
        )
        if status is S.CANCELLED:
            assert await db.orders.cancel(order.id)
        elif status is S.EXPIRED:
            assert await db.orders.expire(order.id)
        elif status in (S.RECEIVED, S.FINISHED):
            assert await db.orders.add_code(order.id, "1111") is not None
            if status is S.FINISHED:
                assert await db.orders.finish(order.id)
    fresh = await db.orders.get(order.id)
    assert fresh is not None and fresh.status is status
    return fresh


async def ledger_kinds(db: Database, user_id: int) -> list[LedgerKind]:
    return [row.kind for row in reversed(await db.wallet.history(user_id, limit=1000))]


# -- opening -----------------------------------------------------------------------------


async def pragma(database: Database, name: str, *, write: bool = False) -> Any:
    async def q(conn: Any) -> Any:
        return (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()

    return await (database.write(q) if write else database.read(q))


async def test_open_url_relative_to_cwd_creates_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    database = await Database.open("sqlite:///data/sub/bot.sqlite3")
    try:
        assert (tmp_path / "data" / "sub" / "bot.sqlite3").exists()
        assert await database.schema_version() == head_revision()
        assert await pragma(database, "journal_mode") == "wal"
        assert await pragma(database, "foreign_keys") == 1
        assert await pragma(database, "busy_timeout") > 0
        # FULL: a committed ledger row survives a power cut, not just a crash.
        assert await pragma(database, "synchronous", write=True) == 2
        assert await pragma(database, "foreign_keys", write=True) == 1
    finally:
        await database.close()


@pytest.mark.parametrize(
    "spelling", ["sqlite:///{}", "sqlite+aiosqlite:///{}", "{}"], ids=["plain", "driver", "path"]
)
async def test_every_sqlite_spelling_opens_the_same_file(tmp_path: Path, spelling: str) -> None:
    path = tmp_path / "spelled.sqlite3"
    async with await Database.open(spelling.format(path)) as database:
        await database.users.upsert(9, "ru")
    async with await Database.open(path) as database:
        assert database.path == path
        user = await database.users.get(9)
        assert user is not None and user.language == "ru"


async def test_open_absolute_url_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "abs" / "bot.sqlite3"
    first = await Database.open(f"sqlite:///{path}")
    await first.users.upsert(5, "en")
    await first.close()
    async with await Database.open(f"sqlite:///{path}") as second:
        user = await second.users.get(5)
        assert user is not None and user.language == "en"
        assert await second.schema_version() == head_revision()


@pytest.mark.parametrize("bad", ["sqlite:///", "sqlite:///:memory:", ":memory:", ""])
async def test_open_refuses_non_files(bad: str) -> None:
    with pytest.raises(ValueError):
        await Database.open(bad)


async def test_closed_database_refuses_calls(tmp_path: Path) -> None:
    database = await Database.open(tmp_path / "x.sqlite3")
    await database.close()
    with pytest.raises(RuntimeError):
        await database.users.get(1)


# -- migrations --------------------------------------------------------------------------


def test_migrations_are_package_data() -> None:
    folder = resources.files("storage").joinpath("migrations")
    assert folder.joinpath("env.py").is_file()
    versions = sorted(
        e.name for e in folder.joinpath("versions").iterdir() if e.name.endswith(".py")
    )
    assert versions[0] == "0001_baseline.py"
    assert [step.version for step in legacy_steps()] == [1, 2]
    for step in legacy_steps():
        assert split_statements(step.sql)


def test_split_statements_handles_comments_and_semicolons() -> None:
    sql = "-- a comment; with a semicolon\nCREATE TABLE t (x TEXT DEFAULT ';');\n\n-- end\n"
    assert split_statements(sql) == [
        "-- a comment; with a semicolon\nCREATE TABLE t (x TEXT DEFAULT ';');"
    ]
    with pytest.raises(MigrationError):
        split_statements("CREATE TABLE t (x")


def legacy_file(path: Path, version: int) -> sqlite3.Connection:
    """A file as the sqlite3-era code left it at legacy schema `version`."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "CREATE TABLE schema_version ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    for step in legacy_steps()[:version]:
        for statement in split_statements(step.sql):
            conn.execute(statement)
        conn.execute(
            "INSERT INTO schema_version VALUES (?, ?, ?)", (step.version, step.name, time.time())
        )
    return conn


async def test_upgrade_from_legacy_version_1_keeps_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    conn = legacy_file(path, 1)
    # Rows written by the version-1 code (no updated_at, no poller indexes yet).
    conn.execute("INSERT INTO users (id, language, first_seen, balance) VALUES (1, 'ru', 1, 400)")
    conn.execute(
        "INSERT INTO orders (id, user_id, chat_id, request_id, country_id, country_title,"
        " service_id, service_title, number, price, cost, currency, status, money,"
        " created_at, expires_at, next_poll_at, idempotency_key) VALUES"
        " (1, 1, 1, 555, 7, 'Russia', 3, 'Telegram', '+7999', 100, 60, 'RUB', 'waiting',"
        " 'held', 10, 2000000000, 5, 'old-key')"
    )
    conn.executemany(
        "INSERT INTO ledger (user_id, amount, kind, order_id, created_at, idempotency_key)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [(1, 500, "credit", None, 1, "c-1"), (1, -100, "hold", 1, 10, "hold:1")],
    )
    conn.execute("INSERT INTO kv (key, value) VALUES ('markup', '12.5')")
    conn.close()

    upgraded = await Database.open(f"sqlite:///{path}")
    try:
        assert await upgraded.schema_version() == head_revision()
        order = await upgraded.orders.get(1)
        assert order is not None
        assert (order.status, order.money, order.request_id) == (S.WAITING, Money.HELD, 555)
        assert await upgraded.orders.by_request_id(555) == order
        assert await upgraded.wallet.balance(1) == (400, 100)
        assert await upgraded.kv.get("markup") == "12.5"
        assert await upgraded.wallet.check_invariant() == []

        async def backfilled(c: Any) -> Any:
            return (await c.execute(text("SELECT updated_at FROM orders WHERE id = 1"))).scalar()

        assert await upgraded.read(backfilled) == 10
        assert await upgraded.orders.cancel(1)
        assert await upgraded.wallet.balance(1) == (500, 0)
        assert await upgraded.wallet.check_invariant() == []
    finally:
        await upgraded.close()


async def test_database_newer_than_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite3"
    await (await Database.open(path)).close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE alembic_version SET version_num = 'f00dfeed'")
    conn.close()
    with pytest.raises(MigrationError):
        await Database.open(path)


async def test_failed_upgrade_rolls_back_whole(tmp_path: Path, monkeypatch: Any) -> None:
    from storage import migrate

    path = tmp_path / "broken.sqlite3"
    legacy_file(path, 1).close()

    def broken(connection: Any, now: float) -> None:
        apply_legacy_steps(connection, now)
        connection.exec_driver_sql("SELECT * FROM nowhere")

    monkeypatch.setattr(migrate, "apply_legacy_steps", broken)
    with pytest.raises(Exception, match="nowhere"):
        await Database.open(path)
    monkeypatch.undo()
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    version = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
    conn.close()
    assert "alembic_version" not in tables and version == 1
    async with await Database.open(path) as database:
        assert await database.schema_version() == head_revision()


# -- users and kv ------------------------------------------------------------------------


async def test_users_language_and_flags(db: Database) -> None:
    assert await db.users.get(1) is None
    user = await db.users.upsert(1, "ru", now=100.0)
    assert (user.id, user.language, user.first_seen, user.blocked, user.banned, user.balance) == (
        1,
        "ru",
        100.0,
        False,
        False,
        0,
    )
    again = await db.users.upsert(1, "en", now=200.0)
    assert again.language == "ru" and again.first_seen == 100.0  # first language kept
    await db.users.set_language(1, "en")
    assert (await db.users.upsert(1, "ru")).language == "en"  # explicit choice kept
    nameless = await db.users.upsert(2, None)
    assert nameless.language is None
    assert (await db.users.upsert(2, "de")).language == "de"  # fills the gap

    assert await db.users.set_blocked(1, True)
    assert not await db.users.set_blocked(1, True)  # no change
    assert (await db.users.get(1)).blocked  # type: ignore[union-attr]
    assert await db.users.set_blocked(1, False)
    assert not await db.users.set_blocked(404, True)  # unknown user: nothing to flag

    assert await db.users.set_banned(1, True)
    assert not await db.users.set_banned(1, True)
    assert await db.users.set_banned(777, True)  # banned before ever writing
    banned = await db.users.get(777)
    assert banned is not None and banned.banned and banned.language is None
    assert await db.users.set_banned(1, False)
    assert not (await db.users.get(1)).banned  # type: ignore[union-attr]


async def test_set_language_creates_user(db: Database) -> None:
    await db.users.set_language(9, "uk")
    user = await db.users.get(9)
    assert user is not None and user.language == "uk"


async def test_kv(db: Database) -> None:
    assert await db.kv.get("markup") is None
    await db.kv.set("markup", "10")
    await db.kv.set("markup", "15")
    assert await db.kv.get("markup") == "15"
    assert await db.kv.set_if_absent("alerted", "1")
    assert not await db.kv.set_if_absent("alerted", "2")
    assert await db.kv.get("alerted") == "1"
    assert await db.kv.delete("alerted")
    assert not await db.kv.delete("alerted")
    assert await db.kv.get("alerted") is None


# -- creating orders ---------------------------------------------------------------------


async def test_create_with_hold(db: Database) -> None:
    await db.wallet.credit(1, 250, note="top-up", idempotency_key="t1")
    order = await new_order(db, price=100, cost=60, multiple_sms=True, key="k1", now=50.0)
    assert order.status is S.PURCHASING and order.money is Money.HELD
    assert (order.price, order.cost, order.currency, order.created_at) == (100, 60, "RUB", 50.0)
    assert order.multiple_sms and not order.want_more and order.request_id is None
    assert await db.orders.get(order.id) == order
    assert await db.orders.by_idempotency_key("k1") == order
    assert await db.wallet.balance(1) == (150, 100)
    history = await db.wallet.history(1)
    assert [(r.kind, r.amount, r.order_id, r.idempotency_key) for r in history] == [
        (LedgerKind.HOLD, -100, order.id, f"hold:{order.id}"),
        (LedgerKind.CREDIT, 250, None, "t1"),
    ]
    assert await db.wallet.check_invariant() == []


async def test_create_private_mode_moves_no_money(db: Database) -> None:
    order = await new_order(db, user_id=42, price=0, hold=False)
    assert order.money is Money.NONE
    assert await db.users.get(42) is not None  # created on the way
    assert await db.wallet.history(42) == []
    assert await db.orders.mark_waiting(
        order.id, request_id=1, number="+1", expires_at=2e9, next_poll_at=0
    )
    assert await db.orders.cancel(order.id)
    assert await db.wallet.history(42) == []
    assert await db.wallet.balance(42) == (0, 0)
    assert await db.wallet.check_invariant() == []


async def test_insufficient_funds_changes_nothing(db: Database) -> None:
    await db.wallet.credit(1, 99, note=None, idempotency_key="t1")
    with pytest.raises(InsufficientFunds) as caught:
        await new_order(db, price=100, key="short")
    assert caught.value.available == 99
    assert await db.orders.by_idempotency_key("short") is None
    assert await db.orders.list_for_user(1) == []
    assert await db.wallet.balance(1) == (99, 0)
    assert len(await db.wallet.history(1)) == 1
    # A user seen for the first time in a refused purchase is not even created.
    with pytest.raises(InsufficientFunds) as caught:
        await new_order(db, user_id=2, price=1)
    assert caught.value.available == 0
    assert await db.users.get(2) is None
    assert await db.wallet.check_invariant() == []


async def test_duplicate_order(db: Database) -> None:
    await db.wallet.credit(1, 1000, note=None, idempotency_key="t1")
    first = await new_order(db, key="same")
    with pytest.raises(DuplicateOrder) as caught:
        await new_order(db, key="same", price=300)
    assert caught.value.order == first
    with pytest.raises(DuplicateOrder):  # whoever asks, whatever the state
        await new_order(db, user_id=2, key="same", hold=False)
    assert await db.wallet.balance(1) == (900, 100)
    assert len(await db.orders.list_for_user(1)) == 1


async def test_too_many_active_orders(db: Database) -> None:
    await db.wallet.credit(1, 1000, note=None, idempotency_key="t1")
    a = await new_order(db, max_active=2)
    await new_order(db, max_active=2)
    with pytest.raises(TooManyActiveOrders) as caught:
        await new_order(db, max_active=2, key="third")
    assert caught.value.limit == 2
    assert await db.orders.by_idempotency_key("third") is None
    assert await db.wallet.balance(1) == (800, 200)
    # A received order is no longer active.
    assert await db.orders.mark_waiting(
        a.id, request_id=1, number="+1", expires_at=9, next_poll_at=0
    )
    assert await db.orders.add_code(a.id, "42") is not None
    await new_order(db, max_active=2)
    # Other users are not affected.
    await new_order(db, user_id=2, hold=False, max_active=2)


async def test_banned_user_cannot_order(db: Database) -> None:
    await db.wallet.credit(1, 1000, note=None, idempotency_key="t1")
    await db.users.set_banned(1, True)
    with pytest.raises(UserBanned):
        await new_order(db)
    assert await db.wallet.balance(1) == (1000, 0)
    await db.users.set_banned(1, False)
    await new_order(db)


async def test_refusals_keep_their_order_and_change_nothing(db: Database) -> None:
    """Duplicate key, ban, active limit, per-minute limit, funds: the first that applies is
    raised, whichever of them the purchase's first statements already met, and nothing
    changes (storage/orders.py checks the usual purchase inside its statements)."""
    from storage import TooManyRecentOrders

    async def buy(key: str, **kw: Any) -> Order:
        kw.setdefault("now", 1_000.0)
        return await db.orders.create(
            user_id=kw.pop("user_id", 1),
            chat_id=1,
            country_id=7,
            country_title="Russia",
            service_id=3,
            service_title="Telegram",
            price=kw.pop("price", 100),
            cost=60,
            currency="RUB",
            idempotency_key=key,
            multiple_sms=False,
            hold=kw.pop("hold", True),
            max_active=kw.pop("max_active", 100),
            max_per_minute=kw.pop("max_per_minute", None),
            **kw,
        )

    await db.wallet.credit(1, 1_000, note=None, idempotency_key="t1")
    first = await buy("a", max_per_minute=2)
    await buy("b", max_per_minute=2, now=1_001.0)
    with pytest.raises(TooManyRecentOrders):
        await buy("c", max_per_minute=2, now=1_002.0)
    with pytest.raises(TooManyRecentOrders):  # before funds
        await buy("c", max_per_minute=2, now=1_002.0, price=10_000)
    with pytest.raises(TooManyActiveOrders):  # before the per-minute limit and funds
        await buy("c", max_active=2, max_per_minute=2, price=10_000)
    await db.users.set_banned(1, True)
    with pytest.raises(DuplicateOrder) as caught:  # before the ban
        await buy("a")
    assert caught.value.order == first
    for kw in ({}, {"price": 10_000}, {"max_active": 1}, {"hold": False}):
        with pytest.raises(UserBanned):  # before limits and funds
            await buy("c", **kw)
    await db.users.set_banned(1, False)
    assert await db.wallet.balance(1) == (800, 200)
    assert [o.idempotency_key for o in await db.orders.list_for_user(1)] == ["b", "a"]
    # A minute later the per-minute limit counts only the newer order.
    await buy("c", max_per_minute=2, now=1_061.0)
    # A new user's free purchase with a hold: the user is created, nothing is taken.
    free = await buy("free", user_id=9, price=0)
    assert free.money is Money.HELD and await db.wallet.balance(9) == (0, 0)
    assert await db.wallet.check_invariant() == []


async def test_a_used_credit_key_changes_nothing(db: Database) -> None:
    assert await db.wallet.credit(1, 50, note="first", idempotency_key="k") is not None
    assert await db.wallet.credit(1, 70, note="again", idempotency_key="k") is None
    # The key is global: another user's credit with it is refused too, and not created.
    assert await db.wallet.credit(2, 70, note="other", idempotency_key="k") is None
    assert await db.wallet.balance(1) == (50, 0)
    assert await db.users.get(2) is None
    assert [row.note for row in await db.wallet.history(1)] == ["first"]
    assert await db.wallet.check_invariant() == []


async def test_negative_price_is_invalid(db: Database) -> None:
    with pytest.raises(InvalidAmount):
        await new_order(db, price=-1)
    with pytest.raises(InvalidAmount):
        await new_order(db, cost=-1, hold=False)


# -- the state machine -------------------------------------------------------------------


def test_transition_table() -> None:
    assert dict(TRANSITIONS) == {
        S.PURCHASING: {S.WAITING, S.FAILED},
        S.WAITING: {S.RECEIVED, S.CANCELLED, S.EXPIRED},
        S.RECEIVED: {S.FINISHED},
        S.CANCELLED: set(),
        S.EXPIRED: set(),
        S.FINISHED: set(),
        S.FAILED: set(),
    }


async def test_move_refuses_an_edge_outside_the_table(db: Database) -> None:
    with pytest.raises(ValueError, match="illegal"):
        await db.write(lambda c: _move(c, 1, S.FINISHED, S.WAITING, 0.0))


# For each call: the status it moves an order from, and to.
CALLS = {
    "mark_waiting": ({S.PURCHASING}, S.WAITING),
    "mark_failed": ({S.PURCHASING}, S.FAILED),
    "cancel": ({S.WAITING}, S.CANCELLED),
    "expire": ({S.WAITING}, S.EXPIRED),
    "add_code": ({S.WAITING, S.RECEIVED}, S.RECEIVED),
    "finish": ({S.RECEIVED}, S.FINISHED),
}


async def call(db: Database, name: str, order_id: int) -> bool:
    if name == "mark_waiting":
        return await db.orders.mark_waiting(
            order_id, request_id=next(_requests), number="+1", expires_at=2e9, next_poll_at=0
        )
    if name == "add_code":
        return await getattr(db.orders, name)(order_id, f"code-{next(_keys)}") is not None
    result: bool = await getattr(db.orders, name)(order_id)
    return result


@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize("status", list(S))
async def test_every_call_from_every_status(db: Database, name: str, status: OrderStatus) -> None:
    sources, target = CALLS[name]
    order = await order_in(db, status)
    before = await db.wallet.history(1, limit=100)
    happened = await call(db, name, order.id)
    after = await db.orders.get(order.id)
    assert after is not None
    assert happened == (status in sources)
    if happened:
        assert after.status is target
        assert status is target or target in TRANSITIONS[status]
    else:
        assert after == order  # refused: nothing changed
        assert await db.wallet.history(1, limit=100) == before
    assert await db.wallet.check_invariant() == []


async def test_unknown_order_ids(db: Database) -> None:
    for name in CALLS:
        assert not await call(db, name, 12345)
    assert not await db.orders.request_more(12345)
    assert not await db.orders.set_message(12345, 1, "x")
    assert not await db.orders.set_card_text(12345, "x")
    assert await db.orders.get(12345) is None
    assert await db.orders.codes_of(12345) == []


# -- money through the life of an order ---------------------------------------------------


async def test_cancel_expire_fail_release_the_hold(db: Database) -> None:
    for status in (S.CANCELLED, S.EXPIRED, S.FAILED):
        order = await order_in(db, status, user_id=5, price=70)
        assert order.money is Money.RELEASED
    assert await db.wallet.balance(5) == (210, 0)
    assert (
        await ledger_kinds(db, 5)
        == [
            LedgerKind.CREDIT,
            LedgerKind.HOLD,
            LedgerKind.RELEASE,
        ]
        * 3
    )
    summary = await db.stats.summary(0)
    assert (summary.refunds, summary.refunded, summary.cancelled, summary.expired) == (
        3,
        210,
        1,
        1,
    )
    assert summary.failed == 1 and summary.revenue == 0
    assert await db.wallet.check_invariant() == []


async def test_code_captures_once_and_finish(db: Database) -> None:
    order = await order_in(db, S.WAITING, price=100, multiple_sms=True)
    assert await db.wallet.balance(1) == (0, 100)
    code = await db.orders.add_code(order.id, "1234", now=77.0)
    assert code is not None and (code.code, code.received_at, code.delivered_at) == (
        "1234",
        77.0,
        None,
    )
    assert await db.orders.add_code(order.id, "1234") is None  # same code again
    got = await db.orders.get(order.id)
    assert got is not None and (got.status, got.money) == (S.RECEIVED, Money.CAPTURED)
    assert await db.wallet.balance(1) == (0, 0)
    assert await db.orders.request_more(order.id, next_poll_at=5.0)
    assert not await db.orders.request_more(order.id)  # already asked
    got = await db.orders.get(order.id)
    assert got is not None and got.want_more and got.next_poll_at == 5.0
    second = await db.orders.add_code(order.id, "5678")
    assert second is not None
    got = await db.orders.get(order.id)
    assert got is not None and not got.want_more and got.status is S.RECEIVED
    assert [c.code for c in await db.orders.codes_of(order.id)] == ["1234", "5678"]
    assert await db.orders.finish(order.id)
    assert not await db.orders.finish(order.id)
    assert await db.orders.add_code(order.id, "9999") is None  # finished: refused
    assert await ledger_kinds(db, 1) == [LedgerKind.CREDIT, LedgerKind.HOLD, LedgerKind.CAPTURE]
    summary = await db.stats.summary(0)
    assert (summary.sales, summary.revenue, summary.cost, summary.margin) == (1, 100, 60, 40)
    assert summary.with_code == 1 and summary.created == 1
    assert await db.wallet.check_invariant() == []


async def test_request_more_needs_multiple_sms_and_received(db: Database) -> None:
    single = await order_in(db, S.RECEIVED, multiple_sms=False)
    assert not await db.orders.request_more(single.id)
    waiting = await order_in(db, S.WAITING, multiple_sms=True)
    assert not await db.orders.request_more(waiting.id)


async def test_request_id_is_unique(db: Database) -> None:
    a = await order_in(db, S.PURCHASING)
    b = await order_in(db, S.PURCHASING)
    assert await db.orders.mark_waiting(
        a.id, request_id=5, number="+1", expires_at=1, next_poll_at=0
    )
    with pytest.raises(IntegrityError):
        await db.orders.mark_waiting(b.id, request_id=5, number="+2", expires_at=1, next_poll_at=0)
    got = await db.orders.get(b.id)
    assert got is not None and got.status is S.PURCHASING


# -- lists and bookkeeping ---------------------------------------------------------------


async def test_lists(db: Database) -> None:
    statuses = [S.WAITING, S.PURCHASING, S.RECEIVED, S.FINISHED, S.CANCELLED, S.WAITING]
    made = [await order_in(db, status, multiple_sms=True) for status in statuses]
    other = await order_in(db, S.WAITING, user_id=2)
    open_ids = [o.id for o in made if o.is_open] + [other.id]
    assert [o.id for o in await db.orders.list_open()] == sorted(open_ids)

    newest_first = [o.id for o in reversed(made)]
    assert [o.id for o in await db.orders.list_for_user(1, limit=100)] == newest_first
    assert [o.id for o in await db.orders.list_for_user(1, limit=2)] == newest_first[:2]
    assert [o.id for o in await db.orders.list_for_user(1, open_only=True)] == [
        o.id for o in reversed(made) if o.is_open
    ]
    assert await db.orders.get_for_user(other.id, 1) is None
    assert await db.orders.get_for_user(other.id, 2) == other
    assert other.request_id is not None
    assert await db.orders.by_request_id(other.request_id) == other

    received = made[2]
    assert await db.orders.request_more(received.id, next_poll_at=20.0)
    got = await db.orders.get(received.id)
    assert got is not None and got.want_more and got.next_poll_at == 20.0


async def test_count_recent(db: Database) -> None:
    await db.wallet.credit(1, 1000, note=None, idempotency_key="t")
    for at in (100.0, 150.0, 160.0):
        await new_order(db, now=at)
    assert await db.orders.count_recent(1, 150.0) == 2
    assert await db.orders.count_recent(1, 0.0) == 3
    assert await db.orders.count_recent(2, 0.0) == 0


async def test_message_and_card_text(db: Database) -> None:
    order = await order_in(db, S.WAITING)
    assert await db.orders.set_message(order.id, 55, "card v1")
    assert await db.orders.set_card_text(order.id, "card v2")
    got = await db.orders.get(order.id)
    assert got is not None and (got.message_id, got.card_text) == (55, "card v2")
    assert await db.orders.set_message(order.id, None, None)
    got = await db.orders.get(order.id)
    assert got is not None and (got.message_id, got.card_text) == (None, None)


async def test_codes_delivery(db: Database) -> None:
    a = await order_in(db, S.RECEIVED, multiple_sms=True)
    b = await order_in(db, S.WAITING, user_id=2)
    second = await db.orders.add_code(b.id, "2222")
    assert second is not None
    pending = await db.codes.undelivered()
    assert [(code.code, order.id) for code, order in pending] == [("1111", a.id), ("2222", b.id)]
    assert pending[1][1].status is S.RECEIVED
    first_code = pending[0][0]
    assert await db.codes.mark_delivered(first_code.id, 900, now=5.0)
    assert not await db.codes.mark_delivered(first_code.id, 901)  # once only
    [stored, *_] = await db.orders.codes_of(a.id)
    assert (stored.delivered_at, stored.message_id) == (5.0, 900)
    assert [code.id for code, _ in await db.codes.undelivered()] == [second.id]


# -- wallet ------------------------------------------------------------------------------


async def test_credit_and_debit(db: Database) -> None:
    row = await db.wallet.credit(3, 500, note="cash", idempotency_key="pay-1", now=9.0)
    assert row is not None
    assert (row.user_id, row.amount, row.kind, row.note, row.created_at) == (
        3,
        500,
        LedgerKind.CREDIT,
        "cash",
        9.0,
    )
    assert await db.users.get(3) is not None
    assert await db.wallet.credit(3, 500, note="cash", idempotency_key="pay-1") is None
    assert await db.wallet.balance(3) == (500, 0)

    debit = await db.wallet.debit(3, 200, note="fix", idempotency_key="fix-1")
    assert debit is not None and debit.amount == -200 and debit.kind is LedgerKind.DEBIT
    with pytest.raises(InsufficientFunds) as caught:
        await db.wallet.debit(3, 301, note=None, idempotency_key="fix-2")
    assert caught.value.available == 300
    assert await db.wallet.balance(3) == (300, 0)
    # A retried debit whose key is used returns None, even if the balance is now short.
    assert await db.wallet.debit(3, 1000, note=None, idempotency_key="fix-1") is None
    assert [r.idempotency_key for r in await db.wallet.history(3)] == ["fix-1", "pay-1"]
    assert len(await db.wallet.history(3, limit=1)) == 1

    with pytest.raises(InsufficientFunds):
        await db.wallet.debit(4, 1, note=None, idempotency_key="nobody")
    assert await db.users.get(4) is None
    for bad in (0, -5):
        with pytest.raises(InvalidAmount):
            await db.wallet.credit(3, bad, note=None, idempotency_key=f"bad{bad}")
        with pytest.raises(InvalidAmount):
            await db.wallet.debit(3, bad, note=None, idempotency_key=f"bad{bad}")
    assert await db.wallet.balance(404) == (0, 0)
    assert await db.wallet.check_invariant() == []


async def test_stats_window(db: Database) -> None:
    await db.wallet.credit(1, 1000, note=None, idempotency_key="t")
    old = await new_order(db, now=10.0)
    await new_order(db, now=100.0)
    summary = await db.stats.summary(50.0)
    assert (summary.created, summary.open) == (1, 1)
    assert (await db.stats.summary(0.0)).created == 2
    assert summary.as_dict()["created"] == 1
    assert old.id


async def test_card_text_with_nul_and_backslashes_round_trips(db: Database) -> None:
    """PostgreSQL's TEXT refuses NUL; the bot's card text carries one."""
    order = await order_in(db, S.WAITING)
    for text_ in ("card\x00null", "a\\0b\x00\\", "plain"):
        assert await db.orders.set_message(order.id, 5, text_)
        got = await db.orders.get(order.id)
        assert got is not None and got.card_text == text_
        assert await db.orders.set_card_text(order.id, text_ + "!")
        got = await db.orders.get(order.id)
        assert got is not None and got.card_text == text_ + "!"
