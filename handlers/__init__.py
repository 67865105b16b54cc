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
    """The whole tree; the fallback goes last so it only sees what nobody else took."""
    return [
        membership.router(),
        start.router(),
        admin.router(settings),
        buy.router(),
        orders.router(),
        balance.router(),
        payments.router(),
        fallback.router(),
        errors.router(),
    ]
