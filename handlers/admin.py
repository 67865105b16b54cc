"""Admin commands; for anyone outside ADMIN_IDS they do not exist."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message

from bot.services.admin import AdminService
from bot.settings import Settings


def router(settings: Settings) -> Router:
    r = Router(name="admin")
    admins = frozenset(settings.admin_ids)
    # A filter on the router: non-admins fall through to the fallback as if unknown.
    r.message.filter(
        lambda message: message.from_user is not None and message.from_user.id in admins
    )
    r.message.register(on_credit, Command("credit"))
    return r


async def on_credit(message: Message, command: CommandObject, admin: AdminService) -> None:
    """/credit USER_ID AMOUNT [note]: top up a wallet."""
    await message.answer(await admin.credit_command(command.args or "", message.message_id))
