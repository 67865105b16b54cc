"""A user blocking or unblocking the bot (my_chat_member)."""

from __future__ import annotations

from aiogram import Router
from aiogram.enums import ChatMemberStatus
from aiogram.types import ChatMemberUpdated

from bot.services.users import UserService


def router() -> Router:
    r = Router(name="membership")
    r.my_chat_member.register(on_membership)
    return r


async def on_membership(event: ChatMemberUpdated, users: UserService) -> None:
    """Record it: pushes stop while blocked, and held-back codes go out on return."""
    kicked = event.new_chat_member.status == ChatMemberStatus.KICKED
    await users.set_blocked(event.from_user.id, kicked)
