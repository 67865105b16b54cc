"""Money movements, as steps of a write transaction already open on `conn`.

Every movement is guarded (a conditional UPDATE whose rowcount says whether it happened)
and writes its ledger row with a UNIQUE idempotency key in the same transaction, so it
happens exactly once whatever races. users.balance always equals SUM(ledger.amount).

Per order: hold (-price, key hold:{id}) then either capture (0, capture:{id}) or release
(+price, release:{id}). The order's own money column moves in the same guarded UPDATE as its
status (storage/orders.py), so a transition and its money state change together or not at
all; the ledger row's UNIQUE key makes a second capture or release fail loudly.

Each statement costs (~40 µs of SQLAlchemy on SQLite), so the common paths are folded: a
credit is one upsert of the user with its balance plus one ledger insert that refuses a used
key; a purchase takes the price in the statement that locks the user.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import sql
from storage.errors import InsufficientFunds
from storage.models import LedgerKind, LedgerRow

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
# A credit: creates the user if missing, moves the balance and (PostgreSQL) locks the row.
_CREDIT_USER = text(
    "INSERT INTO users (id, first_seen, balance) VALUES (:user_id, :now, :amount)"
    " ON CONFLICT (id) DO UPDATE SET balance = users.balance + excluded.balance"
)
_INSERT_UNLESS_USED = text(
    "INSERT INTO ledger (user_id, amount, kind, order_id, note, created_at, idempotency_key)"
    " VALUES (:user_id, :amount, :kind, :order_id, :note, :now, :key)"
    " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id"
)
# A purchase's hold: the guarded take that also locks the user's row (PostgreSQL).
_TAKE_LOCKING = text(
    "UPDATE users SET balance = balance - :amount WHERE id = :user_id AND balance >= :amount"
    " RETURNING banned"
)
_AVAILABLE = text("SELECT balance FROM users WHERE id = :user_id")
_MOVE_BALANCE = text("UPDATE users SET balance = balance + :amount WHERE id = :user_id")
_TAKE = text(
    "UPDATE users SET balance = balance - :amount WHERE id = :user_id AND balance >= :amount"
)


class KeyUsed(Exception):
    """The idempotency key has a ledger row already: the transaction must change nothing."""


async def lock_user(conn: AsyncConnection, user_id: int, now: float) -> tuple[bool, int]:
    """The user (created if missing) locked for this transaction: (banned, balance)."""
    row = await sql.first(conn, _LOCK_USER, user_id=user_id, now=now)
    assert row is not None
    return bool(row[0]), int(row[1])


async def credit(
    conn: AsyncConnection, *, user_id: int, amount: int, note: str | None, now: float, key: str
) -> LedgerRow:
    """A credit of `amount` (> 0), the user created if missing. Raises KeyUsed (roll the
    transaction back: the balance moved already) if the key has a ledger row."""
    await conn.execute(_CREDIT_USER, {"user_id": user_id, "now": now, "amount": amount})
    kind = LedgerKind.CREDIT
    row_id = await sql.scalar(
        conn,
        _INSERT_UNLESS_USED,
        user_id=user_id,
        amount=amount,
        kind=kind.value,
        order_id=None,
        note=note,
        now=now,
        key=key,
    )
    if row_id is None:
        raise KeyUsed(key)
    return LedgerRow(
        id=int(row_id),
        user_id=user_id,
        amount=amount,
        kind=kind,
        order_id=None,
        note=note,
        created_at=now,
        idempotency_key=key,
    )


async def take_locking(conn: AsyncConnection, user_id: int, amount: int) -> bool | None:
    """Take `amount` off an existing user's balance if it is there, locking the row: the
    user's `banned`, or None (nothing taken, nothing locked) if short or unknown."""
    banned = await sql.scalar(conn, _TAKE_LOCKING, amount=amount, user_id=user_id)
    return None if banned is None else bool(banned)


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
    """The hold's ledger row, after the take and the order insert (money='held')."""
    await sql.scalar(
        conn,
        _INSERT,
        user_id=user_id,
        amount=-price,
        kind=LedgerKind.HOLD.value,
        order_id=order_id,
        note=None,
        now=now,
        key=f"hold:{order_id}",
    )


async def capture_row(conn: AsyncConnection, user_id: int, order_id: int, now: float) -> None:
    """The capture's ledger row, after the order moved held -> captured (the sale
    happened). The balance does not move: the hold took it."""
    await sql.scalar(
        conn,
        _INSERT,
        user_id=user_id,
        amount=0,
        kind=LedgerKind.CAPTURE.value,
        order_id=order_id,
        note=None,
        now=now,
        key=f"capture:{order_id}",
    )


async def release_row(
    conn: AsyncConnection, user_id: int, order_id: int, price: int, now: float
) -> None:
    """The release's ledger row, after the order moved held -> released: the price goes
    back to the available balance."""
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
