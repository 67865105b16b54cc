"""The commands menu (Telegram's "/" list): what users and admins see, in each language,
and setting it with Telegram. Which admins to set it for is the admin service's call."""

from __future__ import annotations

import logging

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError
from aiogram.types import BotCommand, BotCommandScopeChat, BotCommandScopeDefault
from aiogram.utils.i18n import I18n
from aiogram.utils.i18n import gettext as _

from bot.locale import SUPPORTED_LOCALES
from bot.services.admin import AdminService
from bot.settings import Settings

log = logging.getLogger(__name__)


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


class CommandsMenu:
    def __init__(self, settings: Settings, i18n: I18n, admin: AdminService) -> None:
        self._settings = settings
        self._i18n = i18n
        self._admin = admin

    async def setup(self, bot: Bot) -> None:
        """/start, /buy, /orders, /balance, /help for all; admins also see theirs.

        Telegram answers "chat not found" for a chat that never talked to the bot, so an
        admin's own list is set here only if we know them, and otherwise on their /start.
        """
        for locale in SUPPORTED_LOCALES:
            with self._i18n.use_locale(locale):
                commands = user_commands(self._settings.stars_enabled)
            code = None if locale == "en" else locale
            await bot.set_my_commands(commands, scope=BotCommandScopeDefault(), language_code=code)
        for admin in await self._admin.reachable_admins():
            await self.setup_admin(bot, admin.id)

    async def setup_admin(self, bot: Bot, admin_id: int) -> None:
        with self._i18n.use_locale(await self._admin.locale_of(admin_id)):
            commands = user_commands(self._settings.stars_enabled) + admin_commands(
                self._settings.is_shop
            )
        try:
            await bot.set_my_commands(commands, scope=BotCommandScopeChat(chat_id=admin_id))
        except TelegramAPIError as exc:
            log.warning("could not set the admin commands of %s: %s", admin_id, exc.message)
