"""Typed results of the SMS-Man control API, normalised at the edge (ids are ints)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum


class Status(StrEnum):
    """Values of set-status."""

    READY = "ready"
    CLOSE = "close"
    REJECT = "reject"
    USED = "used"
    RETRY_SMS = "retrysms"


@dataclass(frozen=True, slots=True)
class Balance:
    balance: Decimal
    hold: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Country:
    id: int
    title: str
    code: str | None  # ISO-3166 alpha-2, upper case, when the provider gives one


@dataclass(frozen=True, slots=True)
class Application:
    id: int
    title: str
    code: str | None


@dataclass(frozen=True, slots=True)
class Price:
    country_id: int
    application_id: int
    cost: Decimal
    count: int


@dataclass(frozen=True, slots=True)
class Limit:
    country_id: int
    application_id: int
    numbers: int


@dataclass(frozen=True, slots=True)
class Number:
    request_id: int
    country_id: int
    application_id: int
    number: str  # digits with the calling code, no "+"


@dataclass(frozen=True, slots=True)
class Sms:
    """A get-sms answer: `code` is None while SMS-Man still waits (`wait_sms`)."""

    request_id: int
    code: str | None
