"""Inline keyboards, built with aiogram's InlineKeyboardBuilder (the pages of countries and
services as rows of buttons directly: the builder copies its buttons on every add, ~2 ms
for a country page).

Menus repeat, so the navigation keyboards are memoised (LRU) by everything they show and
the current locale, paid once per distinct page instead of on every click. A keyboard is
never modified once built (aiogram only serialises it), so the session also encodes it
once (bot/telegram_session.py: share).
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
from aiogram.utils.keyboard import InlineKeyboardBuilder

from bot.services.catalogue import CountryItem, ServiceItem
from bot.services.money import format_money
from bot.telegram_session import share
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


def _button(text: str, data: CallbackData) -> InlineKeyboardButton:
    return InlineKeyboardButton(text=text, callback_data=data.pack())


def _nav_row(pg: Page, to_page: Callable[[int], CallbackData]) -> list[list[InlineKeyboardButton]]:
    """‹ Back, n/N, Next ›: the row a page needs (none for a single page)."""
    row = []
    if pg.has_prev:
        row.append(_button("‹ " + _("Back"), to_page(pg.number - 1)))
    if pg.count > 1:
        row.append(_button(f"{pg.number + 1}/{pg.count}", to_page(pg.number)))
    if pg.has_next:
        row.append(_button(_("Next") + " ›", to_page(pg.number + 1)))
    return [row] if row else []


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
    markup = share(build())
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
    kb = InlineKeyboardBuilder()
    kb.button(text=_("📱 Buy number"), callback_data=MenuCb(action=MenuAction.BUY))
    kb.button(text=_("📋 My orders"), callback_data=MenuCb(action=MenuAction.ORDERS))
    kb.button(text=_("💰 Balance"), callback_data=MenuCb(action=MenuAction.BALANCE))
    kb.button(text=_("❓ Help"), callback_data=MenuCb(action=MenuAction.HELP))
    kb.button(text=_("🌐 Language"), callback_data=MenuCb(action=MenuAction.LANGUAGE))
    kb.adjust(1, 2, 2)
    return kb.as_markup()


def _home_button(kb: InlineKeyboardBuilder) -> None:
    kb.button(text=_("🏠 Menu"), callback_data=MenuCb(action=MenuAction.HOME))


@_per_locale
def back_to_menu() -> InlineKeyboardMarkup:
    kb = InlineKeyboardBuilder()
    _home_button(kb)
    return kb.as_markup()


@_per_locale
def after_no_numbers() -> InlineKeyboardMarkup:
    kb = InlineKeyboardBuilder()
    kb.button(text="🌍 " + _("Another country"), callback_data=MenuCb(action=MenuAction.BUY))
    _home_button(kb)
    kb.adjust(1)
    return kb.as_markup()


def countries(
    items: Sequence[CountryItem],
    page: int,
    price_of: Callable[[int], int],
    currency: str,
    locale: str,
    *,
    filtered: bool,
) -> InlineKeyboardMarkup:
    """`price_of`: what the user pays for a provider cost (the markup in shop mode)."""
    shown, pg = paginate(items, page, COUNTRIES_PER_PAGE)
    prices = tuple(None if i.min_cost is None else price_of(i.min_cost) for i in shown)
    key = ("countries", tuple(shown), prices, pg, currency, locale, filtered)
    return _memoized(
        key, lambda: _countries(shown, prices, pg, currency, locale, filtered=filtered)
    )


def _countries(
    shown: Sequence[CountryItem],
    prices: Sequence[int | None],
    pg: Page,
    currency: str,
    locale: str,
    *,
    filtered: bool,
) -> InlineKeyboardMarkup:
    buttons = []
    for item, price in zip(shown, prices, strict=True):
        label = f"{item.flag} {item.title_in(locale)}"
        if price is not None:
            label += " · " + _("from {price}").format(price=format_money(price, currency))
        buttons.append(_button(label, CountryCb(country=item.id)))
    rows = [buttons[i : i + 2] for i in range(0, len(buttons), 2)]
    nav = _nav_row(pg, lambda n: CountryPageCb(page=n, filtered=filtered))
    home = _button(_("🏠 Menu"), MenuCb(action=MenuAction.HOME))
    return InlineKeyboardMarkup(inline_keyboard=[*rows, *nav, [home]])


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
    rows = [
        [
            _button(
                f"{item.title} · {format_money(minor, currency)} · {item.count}",
                ServiceCb(country=country_id, service=item.id),
            )
        ]
        for item, minor in zip(shown, prices, strict=True)
    ]
    nav = _nav_row(pg, lambda n: ServicePageCb(country=country_id, page=n, filtered=filtered))
    back = _button("↩ " + _("Countries"), MenuCb(action=MenuAction.BUY))
    return InlineKeyboardMarkup(inline_keyboard=[*rows, *nav, [back]])


def confirm(
    country_id: int, service_id: int, cost: int, price: int, *, multi: bool
) -> InlineKeyboardMarkup:
    """Buy with the quote (provider cost and the price shown); `multi` (MULTIPLE_SMS):
    every number takes several SMS, otherwise a second button lets the user ask for it."""

    key = ("confirm", country_id, service_id, cost, price, multi)
    return _memoized(key, lambda: _confirm(country_id, service_id, cost, price, multi=multi))


def _confirm(
    country_id: int, service_id: int, cost: int, price: int, *, multi: bool
) -> InlineKeyboardMarkup:
    def buy(several: bool) -> BuyCb:
        return BuyCb(country=country_id, service=service_id, cost=cost, price=price, multi=several)

    rows = [[_button("✅ " + _("Buy"), buy(multi))]]
    if not multi:
        rows.append([_button("🔁 " + _("Buy (several SMS)"), buy(True))])
    rows.append([_button("↩ " + _("Services"), ServicePageCb(country=country_id, page=0))])
    return InlineKeyboardMarkup(inline_keyboard=rows)


def order_card(order: Order) -> InlineKeyboardMarkup | None:
    kb = InlineKeyboardBuilder()
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
    kb = InlineKeyboardBuilder()
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
    kb = InlineKeyboardBuilder()
    for code, label in LANGUAGES:
        kb.button(text=label, callback_data=LanguageCb(code=code))
    kb.adjust(2)
    return kb.as_markup()
