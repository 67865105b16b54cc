"""The operator's side: commands menu, alerts to admins, the low-balance watch."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError
from aiogram.types import BotCommand, BotCommandScopeChat, BotCommandScopeDefault
from aiogram.utils.i18n import I18n
from aiogram.utils.i18n import gettext as _

from bot.notify import Notifier
from bot.services.access import Access
from bot.services.money import AmountError, format_money, parse_amount
from bot.services.pricing import Pricing
from bot.settings import Settings
from bot.smsman.client import SmsManClient
from bot.smsman.errors import SmsManError
from bot.ui import texts
from bot.ui.i18n import SUPPORTED_LOCALES
from storage.db import Database

log = logging.getLogger(__name__)

LOW_BALANCE_KEY = "low_balance_alerted"
BALANCE_CHECK_EVERY = 300.0


def user_commands() -> list[BotCommand]:
    return [
        BotCommand(command="start", description=_("Main menu")),
        BotCommand(command="buy", description=_("Buy a number")),
        BotCommand(command="orders", description=_("My orders")),
        BotCommand(command="balance", description=_("Balance")),
        BotCommand(command="help", description=_("How it works")),
        BotCommand(command="language", description=_("Language")),
    ]


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
        ]
    return commands


class AdminService:
    def __init__(
        self,
        *,
        settings: Settings,
        db: Database,
        client: SmsManClient,
        access: Access,
        pricing: Pricing,
        notifier: Notifier,
        i18n: I18n,
    ) -> None:
        self._settings = settings
        self._db = db
        self._client = client
        self._access = access
        self._pricing = pricing
        self._notifier = notifier
        self._i18n = i18n

    async def credit_command(self, args: str, message_id: int) -> str:
        """/credit USER_ID AMOUNT [note]; the command's message id keys it, so a resent
        update credits once."""
        if not self._settings.is_shop:
            return _("Wallets exist only in shop mode.")
        parts = args.split(maxsplit=2)
        if len(parts) < 2 or not parts[0].isdigit() or len(parts[0]) > 15:
            return _("Usage: /credit USER_ID AMOUNT [note]")
        try:
            amount = parse_amount(parts[1])
        except AmountError:
            return _("The amount must be a positive number with at most two decimals.")
        user_id = int(parts[0])
        note = parts[2][:200] if len(parts) > 2 else None
        row = await self._db.wallet.credit(
            user_id, amount, note=note, idempotency_key=f"credit:{message_id}:{user_id}"
        )
        available, _held = await self._db.wallet.balance(user_id)
        if row is None:
            return _("Already done.")
        return _("Credited {amount} to {user}. Balance: {balance}.").format(
            amount=format_money(amount, self._settings.currency),
            user=user_id,
            balance=format_money(available, self._settings.currency),
        )

    async def setup_commands(self, bot: Bot) -> None:
        """/start, /buy, /orders, /balance, /help for all; admins also see theirs.

        Telegram answers "chat not found" for a chat that never talked to the bot, so an
        admin's own list is set here only if we know them, and otherwise on their /start.
        """
        for locale in SUPPORTED_LOCALES:
            with self._i18n.use_locale(locale):
                commands = user_commands()
            code = None if locale == "en" else locale
            await bot.set_my_commands(commands, scope=BotCommandScopeDefault(), language_code=code)
        for admin_id in self._access.admin_ids:
            if await self._db.users.get(admin_id) is not None:
                await self.setup_admin_commands(bot, admin_id)

    async def setup_admin_commands(self, bot: Bot, admin_id: int) -> None:
        with self._i18n.use_locale(await self._locale(admin_id)):
            commands = user_commands() + admin_commands(self._settings.is_shop)
        try:
            await bot.set_my_commands(commands, scope=BotCommandScopeChat(chat_id=admin_id))
        except TelegramAPIError as exc:
            log.warning("could not set the admin commands of %s: %s", admin_id, exc.message)

    async def alert(self, kind: str) -> None:
        """Tell every admin; in their own language when we know it."""
        for admin_id in self._access.admin_ids:
            with self._i18n.use_locale(await self._locale(admin_id)):
                text = texts.provider_balance_alert() if kind == "provider_balance" else kind
            await self._notifier.send(admin_id, text)

    async def _locale(self, user_id: int) -> str:
        user = await self._db.users.get(user_id)
        return user.language if user and user.language in SUPPORTED_LOCALES else "en"

    async def check_balance(self) -> None:
        """Admins hear of a low SMS-Man balance once per crossing of the threshold."""
        threshold = self._settings.low_balance_alert
        if threshold <= 0:
            return
        try:
            balance = (await self._client.get_balance()).balance
        except SmsManError as exc:
            log.warning("balance check failed: %s", exc.code)
            return
        alerted = await self._db.kv.get(LOW_BALANCE_KEY) == "1"
        if balance < threshold and not alerted:
            await self._db.kv.set(LOW_BALANCE_KEY, "1")
            for admin_id in self._access.admin_ids:
                with self._i18n.use_locale(await self._locale(admin_id)):
                    text = texts.low_balance_alert(f"{balance:.2f}", f"{threshold:.2f}")
                await self._notifier.send(admin_id, text)
        elif balance >= threshold and alerted:
            await self._db.kv.set(LOW_BALANCE_KEY, "0")

    async def watch_balance(self, every: float = BALANCE_CHECK_EVERY) -> None:
        if self._settings.low_balance_alert <= Decimal(0):
            return
        while True:
            await self.check_balance()
            await asyncio.sleep(every)
