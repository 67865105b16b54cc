"""/balance: the wallet in shop mode, the operator's SMS-Man balance in private mode."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import Command
from aiogram.types import CallbackQuery, Message

from bot.services.users import UserService
from bot.settings import Settings
from bot.smsman.errors import SmsManError
from bot.ui import keyboards, stars, texts
from bot.ui.callbacks import MenuAction, MenuCb
from bot.ui.screen import show


def router() -> Router:
    r = Router(name="balance")
    r.message.register(on_balance, Command("balance"))
    r.callback_query.register(on_balance, MenuCb.filter(F.action == MenuAction.BALANCE))
    return r


async def on_balance(
    event: Message | CallbackQuery, users: UserService, settings: Settings
) -> None:
    """Show what the user can spend."""
    user_id = event.from_user.id if event.from_user else 0
    if settings.is_shop:
        wallet = await users.wallet(user_id)
        text = texts.balance_shop(wallet.available, wallet.held, settings.currency)
        markup = stars.with_topup(keyboards.back_to_menu(), settings.stars_enabled)
    else:
        markup = keyboards.back_to_menu()
        try:
            text = texts.balance_private(await users.provider_balance())
        except SmsManError:
            text = texts.catalogue_unavailable()
    await show(event, text, markup)
    if isinstance(event, CallbackQuery):
        await event.answer()
