"""The bot's own membership (my_chat_member): a user blocking it, or a group adding it."""

from __future__ import annotations

import logging

from aiogram import Bot, Router
from aiogram.enums import ChatMemberStatus, ChatType
from aiogram.exceptions import TelegramAPIError
from aiogram.types import ChatMemberUpdated

from bot.services.users import UserService

log = logging.getLogger(__name__)

# Statuses that mean the bot is in the chat.
_PRESENT = frozenset(
    {ChatMemberStatus.MEMBER, ChatMemberStatus.ADMINISTRATOR, ChatMemberStatus.RESTRICTED}
)


def router() -> Router:
    r = Router(name="membership")
    r.my_chat_member.register(on_membership)
    return r


async def on_membership(event: ChatMemberUpdated, users: UserService, bot: Bot) -> None:
    """A private chat: record it (pushes stop while blocked, held-back codes go out on
    return). A group or channel: the bot is for private chats only, so it leaves; and the
    person who added or removed it has not blocked anything."""
    if event.chat.type != ChatType.PRIVATE:
        if event.new_chat_member.status in _PRESENT:
            log.info("added to %s %s: leaving", event.chat.type, event.chat.id)
            try:
                await bot.leave_chat(event.chat.id)
            except TelegramAPIError as exc:
                log.warning("could not leave chat %s: %s", event.chat.id, exc.message)
        return
    kicked = event.new_chat_member.status == ChatMemberStatus.KICKED
    await users.set_blocked(event.from_user.id, kicked)
