"""Orders: the one state machine, and every transition with its money movement."""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import ledger, rows, sql
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
        S.CANCELLED: frozenset(),
        S.EXPIRED: frozenset(),
        S.FINISHED: frozenset(),
        S.FAILED: frozenset(),
    }
)


def can_move(old: OrderStatus, new: OrderStatus) -> bool:
    return new in TRANSITIONS[old]


_MOVES: dict[str, TextClause] = {}


def _move_stmt(sets: str) -> TextClause:
    stmt = _MOVES.get(sets)
    if stmt is None:
        stmt = _MOVES[sets] = text(
            f"UPDATE orders SET status = :new, updated_at = :now{sets}"
            " WHERE id = :order_id AND status = :old RETURNING user_id, price, money"
        )
    return stmt


async def _move(
    conn: AsyncConnection,
    order_id: int,
    old: OrderStatus,
    new: OrderStatus,
    now: float,
    sets: str = "",
    **params: Any,
) -> tuple[int, int, Money] | None:
    """The guarded UPDATE of one transition. Returns (user_id, price, money) if it happened."""
    if not can_move(old, new):
        raise ValueError(f"illegal order transition {old} -> {new}")
    row = await sql.first(
        conn, _move_stmt(sets), new=new.value, now=now, order_id=order_id, old=old.value, **params
    )
    if row is None:
        return None
    return int(row[0]), int(row[1]), Money(row[2])


# The money column moves in the status transition's own guarded UPDATE: an order being
# closed or given its first code is in purchasing/waiting, where money is 'none' or 'held'.
_RELEASING = ", want_more = 0, money = CASE WHEN money = 'held' THEN 'released' ELSE money END"
_CAPTURING = ", want_more = 0, money = CASE WHEN money = 'held' THEN 'captured' ELSE money END"


async def _close_releasing(
    conn: AsyncConnection, order_id: int, old: OrderStatus, new: OrderStatus, now: float
) -> bool:
    """A transition to a final status without a code: the held price goes back."""
    moved = await _move(conn, order_id, old, new, now, _RELEASING)
    if moved is None:
        return False
    user_id, price, money = moved
    if money is Money.RELEASED:  # it was held: the UPDATE above released it
        await ledger.release_row(conn, user_id, order_id, price, now)
    return True


# A write that changes nothing but takes the order row's lock (PostgreSQL) and reads its
# status in the same step, so the status cannot change before this transaction ends.
_LOCK_CODE_TARGET = text(
    "UPDATE orders SET status = status WHERE id = :order_id"
    " AND status IN ('waiting', 'received') RETURNING status"
)
_INSERT_CODE = text(
    "INSERT INTO codes (order_id, code, received_at) VALUES (:order_id, :code, :now)"
    " ON CONFLICT (order_id, code) DO NOTHING RETURNING id"
)
_CLEAR_WANT_MORE = text("UPDATE orders SET want_more = 0, updated_at = :now WHERE id = :order_id")


async def _add_code(conn: AsyncConnection, order_id: int, code: str, now: float) -> Code | None:
    # The usual case first: a waiting order's first code. The guarded UPDATE moves it to
    # received (capturing a hold) and locks it; a waiting order has no code yet.
    moved = await _move(conn, order_id, S.WAITING, S.RECEIVED, now, _CAPTURING)
    if moved is not None:
        code_id = await sql.scalar(conn, _INSERT_CODE, order_id=order_id, code=code, now=now)
        if code_id is None:  # cannot happen: roll back rather than move without a code
            raise RuntimeError(f"order {order_id} was waiting with code {code!r} stored")
        user_id, _price, money = moved
        if money is Money.CAPTURED:  # it was held: the UPDATE above captured it
            await ledger.capture_row(conn, user_id, order_id, now)
        return _code(code_id, order_id, code, now)
    return await _add_later_code(conn, order_id, code, now)


async def _add_later_code(
    conn: AsyncConnection, order_id: int, code: str, now: float
) -> Code | None:
    """A received order's next code (or, after a race, a waiting order's first)."""
    status_value = await sql.scalar(conn, _LOCK_CODE_TARGET, order_id=order_id)
    if status_value is None:
        return None
    status = OrderStatus(status_value)
    code_id = await sql.scalar(conn, _INSERT_CODE, order_id=order_id, code=code, now=now)
    if code_id is None:
        return None  # the same code again: nothing changes
    if status is S.RECEIVED:
        await conn.execute(_CLEAR_WANT_MORE, {"now": now, "order_id": order_id})
    else:
        moved = await _move(conn, order_id, status, S.RECEIVED, now, _CAPTURING)
        if moved is None:  # cannot happen: the row is locked; never store a stray code
            raise RuntimeError(f"order {order_id} changed status under a write transaction")
        user_id, _price, money = moved
        if money is Money.CAPTURED:
            await ledger.capture_row(conn, user_id, order_id, now)
    return _code(code_id, order_id, code, now)


