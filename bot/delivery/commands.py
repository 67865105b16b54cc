"""Setting the commands menu with Telegram: everyone's in each language at start, and an
admin's own (theirs added) in their language. Which admins, the caller says."""

from __future__ import annotations

import logging

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError
from aiogram.types import BotCommandScopeChat, BotCommandScopeDefault
from aiogram.utils.i18n import I18n

from bot.locale import SUPPORTED_LOCALES
from bot.settings import Settings
from bot.ui.commands import admin_commands, user_commands

log = logging.getLogger(__name__)


class CommandsMenu:
    def __init__(self, settings: Settings, i18n: I18n) -> None:
        self._settings = settings
        self._i18n = i18n

    async def setup(self, bot: Bot, admins: list[tuple[int, str]]) -> None:
        """/start, /buy, /orders, /balance, /help for all, in each language; then each of
        `admins` (id, language) gets theirs.

        Telegram answers "chat not found" for a chat that never talked to the bot, so the
        caller names only admins the bot may write to; the others get theirs on /start.
        """
        for locale in SUPPORTED_LOCALES:
            with self._i18n.use_locale(locale):
                commands = user_commands(self._settings.stars_enabled)
            code = None if locale == "en" else locale
            await bot.set_my_commands(commands, scope=BotCommandScopeDefault(), language_code=code)
        for admin_id, locale in admins:
            with self._i18n.use_locale(locale):
                await self.setup_admin(bot, admin_id)

    async def setup_admin(self, bot: Bot, admin_id: int) -> None:
        """The admin's own menu, in the current language (the update's, on /start)."""
        commands = user_commands(self._settings.stars_enabled) + admin_commands(
            self._settings.is_shop
        )
        try:
            await bot.set_my_commands(commands, scope=BotCommandScopeChat(chat_id=admin_id))
        except TelegramAPIError as exc:
            log.warning("could not set the admin commands of %s: %s", admin_id, exc.message)
