"""Outer middlewares: in-flight tracking, updates acted on once, the user row, the locale
and access control."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware, Dispatcher
from aiogram.enums import ChatType
from aiogram.types import Chat, TelegramObject, Update
from aiogram.types import User as TgUser
from aiogram.utils.i18n import I18n

from bot.services.access import Access, Verdict
from bot.services.users import UserService
from bot.ui import texts
from bot.ui.i18n import pick_locale

log = logging.getLogger(__name__)

Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]]


class InFlight(BaseMiddleware):
    """Counts updates being handled, so shutdown can let them finish."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        self._count += 1
        self._idle.clear()
        try:
            return await handler(event, data)
        finally:
            self._count -= 1
            if self._count == 0:
                self._idle.set()

    async def wait(self, timeout: float) -> None:
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for may swallow a cancellation
            # that arrives just as the wait ends.
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            log.warning("%s updates still running at shutdown", self._count)


class OnceOnly(BaseMiddleware):
    """An update Telegram hands out twice (after a crash, or a webhook retry) is acted on
    once, so a redelivered callback is neither re-run nor re-answered.

    Webhook mode (`durable`): the update_id is recorded in the database (bounded) before it
    is handled, since Telegram retries a POST it got no answer to, maybe on another replica.
    Long polling: the ids are remembered in this process only. Telegram hands an update out
    again until a getUpdates with a higher offset confirms it, and aiogram issues that next
    getUpdates before the batch's handlers start (they are tasks; the poll loop goes on
    first): a process that dies with a batch unconfirmed has not acted on it. A row per
    update bought nothing there and cost a write per click (~10% of the CPU, bench/menu.py).
    """

    def __init__(self, users: UserService, *, durable: bool, remember: int = 10_000) -> None:
        self._users = users
        self._durable = durable
        self._remember = remember
        self._seen: set[int] = set()
        self._order: deque[int] = deque()

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        if isinstance(event, Update) and not await self._first_time(event.update_id):
            log.info("update %s handed out again: ignored", event.update_id)
            return None
        return await handler(event, data)

    async def _first_time(self, update_id: int) -> bool:
        if self._durable:
            return await self._users.first_time(update_id)
        if update_id in self._seen:
            return False
        self._seen.add(update_id)
        self._order.append(update_id)
        if len(self._order) > self._remember:
            self._seen.discard(self._order.popleft())
        return True


class UserAccess(BaseMiddleware):
    """Records the user, picks their language and refuses those who may not use the bot.

    A refused update never reaches a handler, so it can never cause a call to SMS-Man.
    """

    def __init__(self, users: UserService, access: Access, i18n: I18n) -> None:
        self._users = users
        self._access = access
        self._i18n = i18n

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        tg_user: TgUser | None = data.get("event_from_user")
        if tg_user is None or tg_user.is_bot:
            return None
        if isinstance(event, Update) and event.my_chat_member is not None:
            # Blocked or unblocked, or added to a group (handlers/membership.py): no access
            # check, and it must not count as a return.
            return await handler(event, data)
        chat: Chat | None = data.get("event_chat")
        if chat is not None and chat.type != ChatType.PRIVATE:
            return None  # the bot answers nothing in groups and channels (it leaves them)
        user = await self._users.touch(tg_user.id, tg_user.language_code)
        locale = pick_locale(user.language, tg_user.language_code)
        data["user"] = user
        data["locale"] = locale
        data["is_admin"] = self._access.is_admin(tg_user.id)
        with self._i18n.use_locale(locale):
            verdict = self._access.verdict(tg_user.id, user)
            if verdict is not Verdict.ALLOWED and not _money_notice(event):
                await self._refuse(event, verdict, tg_user.id)
                return None
            return await handler(event, data)

    async def _refuse(self, event: TelegramObject, verdict: Verdict, user_id: int) -> None:
        text = texts.refused_private(user_id) if verdict is Verdict.NOT_LISTED else texts.banned()
        if not isinstance(event, Update):
            return
        if event.callback_query is not None:
            await event.callback_query.answer(texts.plain_short(text), show_alert=True)
        elif event.pre_checkout_query is not None:  # refused now, not by a 10 s timeout
            await event.pre_checkout_query.answer(ok=False, error_message=texts.plain_short(text))
        elif event.message is not None:
            await event.message.answer(text)


def _money_notice(event: TelegramObject) -> bool:
    """Telegram telling us Stars moved: recorded for anyone, banned or not."""
    message = event.message if isinstance(event, Update) else None
    return message is not None and (
        message.successful_payment is not None or message.refunded_payment is not None
    )


def setup_middlewares(
    dp: Dispatcher,
    *,
    users: UserService,
    access: Access,
    i18n: I18n,
    in_flight: InFlight,
    webhook: bool,
) -> None:
    """`webhook`: updates arrive by webhook (their ids recorded in the database)."""
    dp.update.outer_middleware(in_flight)
    dp.update.outer_middleware(OnceOnly(users, durable=webhook))
    dp.update.outer_middleware(UserAccess(users, access, i18n))