def _code(code_id: Any, order_id: int, code: str, now: float) -> Code:
    return Code(
        id=int(code_id),
        order_id=order_id,
        code=code,
        received_at=now,
        delivered_at=None,
        message_id=None,
    )


_NEW_ORDER_COLUMNS = (
    "INSERT INTO orders (user_id, chat_id, country_id, country_title, service_id,"
    " service_title, price, cost, currency, status, money, created_at, multiple_sms,"
    " idempotency_key, updated_at)"
)
_NEW_ORDER_VALUES = (
    ":user_id, :chat_id, :country_id, :country_title, :service_id, :service_title, :price,"
    " :cost, :currency, :status, :money, :now, :multiple_sms, :key, :now"
)
_INSERT_ORDER = text(f"{_NEW_ORDER_COLUMNS} VALUES ({_NEW_ORDER_VALUES}) RETURNING id")
# The usual purchase checks its key and limits in the insert itself (no row: refused, and
# `_refuse` says why). The counts run after the user's row is locked, as `_refuse`'s do.
_UNDER_MAX_ACTIVE = (
    "(SELECT COUNT(*) FROM orders WHERE user_id = :user_id"
    " AND status IN ('purchasing', 'waiting')) < :max_active"
)
_UNDER_MAX_RECENT = (
    " AND (SELECT COUNT(*) FROM orders WHERE user_id = :user_id"
    " AND created_at >= :since) < :max_per_minute"
)
_INSERT_ORDER_IF_ALLOWED = {
    per_minute: text(
        f"{_NEW_ORDER_COLUMNS} SELECT {_NEW_ORDER_VALUES} WHERE {_UNDER_MAX_ACTIVE}"
        f"{_UNDER_MAX_RECENT if per_minute else ''}"
        " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id"
    )
    for per_minute in (False, True)
}
_BY_KEY = text(f"SELECT {ORDER_COLUMNS} FROM orders WHERE idempotency_key = :key")
# The duplicate check and both limits in one statement (one round trip less per purchase).
_KEY_AND_LIMITS = text(
    "SELECT (SELECT id FROM orders WHERE idempotency_key = :key),"
    " COUNT(*) FILTER (WHERE status IN ('purchasing', 'waiting')),"
    " COUNT(*) FILTER (WHERE created_at >= :since)"
    " FROM orders WHERE user_id = :user_id"
    " AND (status IN ('purchasing', 'waiting') OR created_at >= :since)"
)
_MARK_WAITING_SETS = (
    ", request_id = :request_id, number = :number, expires_at = :expires_at,"
    " next_poll_at = :next_poll_at, lease_owner = :lease_owner, lease_until = :lease_until"
)
_REQUEST_MORE = text(
    "UPDATE orders SET want_more = 1, next_poll_at = COALESCE(:next_poll_at, next_poll_at),"
    " updated_at = :now WHERE id = :order_id AND status = 'received' AND multiple_sms = 1"
    " AND want_more = 0"
)
_SET_MESSAGE = text(
    "UPDATE orders SET message_id = :message_id, card_text = :card_text WHERE id = :order_id"
)
_SET_CARD_TEXT = text("UPDATE orders SET card_text = :card_text WHERE id = :order_id")
_LIST_OPEN = text(
    f"SELECT {ORDER_COLUMNS} FROM orders"
    " WHERE status IN ('purchasing', 'waiting', 'received') ORDER BY id"
)
_LIST_OPEN_FOR_USER = text(
    f"SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = :user_id"
    " AND status IN ('purchasing', 'waiting', 'received') ORDER BY id DESC LIMIT :limit"
)
_LIST_FOR_USER = text(
    f"SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = :user_id"
    " ORDER BY created_at DESC, id DESC LIMIT :limit"
)
_COUNT_RECENT = text(
    "SELECT COUNT(*) FROM orders WHERE user_id = :user_id AND created_at >= :since"
)
_CODES_OF = text(f"SELECT {CODE_COLUMNS} FROM codes WHERE order_id = :order_id ORDER BY id")
_GET = text(f"SELECT {ORDER_COLUMNS} FROM orders WHERE id = :order_id")
_FIRST_CODE_TIMES = text(
    "SELECT service_id, country_id, created_at, updated_at,"
    " (SELECT MIN(received_at) FROM codes WHERE codes.order_id = orders.id)"
    " FROM orders WHERE status IN ('received', 'finished', 'cancelled', 'expired')"
    " ORDER BY id DESC LIMIT :limit"
)
_GET_FOR_USER = text(
    f"SELECT {ORDER_COLUMNS} FROM orders WHERE id = :order_id AND user_id = :user_id"
)
_BY_REQUEST = text(f"SELECT {ORDER_COLUMNS} FROM orders WHERE request_id = :request_id")


