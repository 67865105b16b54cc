"""Show a screen in reply to an update, never sending an edit that changes nothing."""

from __future__ import annotations

import html
import re
from typing import Any

from aiogram import methods
from aiogram.client.default import Default
from aiogram.exceptions import TelegramBadRequest
from aiogram.methods.base import Response
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


class EditMessageText(methods.EditMessageText):
    """aiogram's editMessageText whose answer is not built into a Message.

    Telegram answers an edit with the whole message, keyboard included; aiogram validates
    it into ~25 pydantic objects (~0.2 ms, 5% of a click's CPU, bench/menu.py) that a
    screen never reads. The same call otherwise, named as aiogram's so the pacer counts it
    (bot/delivery/pacing.py) and its errors (TelegramBadRequest) map as before.
    """

    __returning__ = bool | dict[str, Any]


# pydantic holds a parametrised model weakly: one made per answer after each GC otherwise
# (bot/responses.py).
_EDIT_RESPONSE = Response[bool | dict[str, Any]]


async def show(
    event: Message | CallbackQuery, text: str, markup: InlineKeyboardMarkup | None = None
) -> None:
    """A callback edits its own message in place; a typed message gets a new one."""
    if isinstance(event, CallbackQuery):
        message = event.message
        if isinstance(message, Message):
            if unchanged(message, text, markup):
                return
            edit = EditMessageText(
                chat_id=message.chat.id,
                message_id=message.message_id,
                business_connection_id=message.business_connection_id,
                text=text,
                reply_markup=markup,
                # What Message.edit_text passes: the bot's defaults.
                parse_mode=Default("parse_mode"),
                link_preview_options=Default("link_preview"),
                disable_web_page_preview=Default("link_preview_is_disabled"),
            )
            try:
                await edit.as_(message.bot)
            except TelegramBadRequest as exc:
                # A double tap: the first tap already put this screen there (our copy of
                # the message is the one the tap carried, older than what the chat shows).
                if is_not_modified(exc):
                    return
                raise
            return
        if event.from_user is not None and event.bot is not None:
            await event.bot.send_message(event.from_user.id, text, reply_markup=markup)
        return
    await event.answer(text, reply_markup=markup)
