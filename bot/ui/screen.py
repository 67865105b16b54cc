"""Show a screen in reply to an update, never sending an edit that changes nothing."""

from __future__ import annotations

import html
import re

from aiogram.types import CallbackQuery, InlineKeyboardMarkup, Message

_TAG = re.compile(r"<[^>]+>")


def plain(text: str) -> str:
    """The text Telegram keeps of our HTML: tags dropped, entities unescaped."""
    return html.unescape(_TAG.sub("", text))


def _markup_dump(markup: InlineKeyboardMarkup | None) -> object:
    return markup.model_dump(exclude_none=True, exclude_defaults=True) if markup else None


def unchanged(message: Message, text: str, markup: InlineKeyboardMarkup | None) -> bool:
    return (message.text or "") == plain(text).strip() and _markup_dump(
        message.reply_markup
    ) == _markup_dump(markup)


async def show(
    event: Message | CallbackQuery, text: str, markup: InlineKeyboardMarkup | None = None
) -> Message | None:
    """A callback edits its own message in place; a typed message gets a new one."""
    if isinstance(event, CallbackQuery):
        message = event.message
        if isinstance(message, Message):
            if unchanged(message, text, markup):
                return message
            edited = await message.edit_text(text, reply_markup=markup)
            return edited if isinstance(edited, Message) else message
        if event.from_user is not None and event.bot is not None:
            return await event.bot.send_message(event.from_user.id, text, reply_markup=markup)
        return None
    return await event.answer(text, reply_markup=markup)
