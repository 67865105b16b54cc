"""Inline keyboards, built with aiogram's InlineKeyboardBuilder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from aiogram.types import InlineKeyboardMarkup
from aiogram.utils.i18n import gettext as _
from aiogram.utils.keyboard import InlineKeyboardBuilder

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


def main_menu() -> InlineKeyboardMarkup:
    kb = InlineKeyboardBuilder()
    kb.button(text=_("📱 Buy number"), callback_data=MenuCb(action=MenuAction.BUY))
    kb.button(text=_("📋 My orders"), callback_data=MenuCb(action=MenuAction.ORDERS))
    kb.button(text=_("💰 Balance"), callback_data=MenuCb(action=MenuAction.BALANCE))
    kb.button(text=_("❓ Help"), callback_data=MenuCb(action=MenuAction.HELP))
    kb.adjust(1, 2, 1)
    return kb.as_markup()


def _home_button(kb: InlineKeyboardBuilder) -> None:
    kb.button(text=_("🏠 Menu"), callback_data=MenuCb(action=MenuAction.HOME))


def back_to_menu() -> InlineKeyboardMarkup:
    kb = InlineKeyboardBuilder()
    _home_button(kb)
    return kb.as_markup()


def after_no_numbers() -> InlineKeyboardMarkup:
    kb = InlineKeyboardBuilder()
    kb.button(text="🌍 " + _("Another country"), callback_data=MenuCb(action=MenuAction.BUY))
    _home_button(kb)
    kb.adjust(1)
    return kb.as_markup()


def countries(
    items: Sequence[CountryItem], page: int, currency: str, locale: str, *, filtered: bool
) -> InlineKeyboardMarkup:
    shown, pg = paginate(items, page, COUNTRIES_PER_PAGE)
    kb = InlineKeyboardBuilder()
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
    kb = InlineKeyboardBuilder()
    for item in shown:
        price = format_money(price_of[item.id], currency)
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
    kb = InlineKeyboardBuilder()
    kb.button(
        text="✅ " + _("Buy"),
        callback_data=BuyCb(country=country_id, service=service_id, cost=cost, multi=multi),
    )
    kb.button(text="↩ " + _("Services"), callback_data=ServicePageCb(country=country_id, page=0))
    kb.adjust(1)
    return kb.as_markup()


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


def languages() -> InlineKeyboardMarkup:
    kb = InlineKeyboardBuilder()
    for code, label in LANGUAGES:
        kb.button(text=label, callback_data=LanguageCb(code=code))
    kb.adjust(2)
    return kb.as_markup()
