"""Money at the edges: Decimal in, integer minor units inside, text out. Never float."""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation

MINOR_PER_UNIT = 100
MAX_AMOUNT_MINOR = 1_000_000_00  # one million units: far above any sane top-up
MAX_MARKUP_PERCENT = Decimal(1000)
# ASCII digits only: `\d` would also take "١٢" or "²", which Decimal/int read differently.
_AMOUNT_RE = re.compile(r"^[0-9]{1,9}(?:[.,][0-9]{1,2})?$")
_PERCENT_RE = re.compile(r"^[0-9]{1,4}(?:[.,][0-9]{1,2})?$")
_SYMBOLS = {"RUB": "₽", "USD": "$", "EUR": "€"}
_CENT = Decimal("0.01")


class AmountError(ValueError):
    """Text that is not a positive amount with at most two decimals within the bound."""


class PercentError(ValueError):
    """Text that is not a markup: a number from 0 to 1000 with at most two decimals."""


def to_minor(value: Decimal) -> int:
    """Round up to a whole minor unit so a quoted maximum is never below the real cost."""
    return int((value * MINOR_PER_UNIT).to_integral_value(rounding=ROUND_CEILING))


def from_minor(minor: int) -> Decimal:
    return (Decimal(minor) / MINOR_PER_UNIT).quantize(_CENT)


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


def parse_percent(text: str) -> Decimal:
    """A markup in percent (`25`, `12.5`, `7,25`): 0..1000, at most two decimals."""
    text = text.strip()
    if not _PERCENT_RE.fullmatch(text):
        raise PercentError(text)
    value = Decimal(text.replace(",", "."))
    if not valid_percent(value):
        raise PercentError(text)
    return value


def valid_percent(value: Decimal) -> bool:
    """0 <= value <= 1000 with at most two decimals (a finite Decimal)."""
    if not value.is_finite() or value < 0 or value > MAX_MARKUP_PERCENT:
        return False
    return value == value.quantize(_CENT)


def format_percent(value: Decimal) -> str:
    """`12.5`, `100`, `0` — no trailing zeros, no exponent."""
    text = f"{value.quantize(_CENT):f}"
    return text.rstrip("0").rstrip(".") if "." in text else text
