"""Money at the edges: Decimal in, integer minor units inside, text out. Never float."""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation

MINOR_PER_UNIT = 100
MAX_AMOUNT_MINOR = 1_000_000_00  # one million units: far above any sane top-up
_AMOUNT_RE = re.compile(r"^\d{1,9}(?:[.,]\d{1,2})?$")
_SYMBOLS = {"RUB": "₽", "USD": "$", "EUR": "€"}


class AmountError(ValueError):
    """Text that is not a positive amount with at most two decimals within the bound."""


def to_minor(value: Decimal) -> int:
    """Round up to a whole minor unit so a quoted maximum is never below the real cost."""
    return int((value * MINOR_PER_UNIT).to_integral_value(rounding=ROUND_CEILING))


def from_minor(minor: int) -> Decimal:
    return (Decimal(minor) / MINOR_PER_UNIT).quantize(Decimal("0.01"))


def shop_price(cost_minor: int, markup_percent: Decimal, step: Decimal) -> int:
    """Provider cost x (1 + markup/100), rounded up to a multiple of `step` (in units)."""
    raw = from_minor(cost_minor) * (1 + markup_percent / 100)
    steps = (raw / step).to_integral_value(rounding=ROUND_CEILING)
    return to_minor(steps * step)


def format_money(minor: int, currency: str) -> str:
    amount = from_minor(minor)
    symbol = _SYMBOLS.get(currency, currency)
    return f"{amount:,.2f}".replace(",", " ") + f" {symbol}"


def parse_amount(text: str) -> int:
    """A user-typed amount (`150`, `99.5`, `10,25`) to minor units, or AmountError."""
    text = text.strip()
    if not _AMOUNT_RE.fullmatch(text):
        raise AmountError(text)
    try:
        minor = to_minor(Decimal(text.replace(",", ".")))
    except InvalidOperation as exc:  # pragma: no cover - the regex already rules it out
        raise AmountError(text) from exc
    if minor <= 0 or minor > MAX_AMOUNT_MINOR:
        raise AmountError(text)
    return minor
