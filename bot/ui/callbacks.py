"""CallbackData factories: short prefixes so every button stays far below 64 bytes."""

from __future__ import annotations

from enum import StrEnum

from aiogram.filters.callback_data import CallbackData


class MenuAction(StrEnum):
    HOME = "home"
    BUY = "buy"
    ORDERS = "orders"
    BALANCE = "bal"
    HELP = "help"
    LANGUAGE = "lang"
    TOPUP = "top"


class OrderAction(StrEnum):
    SHOW = "show"
    CANCEL = "cancel"
    FINISH = "fin"
    MORE = "more"


class MenuCb(CallbackData, prefix="m"):
    action: MenuAction


class CountryPageCb(CallbackData, prefix="cp"):
    page: int
    filtered: bool = False


class CountryCb(CallbackData, prefix="c"):
    country: int


class ServicePageCb(CallbackData, prefix="sp"):
    country: int
    page: int
    filtered: bool = False


class ServiceCb(CallbackData, prefix="s"):
    country: int
    service: int


class BuyCb(CallbackData, prefix="b"):
    """The quote travels with the button, in minor units: `cost` is the provider cost
    (get-number's maxPrice), `price` what the confirm screen showed the user."""

    country: int
    service: int
    cost: int
    price: int
    multi: bool = False


class OrderCb(CallbackData, prefix="o"):
    action: OrderAction
    order: int


class LanguageCb(CallbackData, prefix="l"):
    code: str


class TopupCb(CallbackData, prefix="t"):
    """One of TOPUP_STARS; checked against the setting again when pressed."""

    stars: int
