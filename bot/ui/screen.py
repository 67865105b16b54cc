"""Show a screen in reply to an update, never sending an edit that changes nothing."""

from __future__ import annotations

import html
import re
import weakref
from collections import OrderedDict
from typing import Any

from aiogram import Bot, methods
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


Screen = tuple[str, InlineKeyboardMarkup | None]
# A tap is known by the message as the tap carried it: two taps carrying the same state of
# the same message, asking for the same screen, are one double tap.
Tap = tuple[int, int, int | None, str]


class _RecentTaps:
    """The screens the last taps asked for, so a double tap's second edit (which Telegram
    would refuse as "message is not modified") is never sent. Only an exact repeat is
    skipped: a tap carrying a newer state of the message (another edit came in between)
    is a new tap and edits again."""

    SIZE = 256

    def __init__(self) -> None:
        self._taps: OrderedDict[Tap, Screen] = OrderedDict()

    def repeat(self, tap: Tap, screen: Screen) -> bool:
        if self._taps.get(tap) == screen:
            return True
        self._taps[tap] = screen
        self._taps.move_to_end(tap)
        if len(self._taps) > self.SIZE:
            self._taps.popitem(last=False)
        return False

    def forget(self, tap: Tap) -> None:
        self._taps.pop(tap, None)


_recent: dict[int, _RecentTaps] = {}  # per Bot object (tests run several in one process)


def _recent_taps(bot: Bot | None) -> _RecentTaps:
    key = id(bot)
    taps = _recent.get(key)
    if taps is None:
        taps = _recent[key] = _RecentTaps()
        if bot is not None:
            weakref.finalize(bot, _recent.pop, key, None)
    return taps


def _tap(message: Message) -> Tap:
    return (message.chat.id, message.message_id, message.edit_date, message.text or "")


class EditMessageText(methods.EditMessageText):
    """aiogram's editMessageText whose answer is not built into a Message.

    Telegram answers an edit with the whole message, keyboard included; aiogram validates
    it into ~25 pydantic objects (~0.15 ms, 5% of a click's CPU, bench/menu.py) that a
    screen never reads. The same call otherwise, named as aiogram's so the pacer counts it
    (bot/delivery/pacing.py) and its errors (TelegramBadRequest) map as before.
    """

    __returning__ = bool | dict[str, Any]


# pydantic holds a parametrised model weakly: one made per answer after each GC otherwise
# (bot/responses.py).
_EDIT_RESPONSE = Response[bool | dict[str, Any]]


def _edit(message: Message, text: str, markup: InlineKeyboardMarkup | None) -> EditMessageText:
    """What `message.edit_text(text, reply_markup=markup)` sends."""
    return EditMessageText(
        chat_id=message.chat.id,
        message_id=message.message_id,
        business_connection_id=message.business_connection_id,
        text=text,
        reply_markup=markup,
        parse_mode=Default("parse_mode"),
        link_preview_options=Default("link_preview"),
        disable_web_page_preview=Default("link_preview_is_disabled"),
    ).as_(message.bot)


async def show(
    event: Message | CallbackQuery, text: str, markup: InlineKeyboardMarkup | None = None
) -> None:
    """A callback edits its own message in place; a typed message gets a new one."""
    if isinstance(event, CallbackQuery):
        message = event.message
        if isinstance(message, Message):
            if unchanged(message, text, markup):
                return
            taps, tap = _recent_taps(event.bot), _tap(message)
            if taps.repeat(tap, (text, markup)):
                return
            try:
                await _edit(message, text, markup)
            except TelegramBadRequest as exc:
                taps.forget(tap)
                # A double tap: the first tap already put this screen there (our copy of
                # the message is the one the tap carried, older than what the chat shows).
                if is_not_modified(exc):
                    return
                raise
            except BaseException:
                taps.forget(tap)
                raise
            return
        if event.from_user is not None and event.bot is not None:
            await event.bot.send_message(event.from_user.id, text, reply_markup=markup)
        return
    await event.answer(text, reply_markup=markup)
