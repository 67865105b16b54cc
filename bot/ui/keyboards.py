"""Inline keyboards.

Built as plain rows rather than with aiogram's InlineKeyboardBuilder: the builder deep-copies
the whole keyboard (pydantic models) on every added button, which made a 20-button country
page cost ~2-4 ms of CPU per click (bench/menu.py). `_Keyboard` keeps the builder's
`button()`/`adjust()` shape and row semantics without the copies.

Menus repeat, so the navigation keyboards are also memoised (LRU) by everything they show
and the current locale. A keyboard is never modified once built: aiogram only serialises it.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from aiogram.filters.callback_data import CallbackData
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup
from aiogram.utils.i18n import get_i18n
from aiogram.utils.i18n import gettext as _

from bot.services.catalogue import CountryItem, ServiceItem
from bot.services.money import format_money
from bot.ui.callbacks import (
    BuyCb,
    CountryCb,
    CountryPageCb,
    LanguageCb,
    MenuAction,
    MenuCb,
    OrderAction,
    OrderCb,
    ServiceCb,
    ServicePageCb,
)
from storage.models import Order, OrderStatus

COUNTRIES_PER_PAGE = 16
SERVICES_PER_PAGE = 10
LANGUAGES = (("en", "🇬🇧 English"), ("ru", "🇷🇺 Русский"))
MEMO_SIZE = 1024  # keyboards kept (a country page is ~20 buttons: a few KB each)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page:
    number: int
    count: int

    @property
    def has_prev(self) -> bool:
        return self.number > 0

    @property
    def has_next(self) -> bool:
        return self.number < self.count - 1


def paginate(items: Sequence[T], page: int, size: int) -> tuple[Sequence[T], Page]:
    """Clamp the page so a stale or forged page number still shows something sensible."""
    count = max(1, -(-len(items) // size))
    page = min(max(page, 0), count - 1)
    return items[page * size : (page + 1) * size], Page(page, count)


class _Keyboard:
    """The subset of InlineKeyboardBuilder used here: button(), adjust(), as_markup()."""

    __slots__ = ("_buttons", "_sizes")

    def __init__(self) -> None:
        self._buttons: list[InlineKeyboardButton] = []
        self._sizes: tuple[int, ...] = (8,)  # the builder's default: up to 8 per row

    def button(self, *, text: str, callback_data: CallbackData) -> None:
        self._buttons.append(InlineKeyboardButton(text=text, callback_data=callback_data.pack()))

    def adjust(self, *sizes: int) -> None:
        """Rows of the given sizes in order, the last size repeated (as the builder)."""
        if any(not 1 <= size <= 8 for size in sizes):
            raise ValueError(f"row sizes must be within 1..8, got {sizes}")
        self._sizes = sizes or (8,)

    def as_markup(self) -> InlineKeyboardMarkup:
        if len(self._buttons) > 100:  # Telegram's limit, which the builder enforced too
            raise ValueError(f"too many buttons: {len(self._buttons)} > 100")
        rows: list[list[InlineKeyboardButton]] = []
        start, index = 0, 0
        while start < len(self._buttons):
            size = self._sizes[min(index, len(self._sizes) - 1)]
            rows.append(self._buttons[start : start + size])
            start += size
            index += 1
        return InlineKeyboardMarkup(inline_keyboard=rows)


_memo: OrderedDict[tuple[Hashable, ...], InlineKeyboardMarkup] = OrderedDict()


def _current_locale() -> str:
    try:
        return get_i18n().current_locale
    except LookupError:  # no i18n context (a script, a test): gettext would fail anyway
        return ""


def _memoized(
    key: tuple[Hashable, ...], build: Callable[[], InlineKeyboardMarkup]
) -> InlineKeyboardMarkup:
    """`build()` once per `key` and locale, least recently used dropped beyond MEMO_SIZE."""
    full = (_current_locale(), *key)
    markup = _memo.get(full)
    if markup is not None:
        _memo.move_to_end(full)
        return markup
    markup = build()
    _memo[full] = markup
    if len(_memo) > MEMO_SIZE:
        _memo.popitem(last=False)
    return markup


def _per_locale(build: Callable[[], InlineKeyboardMarkup]) -> Callable[[], InlineKeyboardMarkup]:
    """A keyboard without arguments: built once per locale."""

    @functools.wraps(build)
    def memoized() -> InlineKeyboardMarkup:
        return _memoized((build.__name__,), build)

    return memoized


@_per_locale
def main_menu() -> InlineKeyboardMarkup:
    kb = _Keyboard()
    kb.button(text=_("📱 Buy number"), callback_data=MenuCb(action=MenuAction.BUY))
    kb.button(text=_("📋 My orders"), callback_data=MenuCb(action=MenuAction.ORDERS))
    kb.button(text=_("💰 Balance"), callback_data=MenuCb(action=MenuAction.BALANCE))
    kb.button(text=_("❓ Help"), callback_data=MenuCb(action=MenuAction.HELP))
    kb.adjust(1, 2, 1)
    return kb.as_markup()


def _home_button(kb: _Keyboard) -> None:
    kb.button(text=_("🏠 Menu"), callback_data=MenuCb(action=MenuAction.HOME))


@_per_locale
def back_to_menu() -> InlineKeyboardMarkup:
    kb = _Keyboard()
    _home_button(kb)
    return kb.as_markup()


@_per_locale
def after_no_numbers() -> InlineKeyboardMarkup:
    kb = _Keyboard()
    kb.button(text="🌍 " + _("Another country"), callback_data=MenuCb(action=MenuAction.BUY))
    _home_button(kb)
    kb.adjust(1)
    return kb.as_markup()


def countries(
    items: Sequence[CountryItem], page: int, currency: str, locale: str, *, filtered: bool
) -> InlineKeyboardMarkup:
    shown, pg = paginate(items, page, COUNTRIES_PER_PAGE)
    key = ("countries", tuple(shown), pg, currency, locale, filtered)
    return _memoized(key, lambda: _countries(shown, pg, currency, locale, filtered=filtered))


def _countries(
    shown: Sequence[CountryItem], pg: Page, currency: str, locale: str, *, filtered: bool
) -> InlineKeyboardMarkup:
    kb = _Keyboard()
    for item in shown:
        label = f"{item.flag} {item.title_in(locale)}"
        if item.min_cost is not None:
            label += " · " + _("from {price}").format(price=format_money(item.min_cost, currency))
        kb.button(text=label, callback_data=CountryCb(country=item.id))
    sizes = [2] * (len(shown) // 2) + [1] * (len(shown) % 2)
    nav = 0
    if pg.has_prev:
        kb.button(
            text="‹ " + _("Back"),
            callback_data=CountryPageCb(page=pg.number - 1, filtered=filtered),
        )
        nav += 1
    if pg.count > 1:
        kb.button(
            text=f"{pg.number + 1}/{pg.count}",
            callback_data=CountryPageCb(page=pg.number, filtered=filtered),
        )
        nav += 1
    if pg.has_next:
        kb.button(
            text=_("Next") + " ›",
            callback_data=CountryPageCb(page=pg.number + 1, filtered=filtered),
        )
        nav += 1
    _home_button(kb)
    kb.adjust(*sizes, *([nav] if nav else []), 1)
    return kb.as_markup()


def services(
    country_id: int,
    items: Sequence[ServiceItem],
    page: int,
    price_of: dict[int, int],
    currency: str,
    *,
    filtered: bool,
) -> InlineKeyboardMarkup:
    shown, pg = paginate(items, page, SERVICES_PER_PAGE)
    prices = tuple(price_of[item.id] for item in shown)
    key = ("services", country_id, tuple(shown), prices, pg, currency, filtered)
    return _memoized(
        key, lambda: _services(country_id, shown, prices, pg, currency, filtered=filtered)
    )


def _services(
    country_id: int,
    shown: Sequence[ServiceItem],
    prices: Sequence[int],
    pg: Page,
    currency: str,
    *,
    filtered: bool,
) -> InlineKeyboardMarkup:
    kb = _Keyboard()
    for item, minor in zip(shown, prices, strict=True):
        price = format_money(minor, currency)
        kb.button(
            text=f"{item.title} · {price} · {item.count}",
            callback_data=ServiceCb(country=country_id, service=item.id),
        )
    nav = 0
    if pg.has_prev:
        kb.button(
            text="‹ " + _("Back"),
            callback_data=ServicePageCb(country=country_id, page=pg.number - 1, filtered=filtered),
        )
        nav += 1
    if pg.count > 1:
        kb.button(
            text=f"{pg.number + 1}/{pg.count}",
            callback_data=ServicePageCb(country=country_id, page=pg.number, filtered=filtered),
        )
        nav += 1
    if pg.has_next:
        kb.button(
            text=_("Next") + " ›",
            callback_data=ServicePageCb(country=country_id, page=pg.number + 1, filtered=filtered),
        )
        nav += 1
    kb.button(text="↩ " + _("Countries"), callback_data=MenuCb(action=MenuAction.BUY))
    kb.adjust(*([1] * len(shown)), *([nav] if nav else []), 1)
    return kb.as_markup()


def confirm(country_id: int, service_id: int, cost: int, *, multi: bool) -> InlineKeyboardMarkup:
    """Buy; `multi` (MULTIPLE_SMS): every number takes several SMS. Otherwise a second
    button lets the user ask for that (Another code on the card)."""
    kb = _Keyboard()
    kb.button(
        text="✅ " + _("Buy"),
        callback_data=BuyCb(country=country_id, service=service_id, cost=cost, multi=multi),
    )
    if not multi:
        kb.button(
            text="🔁 " + _("Buy (several SMS)"),
            callback_data=BuyCb(country=country_id, service=service_id, cost=cost, multi=True),
        )
    kb.button(text="↩ " + _("Services"), callback_data=ServicePageCb(country=country_id, page=0))
    kb.adjust(1)
    return kb.as_markup()


def order_card(order: Order) -> InlineKeyboardMarkup | None:
    kb = _Keyboard()
    if order.status is OrderStatus.WAITING:
        kb.button(
            text="✖ " + _("Cancel"),
            callback_data=OrderCb(action=OrderAction.CANCEL, order=order.id),
        )
    elif order.status is OrderStatus.RECEIVED:
        if order.multiple_sms and not order.want_more:
            kb.button(
                text="🔁 " + _("Another code"),
                callback_data=OrderCb(action=OrderAction.MORE, order=order.id),
            )
        kb.button(
            text="✔ " + _("Finish"),
            callback_data=OrderCb(action=OrderAction.FINISH, order=order.id),
        )
    else:
        return None
    kb.adjust(1)
    return kb.as_markup()


def orders_list(open_orders: Sequence[Order]) -> InlineKeyboardMarkup:
    kb = _Keyboard()
    for order in open_orders:
        kb.button(
            text=f"#{order.id} {order.service_title}",
            callback_data=OrderCb(action=OrderAction.SHOW, order=order.id),
        )
    _home_button(kb)
    kb.adjust(1)
    return kb.as_markup()


@_per_locale
def languages() -> InlineKeyboardMarkup:
    kb = _Keyboard()
    for code, label in LANGUAGES:
        kb.button(text=label, callback_data=LanguageCb(code=code))
    kb.adjust(2)
    return kb.as_markup()
