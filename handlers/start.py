"""/start, /help, the main menu and /language."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import Command, CommandStart
from aiogram.fsm.context import FSMContext
from aiogram.types import CallbackQuery, Message
from aiogram.utils.i18n import I18n

from bot.delivery.commands import CommandsMenu
from bot.services.users import UserService
from bot.ui import keyboards, texts
from bot.ui.callbacks import LanguageCb, MenuAction, MenuCb
from bot.ui.screen import show
from handlers.conversation import put


def router() -> Router:
    r = Router(name="start")
    r.message.register(on_start, CommandStart())
    r.message.register(on_help, Command("help"))
    r.message.register(on_language, Command("language"))
    r.callback_query.register(on_home, MenuCb.filter(F.action == MenuAction.HOME))
    r.callback_query.register(on_help_button, MenuCb.filter(F.action == MenuAction.HELP))
    r.callback_query.register(on_language_button, MenuCb.filter(F.action == MenuAction.LANGUAGE))
    r.callback_query.register(on_language_chosen, LanguageCb.filter())
    return r


async def on_start(
    message: Message, state: FSMContext, is_admin: bool, commands: CommandsMenu
) -> None:
    """Greet and show the main menu."""
    await put(state, None, {})  # aiogram's clear() is two writes
    if is_admin and message.bot is not None:
        await commands.setup_admin(message.bot, message.chat.id)
    name = message.from_user.first_name if message.from_user else None
    await message.answer(texts.start_text(name), reply_markup=keyboards.main_menu())


async def on_home(callback: CallbackQuery, state: FSMContext) -> None:
    """Back to the main menu, in place."""
    await put(state, None, {})  # aiogram's clear() is two writes
    await show(callback, texts.start_text(callback.from_user.first_name), keyboards.main_menu())
    await callback.answer()


async def on_help(message: Message) -> None:
    """How the bot works."""
    await message.answer(texts.help_text(), reply_markup=keyboards.back_to_menu())


async def on_help_button(callback: CallbackQuery) -> None:
    """How the bot works, from the menu."""
    await show(callback, texts.help_text(), keyboards.back_to_menu())
    await callback.answer()


async def on_language(message: Message) -> None:
    """Offer the languages."""
    await message.answer(texts.choose_language(), reply_markup=keyboards.languages())


async def on_language_button(callback: CallbackQuery) -> None:
    """Offer the languages, from the menu."""
    await show(callback, texts.choose_language(), keyboards.languages())
    await callback.answer()


async def on_language_chosen(
    callback: CallbackQuery, callback_data: LanguageCb, users: UserService, i18n: I18n
) -> None:
    """Store the language and answer in it."""
    if not await users.set_language(callback.from_user.id, callback_data.code):
        await callback.answer(texts.outdated())
        return
    with i18n.use_locale(callback_data.code):
        await show(callback, texts.language_set(), keyboards.main_menu())
        await callback.answer()
