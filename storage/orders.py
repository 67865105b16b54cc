"""Orders: the one state machine, and every transition with its money movement."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from storage import ledger, rows
from storage.errors import (
    DuplicateOrder,
    InvalidAmount,
    TooManyActiveOrders,
    TooManyRecentOrders,
    UserBanned,
)
from storage.models import Code, Money, Order, OrderStatus
from storage.rows import CODE_COLUMNS, ORDER_COLUMNS

if TYPE_CHECKING:
    from storage.db import Database

S = OrderStatus

# The order state machine: the only place that says which status may follow which.
TRANSITIONS: Final[Mapping[OrderStatus, frozenset[OrderStatus]]] = MappingProxyType(
    {
        S.PURCHASING: frozenset({S.WAITING, S.FAILED}),
        S.WAITING: frozenset({S.RECEIVED, S.CANCELLED, S.EXPIRED}),
        S.RECEIVED: frozenset({S.FINISHED}),
        # Only through revive_with_code: a code came after all (SMS-Man refused our
        # cancel because of it, or it arrived as we gave up on the deadline).
        S.CANCELLED: frozenset({S.RECEIVED}),
        S.EXPIRED: frozenset({S.RECEIVED}),
        S.FINISHED: frozenset(),
        S.FAILED: frozenset(),
    }
)


def can_move(old: OrderStatus, new: OrderStatus) -> bool:
    return new in TRANSITIONS[old]


def _move(
    conn: sqlite3.Connection,
    order_id: int,
    old: OrderStatus,
    new: OrderStatus,
    now: float,
    sets: str = "",
    params: tuple[Any, ...] = (),
) -> tuple[int, int, Money] | None:
    """The guarded UPDATE of one transition. Returns (user_id, price, money) if it happened."""
    if not can_move(old, new):
        raise ValueError(f"illegal order transition {old} -> {new}")
    returned = conn.execute(
        f"UPDATE orders SET status = ?, updated_at = ?{sets} WHERE id = ? AND status = ?"
        " RETURNING user_id, price, money",
        (new.value, now, *params, order_id, old.value),
    ).fetchall()  # fetchall: the statement is finished before anything else runs
    if not returned:
        return None
    user_id, price, money = returned[0]
    return user_id, price, Money(money)


def _close_releasing(
    conn: sqlite3.Connection, order_id: int, old: OrderStatus, new: OrderStatus, now: float
) -> bool:
    """A transition to a final status without a code: the held price goes back."""
    moved = _move(conn, order_id, old, new, now, ", want_more = 0")
    if moved is None:
        return False
    user_id, price, money = moved
    if money is Money.HELD:
        ledger.release(conn, user_id, order_id, price, now)
    return True


def _add_code(
    conn: sqlite3.Connection, order_id: int, code: str, now: float, *, revive: bool
) -> Code | None:
    row = conn.execute("SELECT status FROM orders WHERE id = ?", (order_id,)).fetchone()
    if row is None:
        return None
    status = OrderStatus(row[0])
    accepted = (
        (S.WAITING, S.RECEIVED, S.CANCELLED, S.EXPIRED) if revive else (S.WAITING, S.RECEIVED)
    )
    if status not in accepted:
        return None
    cursor = conn.execute(
        "INSERT INTO codes (order_id, code, received_at) VALUES (?, ?, ?)"
        " ON CONFLICT (order_id, code) DO NOTHING",
        (order_id, code, now),
    )
    if cursor.rowcount != 1:
        return None  # the same code again: nothing changes
    code_id = cursor.lastrowid
    assert code_id is not None
    if status is S.RECEIVED:
        conn.execute(
            "UPDATE orders SET want_more = 0, updated_at = ? WHERE id = ?", (now, order_id)
        )
    else:
        moved = _move(conn, order_id, status, S.RECEIVED, now, ", want_more = 0")
        if moved is None:  # cannot happen inside BEGIN IMMEDIATE; never store a stray code
            raise RuntimeError(f"order {order_id} changed status under a write transaction")
        user_id, price, money = moved
        if money is Money.HELD:
            ledger.capture(conn, user_id, order_id, now)
        elif money is Money.RELEASED:
            ledger.recapture(conn, user_id, order_id, price, now)
    return Code(
        id=code_id,
        order_id=order_id,
        code=code,
        received_at=now,
        delivered_at=None,
        message_id=None,
    )


_INSERT_ORDER = (
    "INSERT INTO orders (user_id, chat_id, country_id, country_title, service_id,"
    " service_title, price, cost, currency, status, money, created_at, multiple_sms,"
    " idempotency_key, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

_DUE_WHERE = "(status = 'waiting' OR (status = 'received' AND want_more = 1))"  # = index orders_due


class Orders:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self,
        *,
        user_id: int,
        chat_id: int,
        country_id: int,
        country_title: str,
        service_id: int,
        service_title: str,
        price: int,
        cost: int,
        currency: str,
        idempotency_key: str,
        multiple_sms: bool,
        hold: bool,
        max_active: int,
        max_per_minute: int | None = None,
        now: float | None = None,
    ) -> Order:
        """One transaction: duplicate key, ban, limits, hold, insert (status purchasing).

        Raises DuplicateOrder(existing), UserBanned, TooManyActiveOrders(max_active),
        TooManyRecentOrders(max_per_minute) or InsufficientFunds(available), in that order
        of checks; on any of them nothing changes. The limits are counted inside the
        transaction, so concurrent purchases cannot all slip under them.
        """
        if price < 0 or cost < 0:
            raise InvalidAmount(f"price and cost must be >= 0 (price={price}, cost={cost})")
        ts = time.time() if now is None else now
        money = Money.HELD if hold else Money.NONE

        def tx(conn: sqlite3.Connection) -> Order:
            existing = conn.execute(
                f"SELECT {ORDER_COLUMNS} FROM orders WHERE idempotency_key = ?",
                (idempotency_key,),
            ).fetchone()
            if existing is not None:
                raise DuplicateOrder(rows.order(existing))
            user = conn.execute("SELECT banned FROM users WHERE id = ?", (user_id,)).fetchone()
            if user is None:
                ledger.ensure_user(conn, user_id, ts)
            elif user[0]:
                raise UserBanned(f"user {user_id} is banned")
            active = conn.execute(
                "SELECT COUNT(*) FROM orders INDEXED BY orders_active"
                " WHERE user_id = ? AND status IN ('purchasing', 'waiting')",
                (user_id,),
            ).fetchone()[0]
            if active >= max_active:
                raise TooManyActiveOrders(max_active)
            if max_per_minute is not None:
                recent = conn.execute(
                    "SELECT COUNT(*) FROM orders INDEXED BY orders_user_created"
                    " WHERE user_id = ? AND created_at >= ?",
                    (user_id, ts - 60),
                ).fetchone()[0]
                if recent >= max_per_minute:
                    raise TooManyRecentOrders(max_per_minute)
            if hold:
                ledger.take(conn, user_id, price)
            cursor = conn.execute(
                _INSERT_ORDER,
                (
                    user_id,
                    chat_id,
                    country_id,
                    country_title,
                    service_id,
                    service_title,
                    price,
                    cost,
                    currency,
                    S.PURCHASING.value,
                    money.value,
                    ts,
                    int(multiple_sms),
                    idempotency_key,
                    ts,
                ),
            )
            order_id = cursor.lastrowid
            assert order_id is not None
            if hold:
                ledger.hold_row(conn, user_id, order_id, price, ts)
            return Order(
                id=order_id,
                user_id=user_id,
                chat_id=chat_id,
                request_id=None,
                country_id=country_id,
                country_title=country_title,
                service_id=service_id,
                service_title=service_title,
                number=None,
                price=price,
                cost=cost,
                currency=currency,
                status=S.PURCHASING,
                money=money,
                created_at=ts,
                expires_at=None,
                next_poll_at=None,
                message_id=None,
                card_text=None,
                multiple_sms=multiple_sms,
                want_more=False,
                poll_failures=0,
                idempotency_key=idempotency_key,
            )

        return await self._db.write(tx)

    # -- transitions -------------------------------------------------------------------

    async def mark_waiting(
        self,
        order_id: int,
        *,
        request_id: int,
        number: str,
        expires_at: float,
        next_poll_at: float,
        now: float | None = None,
    ) -> bool:
        """purchasing -> waiting, with the bought number. A request_id already used by
        another order raises sqlite3.IntegrityError (and changes nothing)."""
        ts = time.time() if now is None else now

        def tx(conn: sqlite3.Connection) -> bool:
            return (
                _move(
                    conn,
                    order_id,
                    S.PURCHASING,
                    S.WAITING,
                    ts,
                    ", request_id = ?, number = ?, expires_at = ?, next_poll_at = ?,"
                    " poll_failures = 0",
                    (request_id, number, expires_at, next_poll_at),
                )
                is not None
            )

        return await self._db.write(tx)

    async def mark_failed(self, order_id: int, *, now: float | None = None) -> bool:
        """purchasing -> failed; the hold (if any) is released."""
        return await self._close(order_id, S.PURCHASING, S.FAILED, now)

    async def cancel(self, order_id: int, *, now: float | None = None) -> bool:
        """waiting -> cancelled; the hold (if any) is released."""
        return await self._close(order_id, S.WAITING, S.CANCELLED, now)

    async def expire(self, order_id: int, *, now: float | None = None) -> bool:
        """waiting -> expired; the hold (if any) is released."""
        return await self._close(order_id, S.WAITING, S.EXPIRED, now)

    async def _close(
        self, order_id: int, old: OrderStatus, new: OrderStatus, now: float | None
    ) -> bool:
        ts = time.time() if now is None else now
        return await self._db.write(lambda conn: _close_releasing(conn, order_id, old, new, ts))

    async def add_code(self, order_id: int, code: str, *, now: float | None = None) -> Code | None:
        """Store a code for a waiting/received order: waiting -> received (+capture if held),
        want_more cleared. None (and nothing changed) for a duplicate code or another status."""
        ts = time.time() if now is None else now
        return await self._db.write(lambda conn: _add_code(conn, order_id, code, ts, revive=False))

    async def revive_with_code(
        self, order_id: int, code: str, *, now: float | None = None
    ) -> Code | None:
        """A code for a cancelled/expired order (SMS-Man refused the cancel because of it):
        -> received, and a released price is taken again (rehold + capture; the balance may
        go negative: the sale happened). For waiting/received orders it is add_code.
        None (nothing changed) for a duplicate code or a purchasing/finished/failed order."""
        ts = time.time() if now is None else now
        return await self._db.write(lambda conn: _add_code(conn, order_id, code, ts, revive=True))

    async def finish(self, order_id: int, *, now: float | None = None) -> bool:
        """received -> finished."""
        ts = time.time() if now is None else now
        return await self._db.write(
            lambda conn: (
                _move(conn, order_id, S.RECEIVED, S.FINISHED, ts, ", want_more = 0") is not None
            )
        )

    async def request_more(
        self, order_id: int, *, next_poll_at: float | None = None, now: float | None = None
    ) -> bool:
        """Ask for another code: a received multiple-SMS order with no request pending gets
        want_more=1 (the poller picks it up again). False if not allowed or already asked."""
        ts = time.time() if now is None else now

        def tx(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE orders SET want_more = 1, next_poll_at = COALESCE(?, next_poll_at),"
                " updated_at = ? WHERE id = ? AND status = 'received' AND multiple_sms = 1"
                " AND want_more = 0",
                (next_poll_at, ts, order_id),
            )
            return cursor.rowcount == 1

        return await self._db.write(tx)

    # -- bookkeeping -------------------------------------------------------------------

    async def set_next_poll(
        self, order_id: int, next_poll_at: float, *, failures: int | None = None
    ) -> bool:
        def tx(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE orders SET next_poll_at = ?, poll_failures = COALESCE(?, poll_failures)"
                " WHERE id = ?",
                (next_poll_at, failures, order_id),
            )
            return cursor.rowcount == 1

        return await self._db.write(tx)

    async def set_message(
        self, order_id: int, message_id: int | None, card_text: str | None
    ) -> bool:
        def tx(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE orders SET message_id = ?, card_text = ? WHERE id = ?",
                (message_id, card_text, order_id),
            )
            return cursor.rowcount == 1

        return await self._db.write(tx)

    async def set_card_text(self, order_id: int, card_text: str | None) -> bool:
        def tx(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE orders SET card_text = ? WHERE id = ?", (card_text, order_id)
            )
            return cursor.rowcount == 1

        return await self._db.write(tx)

    # -- reads -------------------------------------------------------------------------

    async def _one(self, where: str, params: tuple[Any, ...]) -> Order | None:
        def q(conn: sqlite3.Connection) -> Order | None:
            row = conn.execute(f"SELECT {ORDER_COLUMNS} FROM orders WHERE {where}", params)
            found = row.fetchone()
            return rows.order(found) if found else None

        return await self._db.read(q)

    async def _many(self, sql: str, params: tuple[Any, ...]) -> list[Order]:
        def q(conn: sqlite3.Connection) -> list[Order]:
            return [rows.order(row) for row in conn.execute(sql, params)]

        return await self._db.read(q)

    async def get(self, order_id: int) -> Order | None:
        return await self._one("id = ?", (order_id,))

    async def get_for_user(self, order_id: int, user_id: int) -> Order | None:
        return await self._one("id = ? AND user_id = ?", (order_id, user_id))

    async def by_request_id(self, request_id: int) -> Order | None:
        return await self._one("request_id = ?", (request_id,))

    async def by_idempotency_key(self, key: str) -> Order | None:
        return await self._one("idempotency_key = ?", (key,))

    async def list_open(self) -> list[Order]:
        """purchasing, waiting and received orders, oldest first (restart recovery)."""
        return await self._many(
            f"SELECT {ORDER_COLUMNS} FROM orders INDEXED BY orders_open"
            " WHERE status IN ('purchasing', 'waiting', 'received') ORDER BY id",
            (),
        )

    async def list_due(self, now: float, limit: int) -> list[Order]:
        """Waiting orders, and received ones with want_more, whose next_poll_at <= now."""
        return await self._many(
            f"SELECT {ORDER_COLUMNS} FROM orders INDEXED BY orders_due"
            f" WHERE {_DUE_WHERE} AND next_poll_at <= ?"
            " ORDER BY next_poll_at LIMIT ?",
            (now, limit),
        )

    async def list_for_user(
        self, user_id: int, *, open_only: bool = False, limit: int = 10
    ) -> list[Order]:
        """The user's orders, newest first."""
        if open_only:
            sql = (
                f"SELECT {ORDER_COLUMNS} FROM orders INDEXED BY orders_open WHERE user_id = ?"
                " AND status IN ('purchasing', 'waiting', 'received') ORDER BY id DESC LIMIT ?"
            )
        else:  # the index (user_id, created_at) ends with the rowid: no sort needed
            sql = (
                f"SELECT {ORDER_COLUMNS} FROM orders INDEXED BY orders_user_created"
                " WHERE user_id = ? ORDER BY created_at DESC, id DESC LIMIT ?"
            )
        return await self._many(sql, (user_id, limit))

    async def count_recent(self, user_id: int, since: float) -> int:
        """Orders the user created at or after `since` (per-minute purchase limit)."""

        def q(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT COUNT(*) FROM orders INDEXED BY orders_user_created"
                " WHERE user_id = ? AND created_at >= ?",
                (user_id, since),
            ).fetchone()
            return int(row[0])

        return await self._db.read(q)

    async def first_code_times(
        self, limit: int = 20_000
    ) -> list[tuple[int, int, float | None, float]]:
        """The newest `limit` orders past waiting, for the poller's schedule: (service_id,
        country_id, seconds from purchase to the first code or None, seconds watched until
        the order ended without one)."""

        def q(conn: sqlite3.Connection) -> list[tuple[int, int, float | None, float]]:
            result = []
            for service, country, created, updated, first in conn.execute(
                "SELECT service_id, country_id, created_at, updated_at,"
                " (SELECT MIN(received_at) FROM codes WHERE codes.order_id = orders.id)"
                " FROM orders WHERE status IN ('received', 'finished', 'cancelled', 'expired')"
                " ORDER BY id DESC LIMIT ?",
                (limit,),
            ):
                to_code = None if first is None else max(0.0, first - created)
                watched = to_code if to_code is not None else max(0.0, updated - created)
                result.append((service, country, to_code, watched))
            return result

        return await self._db.read(q)

    async def codes_of(self, order_id: int) -> list[Code]:
        def q(conn: sqlite3.Connection) -> list[Code]:
            return [
                rows.code(row)
                for row in conn.execute(
                    f"SELECT {CODE_COLUMNS} FROM codes WHERE order_id = ? ORDER BY id",
                    (order_id,),
                )
            ]

        return await self._db.read(q)
