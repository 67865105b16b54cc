"""Rows the repositories hand to the services. Money is integer minor units."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class OrderStatus(StrEnum):
    PURCHASING = "purchasing"  # row exists, get-number in flight or its outcome unknown
    WAITING = "waiting"  # number bought, no code yet
    RECEIVED = "received"  # at least one code stored
    FINISHED = "finished"  # closed after a code
    CANCELLED = "cancelled"  # rejected by the user before a code
    EXPIRED = "expired"  # deadline or "request gone" without a code
    FAILED = "failed"  # get-number failed or never completed


OPEN_STATUSES = (OrderStatus.PURCHASING, OrderStatus.WAITING, OrderStatus.RECEIVED)
ACTIVE_STATUSES = (OrderStatus.PURCHASING, OrderStatus.WAITING)


class Money(StrEnum):
    """Where an order's price stands in the wallet (shop mode); NONE in private mode."""

    NONE = "none"
    HELD = "held"
    CAPTURED = "captured"
    RELEASED = "released"


class LedgerKind(StrEnum):
    CREDIT = "credit"  # +amount, admin top-up
    DEBIT = "debit"  # -amount, admin correction
    HOLD = "hold"  # -price, purchase started
    CAPTURE = "capture"  # 0, the hold became a sale (first code)
    RELEASE = "release"  # +price, the hold returned (cancel, expiry, failure)


@dataclass(frozen=True, slots=True)
class User:
    id: int
    language: str | None
    first_seen: float
    blocked: bool
    banned: bool
    balance: int  # available, minor units (holds already taken off)


@dataclass(frozen=True, slots=True)
class Profile:
    """What every incoming update needs of its user: the language and the flags (never
    the balance, see Users.profile)."""

    id: int
    language: str | None
    blocked: bool
    banned: bool

    @classmethod
    def of(cls, user: User) -> Profile:
        return cls(user.id, user.language, user.blocked, user.banned)


@dataclass(frozen=True, slots=True)
class Order:
    id: int
    user_id: int
    chat_id: int
    request_id: int | None
    country_id: int
    country_title: str
    service_id: int
    service_title: str
    number: str | None
    price: int  # charged to the user, minor units (0 in private mode)
    cost: int  # SMS-Man cost, minor units
    currency: str
    status: OrderStatus
    money: Money
    created_at: float
    expires_at: float | None
    next_poll_at: float | None
    message_id: int | None  # the order card
    card_text: str | None  # last text the card was rendered with (skip no-op edits)
    multiple_sms: bool
    want_more: bool  # another code asked for (retrysms sent), poll while RECEIVED
    poll_failures: int
    idempotency_key: str

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


@dataclass(frozen=True, slots=True)
class Code:
    id: int
    order_id: int
    code: str
    received_at: float
    delivered_at: float | None
    message_id: int | None


@dataclass(frozen=True, slots=True)
class LedgerRow:
    id: int
    user_id: int
    amount: int
    kind: LedgerKind
    order_id: int | None
    note: str | None
    created_at: float
    idempotency_key: str
