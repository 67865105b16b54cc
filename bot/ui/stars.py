"""Texts and keyboards of the Stars top-up (shop mode with STARS_RATE). HTML, escaped."""

from __future__ import annotations

from collections.abc import Sequence

from aiogram.types import InlineKeyboardMarkup
from aiogram.utils.i18n import gettext as _
from aiogram.utils.keyboard import InlineKeyboardBuilder

from bot.services.money import format_money
from bot.services.stars import RefundOutcome, RefundResult, Verdict
from bot.ui.callbacks import MenuAction, MenuCb, TopupCb
from bot.ui.texts import e
from storage.payments import Payment

STAR = "⭐"


def topup_button_label() -> str:
    return "⭐ " + _("Top up")


def with_topup(markup: InlineKeyboardMarkup | None, enabled: bool) -> InlineKeyboardMarkup | None:
    """`markup` with a "Top up" row first (when top-ups are on)."""
    if not enabled:
        return markup
    kb = InlineKeyboardBuilder()
    kb.button(text=topup_button_label(), callback_data=MenuCb(action=MenuAction.TOPUP))
    if markup is not None:
        kb.attach(InlineKeyboardBuilder(markup=markup.inline_keyboard))
    return kb.as_markup()


def topup_menu(options: Sequence[tuple[int, int]], currency: str) -> InlineKeyboardMarkup:
    """One button per amount: the Stars and what they credit."""
    kb = InlineKeyboardBuilder()
    for stars, amount in options:
        kb.button(
            text=f"{stars} {STAR} → {format_money(amount, currency)}",
            callback_data=TopupCb(stars=stars),
        )
    kb.button(text=_("🏠 Menu"), callback_data=MenuCb(action=MenuAction.HOME))
    kb.adjust(*([1] * len(options)), 1)
    return kb.as_markup()


def topup_text(available: int, currency: str) -> str:
    return _(
        "Top up your wallet with Telegram Stars. Your balance: <b>{available}</b>.\n"
        "Pick an amount; Telegram shows the invoice and takes the Stars.\n"
        "Help with a payment or a refund: /paysupport"
    ).format(available=format_money(available, currency))


def topup_unavailable() -> str:
    return _("Top-ups with Telegram Stars are not available here. Ask the operator.")


def invoice_title(stars: int) -> str:
    return _("Wallet top-up: {stars} Stars").format(stars=stars)


def invoice_description(amount: int, currency: str) -> str:
    return _("{amount} will be added to your wallet in this bot.").format(
        amount=format_money(amount, currency)
    )


def invoice_label(amount: int, currency: str) -> str:
    return _("Top-up {amount}").format(amount=format_money(amount, currency))


def invoice_failed() -> str:
    return _("Telegram did not send the invoice. Nothing was charged; please try again.")


def pre_checkout_refusal(verdict: Verdict) -> str:
    """Shown by Telegram in the payment window: plain text."""
    match verdict:
        case Verdict.DISABLED:
            return _("Top-ups are switched off. Nothing was charged.")
        case Verdict.BANNED:
            return _("Your access to this bot has been suspended. Nothing was charged.")
        case Verdict.OTHER_USER:
            return _("This invoice was made for another user. Use /topup for your own.")
        case Verdict.AMOUNT:
            return _("The amount does not match this invoice. Use /topup for a new one.")
        case Verdict.EXPIRED:
            return _("This invoice has expired. Use /topup for a new one.")
        case _:
            return _("This invoice is not valid. Use /topup for a new one.")


def credited(payment: Payment, available: int) -> str:
    return _(
        "✅ Thank you! {stars} Stars received, {amount} added. Your balance: <b>{available}</b>."
    ).format(
        stars=payment.stars,
        amount=format_money(payment.amount, payment.currency),
        available=format_money(available, payment.currency),
    )


def credited_before(payment: Payment, available: int) -> str:
    return _(
        "This payment ({stars} Stars) is already in your wallet. Your balance: <b>{available}</b>."
    ).format(stars=payment.stars, available=format_money(available, payment.currency))


def not_credited() -> str:
    return _(
        "Your payment arrived, but it could not be added automatically. Please write to "
        "/paysupport; nothing is lost."
    )


def refund_notice(payment: Payment | None, available: int, currency: str) -> str:
    if payment is None:
        return _("Your Stars were refunded.")
    return _(
        "↩ {stars} Stars were refunded to you; {amount} was taken from your wallet. "
        "Your balance: {available}."
    ).format(
        stars=payment.stars,
        amount=format_money(payment.amount, payment.currency),
        available=format_money(available, currency),
    )


def paysupport(user_id: int, admin_hint: bool) -> str:
    text = _(
        "<b>Payments and refunds</b>\n"
        "Top-ups are paid in Telegram Stars and credited to your wallet at once; the same "
        "payment is never credited twice. If a payment did not reach your wallet within a "
        "few minutes, or you want a top-up refunded (only money you have not spent can be "
        "refunded), write to the operator of this bot with your Telegram id "
        "<code>{id}</code> and the date of the payment.\n"
        "Telegram's own support cannot help with purchases made in bots."
    ).format(id=user_id)
    if admin_hint:
        text += "\n\n" + _("Admins: /refund USER_ID CHARGE_ID (the id is in /user USER_ID).")
    return text


def refund_usage() -> str:
    return _(
        "Usage: /refund USER_ID CHARGE_ID\nThe charge ids of a user's top-ups are in /user USER_ID."
    )


def refund_reply(result: RefundResult, user_id: int, charge_id: str, currency: str) -> str:
    payment = result.payment
    fields = {
        "user": user_id,
        "charge": e(charge_id),
        "stars": payment.stars if payment else 0,
        "amount": format_money(payment.amount if payment else 0, currency),
        "available": format_money(result.available, currency),
        "error": e(result.error),
    }
    match result.outcome:
        case RefundOutcome.REFUNDED:
            text = _(
                "Refunded {stars} Stars to <code>{user}</code>; {amount} taken from the "
                "wallet. Their balance: {available}."
            )
        case RefundOutcome.NOT_FOUND:
            text = _("No top-up with charge id <code>{charge}</code>.")
        case RefundOutcome.OTHER_USER:
            text = _("Top-up <code>{charge}</code> was not paid by <code>{user}</code>.")
        case RefundOutcome.ALREADY:
            text = _("Top-up <code>{charge}</code> was refunded already; nothing changed.")
        case RefundOutcome.IN_PROGRESS:
            text = _("A refund of <code>{charge}</code> is in progress already.")
        case RefundOutcome.SPENT:
            text = _(
                "Not refunded: the top-up was {amount}, but <code>{user}</code> has only "
                "{available} available (the rest was spent or is on hold). Nothing changed."
            )
        case RefundOutcome.REFUSED:
            text = _(
                "Telegram refused the refund ({error}). The money stays in the wallet; "
                "nothing changed."
            )
        case _:
            text = _(
                "Telegram did not answer. The refund of <code>{charge}</code> will be settled "
                "within a few minutes; /user {user} shows the outcome."
            )
    return text.format(**fields)
