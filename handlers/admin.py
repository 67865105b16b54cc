"""Admin commands; for anyone outside ADMIN_IDS they do not exist.

Thin: the command's arguments go to AdminService; what it returns, bot/ui/admin renders.
"""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message

from bot.delivery.service import Delivery
from bot.services.admin import AdminService, parse_user_id
from bot.services.stars import StarsService
from bot.settings import Settings
from bot.ui import admin as admin_ui
from bot.ui import stars, texts


def router(settings: Settings) -> Router:
    r = Router(name="admin")
    admins = frozenset(settings.admin_ids)
    # A filter on the router: non-admins fall through to the fallback as if unknown.
    r.message.filter(
        lambda message: message.from_user is not None and message.from_user.id in admins
    )
    r.message.register(on_credit, Command("credit"))
    r.message.register(on_debit, Command("debit"))
    r.message.register(on_user, Command("user"))
    r.message.register(on_stats, Command("stats"))
    r.message.register(on_ban, Command("ban"))
    r.message.register(on_unban, Command("unban"))
    r.message.register(on_markup, Command("markup"))
    r.message.register(on_broadcast, Command("broadcast"))
    r.message.register(on_refund, Command("refund"))
    return r


async def on_broadcast(message: Message, command: CommandObject, delivery: Delivery) -> None:
    """/broadcast (a reply to the message to send, or text after it); /broadcast cancel."""
    args = (command.args or "").strip()
    if args.lower() == "cancel":
        cancelled = await delivery.cancel_broadcasts()
        await message.answer(texts.broadcast_cancelled(len(cancelled)))
        return
    source = message.reply_to_message
    if source is not None and not args:
        if source.text is None:
            await message.answer(texts.broadcast_only_text())
            return
        body = source.html_text
    elif args:
        # The admin's own formatting kept: the HTML of everything after the command.
        body = message.html_text.split(maxsplit=1)[1].strip()
    else:
        await message.answer(texts.broadcast_usage())
        return
    progress = await message.answer(
        texts.broadcast_progress(sent=0, blocked=0, left=0, status="running")
    )
    await delivery.broadcast(message.chat.id, body, progress.message_id)


async def on_credit(
    message: Message, command: CommandObject, admin: AdminService, settings: Settings
) -> None:
    """/credit USER_ID AMOUNT [note]: top up a wallet."""
    result = await admin.credit_command(
        command.args or "", chat_id=message.chat.id, message_id=message.message_id
    )
    await message.answer(admin_ui.reply(result, settings.currency))


async def on_debit(
    message: Message, command: CommandObject, admin: AdminService, settings: Settings
) -> None:
    """/debit USER_ID AMOUNT [note]: take from a wallet."""
    result = await admin.debit_command(
        command.args or "", chat_id=message.chat.id, message_id=message.message_id
    )
    await message.answer(admin_ui.reply(result, settings.currency))


async def on_user(
    message: Message, command: CommandObject, admin: AdminService, settings: Settings
) -> None:
    """/user USER_ID: wallet, orders, the last ledger rows."""
    result = await admin.user_command(command.args or "")
    await message.answer(admin_ui.reply(result, settings.currency))


async def on_stats(message: Message, admin: AdminService, settings: Settings) -> None:
    """/stats: orders, codes, refunds, revenue, margin, the SMS-Man balance."""
    await message.answer(admin_ui.reply(await admin.stats_command(), settings.currency))


async def on_ban(
    message: Message, command: CommandObject, admin: AdminService, settings: Settings
) -> None:
    """/ban USER_ID."""
    result = await admin.ban_command(command.args or "", banned=True)
    await message.answer(admin_ui.reply(result, settings.currency))


async def on_unban(
    message: Message, command: CommandObject, admin: AdminService, settings: Settings
) -> None:
    """/unban USER_ID."""
    result = await admin.ban_command(command.args or "", banned=False)
    await message.answer(admin_ui.reply(result, settings.currency))


async def on_markup(
    message: Message, command: CommandObject, admin: AdminService, settings: Settings
) -> None:
    """/markup PERCENT | reset, or alone to show it."""
    result = await admin.markup_command(command.args or "")
    await message.answer(admin_ui.reply(result, settings.currency))


async def on_refund(
    message: Message, command: CommandObject, stars_service: StarsService, settings: Settings
) -> None:
    """/refund USER_ID CHARGE_ID: a Stars top-up back to the user, if it was not spent."""
    parts = (command.args or "").split()
    user_id = parse_user_id(parts[0]) if len(parts) == 2 else None
    if user_id is None or len(parts[1]) > 256:
        await message.answer(stars.refund_usage())
        return
    result = await stars_service.refund(user_id, parts[1])
    await message.answer(stars.refund_reply(result, user_id, parts[1], settings.currency))
