"""Show a screen in reply to an update, never sending an edit that changes nothing."""

from __future__ import annotations

import html
import re

from aiogram.exceptions import TelegramBadRequest
from aiogram.types import CallbackQuery, InlineKeyboardMarkup, Message

_TAG = re.compile(r"<[^>]+>")


def plain(text: str) -> str:
    """The text Telegram keeps of our HTML: tags dropped, entities unescaped."""
    return html.unescape(_TAG.sub("", text))


def is_not_modified(error: BaseException) -> bool:
    """Telegram refusing an edit that changes nothing: the screen is already right."""
    return isinstance(error, TelegramBadRequest) and "message is not modified" in error.message


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
            try:
                edited = await message.edit_text(text, reply_markup=markup)
            except TelegramBadRequest as exc:
                # A double tap: the first tap already put this screen there (our copy of
                # the message is the one the tap carried, older than what the chat shows).
                if is_not_modified(exc):
                    return message
                raise
            return edited if isinstance(edited, Message) else message
        if event.from_user is not None and event.bot is not None:
            return await event.bot.send_message(event.from_user.id, text, reply_markup=markup)
        return None
    return await event.answer(text, reply_markup=markup)
