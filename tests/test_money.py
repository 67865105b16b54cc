"""Money at the edges: typed amounts, markups, shop prices. Integer minor units, no float."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.services.admin import parse_user_id
from bot.services.money import (
    MAX_AMOUNT_MINOR,
    AmountError,
    PercentError,
    format_money,
    format_percent,
    parse_amount,
    parse_percent,
    shop_price,
)
from bot.services.pricing import MARKUP_KEY, Pricing
from bot.settings import Settings
from storage.db import Database


@pytest.mark.parametrize(
    ("text", "minor"),
    [
        ("150", 150_00),
        ("99.5", 99_50),
        ("10,25", 10_25),
        (" 0.01 ", 1),
        ("1000000", MAX_AMOUNT_MINOR),
        ("000012.30", 12_30),
    ],
)
def test_parse_amount_accepts(text: str, minor: int) -> None:
    assert parse_amount(text) == minor


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0",
        "0.00",
        "0.001",
        "1.234",
        "-5",
        "+5",
        "1e5",
        "NaN",
        "Infinity",
        "1000000.01",
        "9999999999",
        "1,000",
        "1 000",
        "10.5.5",
        ".5",
        "5.",
        "١٠",
        "５",
        "²",
        "0x10",
    ],
)
def test_parse_amount_refuses(text: str) -> None:
    with pytest.raises(AmountError):
        parse_amount(text)


@given(st.integers(min_value=1, max_value=MAX_AMOUNT_MINOR))
def test_parse_amount_round_trips_every_valid_amount(minor: int) -> None:
    text = f"{minor // 100}.{minor % 100:02d}"
    assert parse_amount(text) == minor
    assert parse_amount(text.replace(".", ",")) == minor


@pytest.mark.parametrize(
    ("text", "value"), [("0", "0"), ("12.5", "12.5"), ("7,25", "7.25"), ("1000", "1000")]
)
def test_parse_percent_accepts(text: str, value: str) -> None:
    assert parse_percent(text) == Decimal(value)


@pytest.mark.parametrize(
    "text", ["", "-1", "1000.01", "1001", "12.345", "abc", "1e2", "NaN", "50%", "١٠", "10000"]
)
def test_parse_percent_refuses(text: str) -> None:
    with pytest.raises(PercentError):
        parse_percent(text)


@pytest.mark.parametrize(
    ("cost", "markup", "step", "price"),
    [
        (25_00, "0", "0.01", 25_00),
        (25_00, "12.5", "0.01", 28_13),  # 28.125 rounds up, never down
        (25_00, "12.5", "1", 29_00),
        (8_90, "12.5", "1", 11_00),
        (1, "1000", "0.01", 11),
        (48_00, "20", "5", 60_00),  # 57.60 -> the next multiple of 5
        (48_00, "25", "5", 60_00),  # exactly a multiple: unchanged
    ],
)
def test_shop_price_is_cost_times_markup_rounded_up_to_the_step(
    cost: int, markup: str, step: str, price: int
) -> None:
    assert shop_price(cost, Decimal(markup), Decimal(step)) == price


@given(
    st.integers(min_value=1, max_value=10_000_00),
    st.decimals(min_value=0, max_value=1000, places=2),
    st.sampled_from(["0.01", "0.1", "0.5", "1", "5", "10"]),
)
def test_shop_price_never_below_cost_times_markup(cost: int, markup: Decimal, step: str) -> None:
    price = shop_price(cost, markup, Decimal(step))
    exact = Decimal(cost) * (1 + markup / 100)
    assert price >= exact
    assert price - exact < Decimal(step) * 100  # less than one step above
    assert (Decimal(price) / 100) % Decimal(step) == 0


def test_format() -> None:
    assert format_money(1_234_567_89, "RUB") == "1 234 567.89 ₽"
    assert format_money(-5_00, "USD") == "-5.00 $"
    assert format_percent(Decimal("12.50")) == "12.5"
    assert format_percent(Decimal("100")) == "100"
    assert format_percent(Decimal("1E+2")) == "100"


@pytest.mark.parametrize(
    ("text", "user_id"),
    [
        ("123456789", 123456789),
        (" 42 ", 42),
        ("4503599627370495", 2**52 - 1),
        ("4503599627370496", None),
        ("0", None),
        ("-1", None),
        ("³", None),
        ("12345678901234567", None),
    ],
)
def test_parse_user_id(text: str, user_id: int | None) -> None:
    assert parse_user_id(text) == user_id


async def test_pricing_markup_override_is_validated_and_survives_reload(database_url: str) -> None:
    values: dict[str, Any] = {
        "bot_token": "1:x",
        "smsman_token": "x",
        "access_mode": "shop",
        "markup_percent": Decimal("10"),
    }
    settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
    async with await Database.open(database_url) as db:
        pricing = Pricing(settings, db)
        await pricing.load()
        assert (pricing.markup, pricing.overridden) == (Decimal("10"), False)
        for bad in ("-1", "1000.5", "12.345", "NaN"):
            with pytest.raises(ValueError):
                await pricing.set_markup(Decimal(bad))
        assert await db.kv.get(MARKUP_KEY) is None
        await pricing.set_markup(Decimal("25.5"))

        reloaded = Pricing(settings, db)
        await reloaded.load()
        assert (reloaded.markup, reloaded.overridden) == (Decimal("25.5"), True)
        assert reloaded.price(100_00) == 125_50

        await db.kv.set(MARKUP_KEY, "garbage")  # a hand-edited database
        broken = Pricing(settings, db)
        await broken.load()
        assert broken.markup == Decimal("10")

        await reloaded.reset_markup()
        assert reloaded.markup == Decimal("10") and await db.kv.get(MARKUP_KEY) is None
