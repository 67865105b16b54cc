"""Show a screen in reply to an update, never sending an edit that changes nothing."""

from __future__ import annotations

import html
import re
import weakref
from collections import OrderedDict

from aiogram import Bot
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


async def show(
    event: Message | CallbackQuery, text: str, markup: InlineKeyboardMarkup | None = None
) -> Message | None:
    """A callback edits its own message in place; a typed message gets a new one."""
    if isinstance(event, CallbackQuery):
        message = event.message
        if isinstance(message, Message):
            if unchanged(message, text, markup):
                return message
            taps, tap = _recent_taps(event.bot), _tap(message)
            if taps.repeat(tap, (text, markup)):
                return message
            try:
                edited = await message.edit_text(text, reply_markup=markup)
            except TelegramBadRequest as exc:
                taps.forget(tap)
                # A double tap: the first tap already put this screen there (our copy of
                # the message is the one the tap carried, older than what the chat shows).
                if is_not_modified(exc):
                    return message
                raise
            except BaseException:
                taps.forget(tap)
                raise
            return edited if isinstance(edited, Message) else message
        if event.from_user is not None and event.bot is not None:
            return await event.bot.send_message(event.from_user.id, text, reply_markup=markup)
        return None
    return await event.answer(text, reply_markup=markup)
