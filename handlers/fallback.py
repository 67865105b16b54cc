"""What nobody else took: stale or forged buttons, and stray text."""

from __future__ import annotations

from aiogram import Router
from aiogram.types import CallbackQuery, Message

from bot.ui import keyboards, texts


def router() -> Router:
    r = Router(name="fallback")
    r.callback_query.register(on_unknown_callback)
    r.message.register(on_stray_message)
    return r


async def on_unknown_callback(callback: CallbackQuery) -> None:
    """A button we no longer know: say so and offer a fresh menu."""
    await callback.answer(texts.outdated())
    if callback.message is not None:
        await callback.message.answer(texts.outdated(), reply_markup=keyboards.main_menu())


async def on_stray_message(message: Message) -> None:
    """Text outside any step: point back to the menu."""
    await message.answer(
        texts.start_text(message.from_user.first_name if message.from_user else None),
        reply_markup=keyboards.main_menu(),
    )
