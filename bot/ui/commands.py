"""The commands menu (Telegram's "/" list): what users and admins see, in the current
language. bot/delivery/commands.py sets it with Telegram."""

from __future__ import annotations

from aiogram.types import BotCommand
from aiogram.utils.i18n import gettext as _


def user_commands(stars: bool = False) -> list[BotCommand]:
    commands = [
        BotCommand(command="start", description=_("Main menu")),
        BotCommand(command="buy", description=_("Buy a number")),
        BotCommand(command="orders", description=_("My orders")),
        BotCommand(command="balance", description=_("Balance")),
        BotCommand(command="help", description=_("How it works")),
        BotCommand(command="language", description=_("Language")),
    ]
    if stars:
        commands += [
            BotCommand(command="topup", description=_("Top up with Telegram Stars")),
            BotCommand(command="paysupport", description=_("Help with payments and refunds")),
        ]
    return commands


def admin_commands(shop: bool) -> list[BotCommand]:
    commands = [
        BotCommand(command="stats", description=_("Sales statistics")),
        BotCommand(command="user", description=_("A user's wallet and orders")),
        BotCommand(command="ban", description=_("Ban a user")),
        BotCommand(command="unban", description=_("Unban a user")),
    ]
    if shop:
        commands += [
            BotCommand(command="credit", description=_("Top up a wallet")),
            BotCommand(command="debit", description=_("Take from a wallet")),
            BotCommand(command="markup", description=_("Set the markup")),
            BotCommand(command="refund", description=_("Refund a Stars top-up")),
        ]
    return commands
