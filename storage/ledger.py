"""Money movements, as steps of a write transaction already open on `conn`.

Every movement is guarded (a conditional UPDATE whose rowcount says whether it happened)
and writes its ledger row with a UNIQUE idempotency key in the same transaction, so it
happens exactly once whatever races. users.balance always equals SUM(ledger.amount).

Per order: hold (-price, key hold:{id}) then either capture (0, capture:{id}) or release
(+price, release:{id}).
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import sql
from storage.errors import InsufficientFunds
from storage.models import LedgerKind, LedgerRow, Money

_INSERT = text(
    "INSERT INTO ledger (user_id, amount, kind, order_id, note, created_at, idempotency_key)"
    " VALUES (:user_id, :amount, :kind, :order_id, :note, :now, :key) RETURNING id"
)
# Creates the user if missing and, being a write, takes the row's lock on PostgreSQL until
# COMMIT: every money transaction of one user starts here, so they queue there instead of
# counting limits or reading keys side by side (READ COMMITTED). On SQLite BEGIN IMMEDIATE
# serialises them already; the statement is then just the upsert.
_LOCK_USER = text(
    "INSERT INTO users (id, first_seen) VALUES (:user_id, :now)"
    " ON CONFLICT (id) DO UPDATE SET banned = users.banned RETURNING banned, balance"
)
_AVAILABLE = text("SELECT balance FROM users WHERE id = :user_id")
_MOVE_BALANCE = text("UPDATE users SET balance = balance + :amount WHERE id = :user_id")
_TAKE = text(
    "UPDATE users SET balance = balance - :amount WHERE id = :user_id AND balance >= :amount"
)
_SET_MONEY = text("UPDATE orders SET money = :new WHERE id = :order_id AND money = :old")


async def lock_user(conn: AsyncConnection, user_id: int, now: float) -> tuple[bool, int]:
    """The user (created if missing) locked for this transaction: (banned, balance)."""
    row = await sql.first(conn, _LOCK_USER, user_id=user_id, now=now)
    assert row is not None
    return bool(row[0]), int(row[1])


async def available(conn: AsyncConnection, user_id: int) -> int:
    value = await sql.scalar(conn, _AVAILABLE, user_id=user_id)
    return int(value or 0)


async def add_row(
    conn: AsyncConnection,
    *,
    user_id: int,
    amount: int,
    kind: LedgerKind,
    order_id: int | None,
    note: str | None,
    now: float,
    key: str,
) -> LedgerRow:
    """Insert one ledger row and move users.balance by its amount. A duplicate key raises."""
    row_id = await sql.scalar(
        conn,
        _INSERT,
        user_id=user_id,
        amount=amount,
        kind=kind.value,
        order_id=order_id,
        note=note,
        now=now,
        key=key,
    )
    if amount:
        await conn.execute(_MOVE_BALANCE, {"amount": amount, "user_id": user_id})
    return LedgerRow(
        id=int(row_id),
        user_id=user_id,
        amount=amount,
        kind=kind,
        order_id=order_id,
        note=note,
        created_at=now,
        idempotency_key=key,
    )


async def take(conn: AsyncConnection, user_id: int, amount: int) -> None:
    """Guarded balance decrement: raises InsufficientFunds (the transaction rolls back)."""
    if await sql.count(conn, _TAKE, amount=amount, user_id=user_id) != 1:
        raise InsufficientFunds(await available(conn, user_id))


async def hold_row(
    conn: AsyncConnection, user_id: int, order_id: int, price: int, now: float
) -> None:
    """The hold's ledger row, after `take(price)` and the order insert (money='held')."""
    await conn.execute(
        _INSERT,
        {
            "user_id": user_id,
            "amount": -price,
            "kind": LedgerKind.HOLD.value,
            "order_id": order_id,
            "note": None,
            "now": now,
            "key": f"hold:{order_id}",
        },
    )


async def _set_money(conn: AsyncConnection, order_id: int, old: Money, new: Money) -> bool:
    return await sql.count(conn, _SET_MONEY, new=new.value, order_id=order_id, old=old.value) == 1


async def capture(conn: AsyncConnection, user_id: int, order_id: int, now: float) -> bool:
    """held -> captured: the sale happened. The balance does not move (the hold took it)."""
    if not await _set_money(conn, order_id, Money.HELD, Money.CAPTURED):
        return False
    await conn.execute(
        _INSERT,
        {
            "user_id": user_id,
            "amount": 0,
            "kind": LedgerKind.CAPTURE.value,
            "order_id": order_id,
            "note": None,
            "now": now,
            "key": f"capture:{order_id}",
        },
    )
    return True


async def release(
    conn: AsyncConnection, user_id: int, order_id: int, price: int, now: float
) -> bool:
    """held -> released: the price goes back to the available balance."""
    if not await _set_money(conn, order_id, Money.HELD, Money.RELEASED):
        return False
    await add_row(
        conn,
        user_id=user_id,
        amount=price,
        kind=LedgerKind.RELEASE,
        order_id=order_id,
        note=None,
        now=now,
        key=f"release:{order_id}",
    )
    return True