async def _refuse(
    conn: AsyncConnection,
    *,
    user_id: int,
    key: str,
    since: float,
    banned: bool,
    max_active: int,
    max_per_minute: int | None,
) -> None:
    """Raise the first of DuplicateOrder, UserBanned, TooManyActiveOrders and
    TooManyRecentOrders that applies (the user's row locked already); return if none."""
    found = await sql.first(conn, _KEY_AND_LIMITS, key=key, user_id=user_id, since=since)
    assert found is not None  # an aggregate without GROUP BY: always one row
    if found[0] is not None:
        existing = await sql.first(conn, _GET, order_id=found[0])
        assert existing is not None
        raise DuplicateOrder(rows.order(existing))
    if banned:
        raise UserBanned(f"user {user_id} is banned")
    active, recent = int(found[1] or 0), int(found[2] or 0)
    if active >= max_active:
        raise TooManyActiveOrders(max_active)
    if max_per_minute is not None and recent >= max_per_minute:
        raise TooManyRecentOrders(max_per_minute)


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
        transaction after the user's row is locked, so concurrent purchases cannot all slip
        under them.
        """
        if price < 0 or cost < 0:
            raise InvalidAmount(f"price and cost must be >= 0 (price={price}, cost={cost})")
        ts = time.time() if now is None else now
        money = Money.HELD if hold else Money.NONE

        values = {
            "user_id": user_id,
            "chat_id": chat_id,
            "country_id": country_id,
            "country_title": country_title,
            "service_id": service_id,
            "service_title": service_title,
            "price": price,
            "cost": cost,
            "currency": currency,
            "status": S.PURCHASING.value,
            "money": money.value,
            "now": ts,
            "multiple_sms": int(multiple_sms),
            "key": idempotency_key,
        }
        limits = {"max_active": max_active, "since": ts - 60}
        if max_per_minute is not None:
            limits["max_per_minute"] = max_per_minute
        insert_if_allowed = _INSERT_ORDER_IF_ALLOWED[max_per_minute is not None]

        async def refuse(conn: AsyncConnection, banned: bool) -> None:
            await _refuse(
                conn,
                user_id=user_id,
                key=idempotency_key,
                since=ts - 60,
                banned=banned,
                max_active=max_active,
                max_per_minute=max_per_minute,
            )

        async def tx(conn: AsyncConnection) -> Order:
            # The usual purchase: take the price (locking the user's row), insert the order
            # if its key is new and the limits allow, write the hold's ledger row.
            if not hold:
                banned, _balance = await ledger.lock_user(conn, user_id, ts)
            else:
                taken = await ledger.take_locking(conn, user_id, price)
                if taken is None:  # short, or a new user: lock, then every check in order
                    banned, _balance = await ledger.lock_user(conn, user_id, ts)
                    await refuse(conn, banned)
                    await ledger.take(conn, user_id, price)  # InsufficientFunds
                else:
                    banned = taken
            if banned:
                await refuse(conn, banned)  # DuplicateOrder or UserBanned
            found = await sql.scalar(conn, insert_if_allowed, **values, **limits)
            if found is None:
                await refuse(conn, banned)  # says which check refused it
                # None does any more (an order of the user ended meanwhile: PostgreSQL).
                found = await sql.scalar(conn, _INSERT_ORDER, **values)
            order_id = int(found)
            if hold:
                await ledger.hold_row(conn, user_id, order_id, price, ts)
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
        lease: tuple[str, float] | None = None,
    ) -> bool:
        """purchasing -> waiting, with the bought number. A request_id already used by
        another order raises sqlalchemy.exc.IntegrityError (and changes nothing).
        `lease`: (replica id, until): the replica that bought it polls it (storage/leases.py)."""
        lease_owner, lease_until = lease if lease is not None else (None, None)
        ts = time.time() if now is None else now

        async def tx(conn: AsyncConnection) -> bool:
            moved = await _move(
                conn,
                order_id,
                S.PURCHASING,
                S.WAITING,
                ts,
                _MARK_WAITING_SETS,
                request_id=request_id,
                number=number,
                expires_at=expires_at,
                next_poll_at=next_poll_at,
                lease_owner=lease_owner,
                lease_until=lease_until,
            )
            return moved is not None

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

        async def tx(conn: AsyncConnection) -> bool:
            return await _close_releasing(conn, order_id, old, new, ts)

        return await self._db.write(tx)

    async def add_code(self, order_id: int, code: str, *, now: float | None = None) -> Code | None:
        """Store a code for a waiting/received order: waiting -> received (+capture if held),
        want_more cleared. None (and nothing changed) for a duplicate code or another status."""
        ts = time.time() if now is None else now

        async def tx(conn: AsyncConnection) -> Code | None:
            return await _add_code(conn, order_id, code, ts)

        return await self._db.write(tx)

    async def finish(self, order_id: int, *, now: float | None = None) -> bool:
        """received -> finished."""
        ts = time.time() if now is None else now

        async def tx(conn: AsyncConnection) -> bool:
            moved = await _move(conn, order_id, S.RECEIVED, S.FINISHED, ts, ", want_more = 0")
            return moved is not None

        return await self._db.write(tx)

    async def request_more(
        self, order_id: int, *, next_poll_at: float | None = None, now: float | None = None
    ) -> bool:
        """Ask for another code: a received multiple-SMS order with no request pending gets
        want_more=1 (the poller picks it up again). False if not allowed or already asked."""
        ts = time.time() if now is None else now
        return await self._write_count(
            _REQUEST_MORE, next_poll_at=next_poll_at, now=ts, order_id=order_id
        )

    # -- bookkeeping -------------------------------------------------------------------

    async def set_message(
        self, order_id: int, message_id: int | None, card_text: str | None
    ) -> bool:
        return await self._write_count(
            _SET_MESSAGE,
            message_id=message_id,
            card_text=rows.encode_card_text(card_text),
            order_id=order_id,
        )

    async def set_card_text(self, order_id: int, card_text: str | None) -> bool:
        return await self._write_count(
            _SET_CARD_TEXT, card_text=rows.encode_card_text(card_text), order_id=order_id
        )

    async def _write_count(self, stmt: TextClause, **params: Any) -> bool:
        async def tx(conn: AsyncConnection) -> bool:
            return await sql.count(conn, stmt, **params) == 1

        return await self._db.write(tx)

    # -- reads -------------------------------------------------------------------------

    async def _one(self, stmt: TextClause, **params: Any) -> Order | None:
        async def q(conn: AsyncConnection) -> Order | None:
            found = await sql.first(conn, stmt, **params)
            return rows.order(found) if found else None

        return await self._db.read(q)

    async def _many(self, stmt: TextClause, **params: Any) -> list[Order]:
        async def q(conn: AsyncConnection) -> list[Order]:
            return [rows.order(row) for row in await sql.rows(conn, stmt, **params)]

        return await self._db.read(q)

    async def get(self, order_id: int) -> Order | None:
        return await self._one(_GET, order_id=order_id)

    async def get_for_user(self, order_id: int, user_id: int) -> Order | None:
        return await self._one(_GET_FOR_USER, order_id=order_id, user_id=user_id)

    async def by_request_id(self, request_id: int) -> Order | None:
        return await self._one(_BY_REQUEST, request_id=request_id)

    async def by_idempotency_key(self, key: str) -> Order | None:
        return await self._one(_BY_KEY, key=key)

    async def list_open(self) -> list[Order]:
        """purchasing, waiting and received orders, oldest first (restart recovery)."""
        return await self._many(_LIST_OPEN)

    async def list_for_user(
        self, user_id: int, *, open_only: bool = False, limit: int = 10
    ) -> list[Order]:
        """The user's orders, newest first."""
        stmt = _LIST_OPEN_FOR_USER if open_only else _LIST_FOR_USER
        return await self._many(stmt, user_id=user_id, limit=limit)

    async def count_recent(self, user_id: int, since: float) -> int:
        """Orders the user created at or after `since` (per-minute purchase limit)."""

        async def q(conn: AsyncConnection) -> int:
            return int(await sql.scalar(conn, _COUNT_RECENT, user_id=user_id, since=since))

        return await self._db.read(q)

    async def first_code_times(
        self, limit: int = 20_000
    ) -> list[tuple[int, int, float | None, float]]:
        """The newest `limit` orders past waiting, for the poller's schedule: (service_id,
        country_id, seconds from purchase to the first code or None, seconds watched until
        the order ended without one)."""

        async def q(conn: AsyncConnection) -> list[tuple[int, int, float | None, float]]:
            result = []
            for service, country, created, updated, first in await sql.rows(
                conn, _FIRST_CODE_TIMES, limit=limit
            ):
                to_code = None if first is None else max(0.0, first - created)
                watched = to_code if to_code is not None else max(0.0, updated - created)
                result.append((service, country, to_code, watched))
            return result

        return await self._db.read(q)

    async def codes_of(self, order_id: int) -> list[Code]:
        async def q(conn: AsyncConnection) -> list[Code]:
            return [rows.code(row) for row in await sql.rows(conn, _CODES_OF, order_id=order_id)]

        return await self._db.read(q)
