"""Stars top-ups: /topup, the amount buttons, pre-checkout, successful and refunded payments,
/paysupport. Thin, in the shape of aiogram's examples/stars_invoice.py."""

from __future__ import annotations

import logging

from aiogram import F, Router
from aiogram.exceptions import TelegramAPIError
from aiogram.filters import Command
from aiogram.types import CallbackQuery, LabeledPrice, Message, PreCheckoutQuery

from bot.services.stars import STARS, StarsService, Verdict
from bot.services.users import UserService
from bot.ui import keyboards, stars, texts
from bot.ui.callbacks import MenuAction, MenuCb, TopupCb
from bot.ui.screen import plain, show
from storage.models import User

log = logging.getLogger(__name__)


def router() -> Router:
    r = Router(name="payments")
    r.message.register(on_topup, Command("topup"))
    r.callback_query.register(on_topup, MenuCb.filter(F.action == MenuAction.TOPUP))
    r.callback_query.register(on_amount, TopupCb.filter())
    r.pre_checkout_query.register(on_pre_checkout)
    r.message.register(on_paid, F.successful_payment)
    r.message.register(on_refunded, F.refunded_payment)
    r.message.register(on_paysupport, Command("paysupport"))
    return r


async def on_topup(
    event: Message | CallbackQuery, stars_service: StarsService, users: UserService
) -> None:
    """The amounts offered, each with what it credits."""
    user_id = event.from_user.id if event.from_user else 0
    options = stars_service.options()
    if not options:
        await show(event, stars.topup_unavailable(), keyboards.back_to_menu())
    else:
        wallet = await users.wallet(user_id)
        currency = stars_service.currency
        await show(
            event, stars.topup_text(wallet.available, currency), stars.topup_menu(options, currency)
        )
    if isinstance(event, CallbackQuery):
        await event.answer()


async def on_amount(
    callback: CallbackQuery, callback_data: TopupCb, stars_service: StarsService
) -> None:
    """An amount was pressed: send its Stars invoice (currency XTR, one price)."""
    quote = stars_service.quote(callback.from_user.id, callback_data.stars)
    if quote is None or callback.bot is None:
        await callback.answer(texts.plain_short(texts.outdated()), show_alert=True)
        return
    await callback.answer()
    currency = stars_service.currency
    price = LabeledPrice(label=stars.invoice_label(quote.amount, currency), amount=quote.stars)
    try:
        await callback.bot.send_invoice(
            chat_id=callback.from_user.id,
            title=stars.invoice_title(quote.stars),
            description=stars.invoice_description(quote.amount, currency),
            payload=stars_service.payload(quote),
            currency=STARS,
            prices=[price],
        )
    except TelegramAPIError as exc:
        log.warning("user %s: invoice not sent: %s", callback.from_user.id, type(exc).__name__)
        await callback.bot.send_message(callback.from_user.id, stars.invoice_failed())


async def on_pre_checkout(query: PreCheckoutQuery, stars_service: StarsService, user: User) -> None:
    """Cheap checks only, answered at once (Telegram waits at most 10 seconds)."""
    verdict = await stars_service.pre_checkout(
        user_id=query.from_user.id,
        currency=query.currency,
        total_amount=query.total_amount,
        payload=query.invoice_payload,
        banned=user.banned,
    )
    if verdict is Verdict.OK:
        await query.answer(ok=True)
        return
    log.info("pre-checkout of user %s refused: %s", query.from_user.id, verdict.value)
    await query.answer(ok=False, error_message=plain(stars.pre_checkout_refusal(verdict)))


async def on_paid(message: Message, stars_service: StarsService) -> None:
    """Credit once per telegram_payment_charge_id; the same payment again only says so."""
    paid = message.successful_payment
    if paid is None or message.from_user is None:
        return
    if paid.currency != STARS:
        log.error("payment %s in %s: not ours", paid.telegram_payment_charge_id, paid.currency)
        await message.answer(stars.not_credited())
        return
    result = await stars_service.credit(
        user_id=message.from_user.id,
        charge_id=paid.telegram_payment_charge_id,
        stars=paid.total_amount,
        payload=paid.invoice_payload,
    )
    if result.payment is None:
        text = stars.not_credited()
    elif result.new:
        text = stars.credited(result.payment, result.available)
    else:
        text = stars.credited_before(result.payment, result.available)
    await message.answer(text, reply_markup=keyboards.main_menu())


async def on_refunded(message: Message, stars_service: StarsService, users: UserService) -> None:
    """Telegram's note that Stars went back: recorded, and the user told what it took."""
    refunded = message.refunded_payment
    if refunded is None or message.from_user is None:
        return
    payment = await stars_service.refunded_by_telegram(refunded.telegram_payment_charge_id)
    wallet = await users.wallet(message.from_user.id)
    await message.answer(stars.refund_notice(payment, wallet.available, stars_service.currency))


async def on_paysupport(message: Message, is_admin: bool) -> None:
    """How to get help with a payment or a refund (Telegram requires this command)."""
    user_id = message.from_user.id if message.from_user else 0
    await message.answer(stars.paysupport(user_id, is_admin), reply_markup=keyboards.back_to_menu())
