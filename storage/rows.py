"""Column lists and row -> dataclass mappers shared by the repositories."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from storage.models import Code, LedgerKind, LedgerRow, Money, Order, OrderStatus, User

Row = Sequence[Any]

USER_COLUMNS = "id, language, first_seen, blocked, banned, balance"

ORDER_FIELDS = (
    "id",
    "user_id",
    "chat_id",
    "request_id",
    "country_id",
    "country_title",
    "service_id",
    "service_title",
    "number",
    "price",
    "cost",
    "currency",
    "status",
    "money",
    "created_at",
    "expires_at",
    "next_poll_at",
    "message_id",
    "card_text",
    "multiple_sms",
    "want_more",
    "poll_failures",
    "idempotency_key",
)
ORDER_COLUMNS = ", ".join(ORDER_FIELDS)
ORDER_COLUMNS_O = ", ".join(f"o.{name}" for name in ORDER_FIELDS)

CODE_COLUMNS = "id, order_id, code, received_at, delivered_at, message_id"
CODE_COLUMNS_C = ", ".join(f"c.{name.strip()}" for name in CODE_COLUMNS.split(","))

LEDGER_COLUMNS = "id, user_id, amount, kind, order_id, note, created_at, idempotency_key"


def encode_card_text(value: str | None) -> str | None:
    """PostgreSQL's TEXT cannot hold NUL, which the card text may carry: escape it (and the
    escape character), the same way on both engines."""
    if value is None:
        return None
    return value.replace("\\", "\\\\").replace("\x00", "\\0")


def decode_card_text(value: str | None) -> str | None:
    if value is None or "\\" not in value:
        return value
    out: list[str] = []
    chars = iter(value)
    for char in chars:
        if char == "\\":
            following = next(chars, "")
            out.append("\x00" if following == "0" else following)
        else:
            out.append(char)
    return "".join(out)


def user(row: Row) -> User:
    return User(
        id=row[0],
        language=row[1],
        first_seen=row[2],
        blocked=bool(row[3]),
        banned=bool(row[4]),
        balance=row[5],
    )


def order(row: Row) -> Order:
    return Order(
        id=row[0],
        user_id=row[1],
        chat_id=row[2],
        request_id=row[3],
        country_id=row[4],
        country_title=row[5],
        service_id=row[6],
        service_title=row[7],
        number=row[8],
        price=row[9],
        cost=row[10],
        currency=row[11],
        status=OrderStatus(row[12]),
        money=Money(row[13]),
        created_at=row[14],
        expires_at=row[15],
        next_poll_at=row[16],
        message_id=row[17],
        card_text=decode_card_text(row[18]),
        multiple_sms=bool(row[19]),
        want_more=bool(row[20]),
        poll_failures=row[21],
        idempotency_key=row[22],
    )


def code(row: Row) -> Code:
    return Code(
        id=row[0],
        order_id=row[1],
        code=row[2],
        received_at=row[3],
        delivered_at=row[4],
        message_id=row[5],
    )


def ledger(row: Row) -> LedgerRow:
    return LedgerRow(
        id=row[0],
        user_id=row[1],
        amount=row[2],
        kind=LedgerKind(row[3]),
        order_id=row[4],
        note=row[5],
        created_at=row[6],
        idempotency_key=row[7],
    )
