"""aiogram routers, each built by a factory so a second Dispatcher (tests) gets fresh ones."""

from __future__ import annotations

from aiogram import Router

from bot.settings import Settings
from handlers import (
    admin,
    balance,
    buy,
    errors,
    fallback,
    membership,
    orders,
    payments,
    start,
)


def get_routers(settings: Settings) -> list[Router]:
    """The whole tree; the fallback goes last so it only sees what nobody else took.

    Every other router's filters are disjoint (callback prefixes and actions, commands,
    states), so their order only decides how many filters an update passes before its
    own: the menus (most clicks, bench/menu.py) first.
    """
    return [
        membership.router(),
        buy.router(),
        start.router(),
        orders.router(),
        admin.router(settings),
        balance.router(),
        payments.router(),
        fallback.router(),
        errors.router(),
    ]
