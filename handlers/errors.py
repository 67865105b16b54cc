"""The last line: an update whose handler failed is logged and still answered."""

from __future__ import annotations

import logging

from aiogram import Router
from aiogram.exceptions import TelegramAPIError
from aiogram.types import ErrorEvent

from bot.ui import texts

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
    log.error(
        "update %s from user %s failed: %s",
        update.update_id,
        getattr(user, "id", None),
        type(event.exception).__name__,
        exc_info=event.exception,
    )
    if isinstance(event.exception, TelegramAPIError):
        return True  # Telegram itself refused: answering through it again would not help
    try:
        if update.callback_query is not None:
            await update.callback_query.answer(texts.plain_short(texts.try_again_later()))
        elif update.message is not None:
            await update.message.answer(texts.try_again_later())
    except TelegramAPIError:
        pass  # already answered, or Telegram itself is the problem: the log line is enough
    return True
