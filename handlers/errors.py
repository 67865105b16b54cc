"""The last line: an update whose handler failed is logged and still answered."""

from __future__ import annotations

import logging

from aiogram import Router
from aiogram.exceptions import TelegramAPIError
from aiogram.types import ErrorEvent

from bot.smsman.errors import SmsManError
from bot.ui import texts
from bot.ui.screen import is_not_modified

log = logging.getLogger(__name__)


def router() -> Router:
    r = Router(name="errors")
    r.errors.register(on_error)
    return r


async def on_error(event: ErrorEvent) -> bool:
    """Log the failure with the user's id; answer a pending callback so no spinner hangs."""
    update = event.update
    source = update.message or update.callback_query
    user = source.from_user if source is not None else None
    if is_not_modified(event.exception):
        # An edit that changed nothing (a double tap): the screen is right, nothing failed.
        log.info("update %s: message not modified", update.update_id)
        await _answer_callback(event, None)
        return True
    log.error(
        "update %s from user %s failed: %s",
        update.update_id,
        getattr(user, "id", None),
        type(event.exception).__name__,
        exc_info=event.exception,
    )
    text = (
        texts.try_again_later()
        if isinstance(event.exception, SmsManError)
        else texts.something_failed()
    )
    if update.callback_query is not None:
        # Even when Telegram refused the handler's call: the answer is another call, and
        # without it the button spins until Telegram gives up.
        await _answer_callback(event, texts.plain_short(text))
    elif update.message is not None and not isinstance(event.exception, TelegramAPIError):
        try:
            await update.message.answer(text)
        except TelegramAPIError:
            pass  # Telegram itself is the problem: the log line is enough
    return True


async def _answer_callback(event: ErrorEvent, text: str | None) -> None:
    callback = event.update.callback_query
    if callback is None:
        return
    try:
        await callback.answer(text)
    except TelegramAPIError as exc:
        # Already answered by the handler before it failed, or too old: nothing more to do.
        log.info("update %s: callback not answered: %s", event.update.update_id, exc.message)
