"""Money movements, as synchronous steps of a write transaction already open on `conn`.

Every movement is guarded (a conditional UPDATE whose rowcount says whether it happened)
and writes its ledger row with a UNIQUE idempotency key in the same transaction, so it
happens exactly once whatever races. users.balance always equals SUM(ledger.amount).

Per order: hold (-price, key hold:{id}) then either capture (0, capture:{id}) or release
(+price, release:{id}). A cancelled/expired order revived by a late code takes the price
again with rehold (-price, rehold:{id}) + capture.
"""

from __future__ import annotations

import sqlite3

from storage.errors import InsufficientFunds
from storage.models import LedgerKind, LedgerRow, Money

_INSERT = (
    "INSERT INTO ledger (user_id, amount, kind, order_id, note, created_at, idempotency_key)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def ensure_user(conn: sqlite3.Connection, user_id: int, now: float) -> None:
    conn.execute(
        "INSERT INTO users (id, first_seen) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
        (user_id, now),
    )


def available(conn: sqlite3.Connection, user_id: int) -> int:
    row = conn.execute("SELECT balance FROM users WHERE id = ?", (user_id,)).fetchone()
    return int(row[0]) if row else 0


def add_row(
    conn: sqlite3.Connection,
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
    cursor = conn.execute(_INSERT, (user_id, amount, kind.value, order_id, note, now, key))
    if amount:
        conn.execute("UPDATE users SET balance = balance + ? WHERE id = ?", (amount, user_id))
    row_id = cursor.lastrowid
    assert row_id is not None
    return LedgerRow(
        id=row_id,
        user_id=user_id,
        amount=amount,
        kind=kind,
        order_id=order_id,
        note=note,
        created_at=now,
        idempotency_key=key,
    )


def take(conn: sqlite3.Connection, user_id: int, amount: int) -> None:
    """Guarded balance decrement: raises InsufficientFunds (the transaction rolls back)."""
    cursor = conn.execute(
        "UPDATE users SET balance = balance - ? WHERE id = ? AND balance >= ?",
        (amount, user_id, amount),
    )
    if cursor.rowcount != 1:
        raise InsufficientFunds(available(conn, user_id))


def hold_row(conn: sqlite3.Connection, user_id: int, order_id: int, price: int, now: float) -> None:
    """The hold's ledger row, after `take(price)` and the order insert (money='held')."""
    conn.execute(
        _INSERT, (user_id, -price, LedgerKind.HOLD.value, order_id, None, now, f"hold:{order_id}")
    )


def _set_money(conn: sqlite3.Connection, order_id: int, old: Money, new: Money) -> bool:
    cursor = conn.execute(
        "UPDATE orders SET money = ? WHERE id = ? AND money = ?", (new.value, order_id, old.value)
    )
    return cursor.rowcount == 1


def capture(conn: sqlite3.Connection, user_id: int, order_id: int, now: float) -> bool:
    """held -> captured: the sale happened. The balance does not move (the hold took it)."""
    if not _set_money(conn, order_id, Money.HELD, Money.CAPTURED):
        return False
    conn.execute(
        _INSERT, (user_id, 0, LedgerKind.CAPTURE.value, order_id, None, now, f"capture:{order_id}")
    )
    return True


def release(conn: sqlite3.Connection, user_id: int, order_id: int, price: int, now: float) -> bool:
    """held -> released: the price goes back to the available balance."""
    if not _set_money(conn, order_id, Money.HELD, Money.RELEASED):
        return False
    add_row(
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


def recapture(
    conn: sqlite3.Connection, user_id: int, order_id: int, price: int, now: float
) -> bool:
    """released -> captured for an order revived by a late code: hold again and capture.

    Not guarded on the balance: the sale really happened, so it may go negative.
    """
    if not _set_money(conn, order_id, Money.RELEASED, Money.CAPTURED):
        return False
    add_row(
        conn,
        user_id=user_id,
        amount=-price,
        kind=LedgerKind.HOLD,
        order_id=order_id,
        note="code after release",
        now=now,
        key=f"rehold:{order_id}",
    )
    conn.execute(
        _INSERT, (user_id, 0, LedgerKind.CAPTURE.value, order_id, None, now, f"capture:{order_id}")
    )
    return True
