"""The replies to admin commands (/credit, /debit, /user, /stats, /ban, /unban, /markup).

HTML; everything from outside (what the admin typed, notes, titles, charge ids) escaped.
"""

from __future__ import annotations

import time

from aiogram.utils.i18n import gettext as _
from aiogram.utils.i18n import ngettext

from bot.services.admin import (
    AdminReply,
    BanOutcome,
    MarkupReport,
    Moved,
    Refusal,
    Refused,
    StatsReport,
    UserFlag,
    UserReport,
)
from bot.services.money import MAX_AMOUNT_MINOR, format_money, format_percent
from bot.ui.texts import e, status_label
from storage.models import LedgerKind, LedgerRow, Order
from storage.payments import Payment, PaymentStatus, PaymentSummary
from storage.stats import Summary

TYPED_SHOWN = 32  # characters of a malformed argument quoted back
NOTE_SHOWN = 60  # characters of a ledger note shown by /user


def reply(result: AdminReply, currency: str) -> str:
    """The reply to any admin command's result; `currency` of the wallets."""
    match result:
        case Refused():
            return refused(result, currency)
        case Moved():
            return moved(result, currency)
        case UserReport():
            return user_report(result, currency)
        case StatsReport():
            return stats(result, currency)
        case BanOutcome():
            return ban(result)
        case MarkupReport():
            return markup(result, currency)


# -- refusals ------------------------------------------------------------------------------


def refused(r: Refused, currency: str) -> str:
    typed = e(r.typed[:TYPED_SHOWN])
    match r.reason:
        case Refusal.NOT_SHOP if r.command == "markup":
            return _("The markup applies only in shop mode (ACCESS_MODE=shop).")
        case Refusal.NOT_SHOP:
            return _("Wallets exist only in shop mode (ACCESS_MODE=shop).")
        case Refusal.USAGE:
            return _usage(r.command)
        case Refusal.BAD_USER_ID:
            return _("“{text}” is not a Telegram user id (digits only).").format(text=typed) + (
                "\n" + _usage(r.command)
            )
        case Refusal.BAD_AMOUNT:
            return _(
                "“{text}” is not an amount: write a positive number with at most two "
                "decimals, up to {max}, e.g. 150 or 99.50."
            ).format(text=typed, max=format_money(MAX_AMOUNT_MINOR, currency))
        case Refusal.BAD_PERCENT:
            return _(
                "“{text}” is not a markup: write a number from 0 to 1000 with at most "
                "two decimals, e.g. /markup 12.5"
            ).format(text=typed)
        case Refusal.REPEATED:
            return _("This command was carried out already; nothing changed.")
        case Refusal.SHORT:
            return _(
                "Nothing taken: <code>{user}</code> has only {available} available "
                "(money on hold for waiting orders cannot be taken)."
            ).format(user=r.user_id, available=format_money(r.available, currency))
        case Refusal.NOT_FOUND:
            return _("No user <code>{user}</code>: they have never used the bot.").format(
                user=r.user_id
            )
        case Refusal.ADMIN:
            return _("Admins cannot be banned (they are listed in ADMIN_IDS).")


def _usage(command: str) -> str:
    match command:
        case "user":
            return _("Usage: /user USER_ID\nExample: /user 123456789")
        case "ban":
            return _("Usage: /ban USER_ID\nExample: /ban 123456789")
        case "unban":
            return _("Usage: /unban USER_ID\nExample: /unban 123456789")
        case _:
            return _(
                "Usage: /{command} USER_ID AMOUNT [note]\nExample: /{command} 123456789 150.50"
            ).format(command=command)


# -- /credit, /debit -----------------------------------------------------------------------


def moved(m: Moved, currency: str) -> str:
    fields = {
        "amount": format_money(m.amount, currency),
        "user": m.user_id,
        "balance": format_money(m.available, currency),
    }
    if m.command == "debit":
        return _("Took {amount} from <code>{user}</code>. Their balance: {balance}.").format(
            **fields
        )
    text = _("Credited {amount} to <code>{user}</code>. Their balance: {balance}.").format(**fields)
    if m.newcomer:
        text += "\n" + _("They have not used the bot yet; the money waits for them.")
    return text


# -- /user ---------------------------------------------------------------------------------


def user_report(report: UserReport, currency: str) -> str:
    lines = [_user_header(report)]
    if report.wallet is not None:
        available, held = report.wallet
        lines.append(
            _("Balance: <b>{available}</b>; on hold: {held}").format(
                available=format_money(available, currency), held=format_money(held, currency)
            )
        )
    if report.orders:
        lines.append("")
        lines.append(_("<b>Last orders</b>:"))
        lines += [_order_line(order) for order in report.orders]
    else:
        lines.append(_("No orders."))
    if report.payments:
        lines.append("")
        lines.append(_("<b>Stars top-ups</b>:"))
        lines += [_payment_line(payment) for payment in report.payments]
    if report.ledger:
        lines.append("")
        lines.append(_("<b>Last ledger rows</b>:"))
        lines += [_ledger_line(row, currency) for row in report.ledger]
    lines.append("")
    lines.append(_("Times are UTC."))
    return "\n".join(lines)


def _user_header(report: UserReport) -> str:
    header = _("<b>User</b> <code>{user}</code>, first seen {date}").format(
        user=report.user.id, date=_when(report.user.first_seen)
    )
    if report.flags:
        header += " — " + ", ".join(_flag_label(flag) for flag in report.flags)
    return header


def _flag_label(flag: UserFlag) -> str:
    labels = {
        UserFlag.ADMIN: _("admin"),
        UserFlag.NOT_LISTED: _("not in ALLOWED_USER_IDS"),
        UserFlag.BANNED: _("banned"),
        UserFlag.BLOCKED: _("blocked the bot"),
    }
    return labels[flag]


def _order_line(order: Order) -> str:
    price = format_money(order.price or order.cost, order.currency)
    return (
        f"#{order.id} {_when(order.created_at)} {e(order.service_title)}, "
        f"{e(order.country_title)}: {status_label(order.status)} — {price}"
    )


def _payment_line(payment: Payment) -> str:
    amount = format_money(payment.amount, payment.currency)
    return (
        f"{_when(payment.created_at)} {payment.stars} ⭐ → {amount}: "
        f"{_payment_status_label(payment.status)} — <code>{e(payment.charge_id)}</code>"
    )


def _payment_status_label(status: PaymentStatus) -> str:
    labels = {
        PaymentStatus.CREDITED: _("credited"),
        PaymentStatus.REFUNDING: _("refund in progress"),
        PaymentStatus.REFUNDED: _("refunded"),
    }
    return labels[status]


def _ledger_line(row: LedgerRow, currency: str) -> str:
    amount = ("+" if row.amount > 0 else "") + format_money(row.amount, currency)
    line = f"{_when(row.created_at)} {_kind_label(row.kind)} {amount}"
    if row.order_id is not None:
        line += f" #{row.order_id}"
    if row.note:
        note = row.note if len(row.note) <= NOTE_SHOWN else row.note[: NOTE_SHOWN - 1] + "…"
        line += f" — {e(note)}"
    return line


def _kind_label(kind: LedgerKind) -> str:
    labels = {
        LedgerKind.CREDIT: _("credit"),
        LedgerKind.DEBIT: _("debit"),
        LedgerKind.HOLD: _("hold"),
        LedgerKind.CAPTURE: _("capture"),
        LedgerKind.RELEASE: _("release"),
    }
    return labels[kind]


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


# -- /stats --------------------------------------------------------------------------------


def stats(report: StatsReport, currency: str) -> str:
    lines = [_("<b>Today</b> (since 00:00 UTC)")]
    lines += _period_lines(report.today.orders, report.today.stars, report.shop, currency)
    lines += ["", _("<b>Last 7 days</b>")]
    lines += _period_lines(report.week.orders, report.week.stars, report.shop, currency)
    shown = _("unavailable") if report.balance is None else f"{report.balance:.2f}"
    lines += ["", _("SMS-Man balance: <b>{balance}</b>").format(balance=e(shown))]
    if report.markup is not None:
        lines.append(_("Markup: {markup}%").format(markup=format_percent(report.markup)))
    return "\n".join(lines)


def _period_lines(s: Summary, stars: PaymentSummary | None, shop: bool, currency: str) -> list[str]:
    share = (s.with_code * 100 + s.created // 2) // s.created if s.created else 0
    lines = [
        ngettext(
            "{n} order; {with_code} got a code ({share}%)",
            "{n} orders; {with_code} got a code ({share}%)",
            s.created,
        ).format(n=s.created, with_code=s.with_code, share=share),
        _("Open: {open}; cancelled: {cancelled}; expired: {expired}; failed: {failed}").format(
            open=s.open, cancelled=s.cancelled, expired=s.expired, failed=s.failed
        ),
    ]
    if shop:
        lines.append(
            _("Refunds: {count} ({amount})").format(
                count=s.refunds, amount=format_money(s.refunded, currency)
            )
        )
        lines.append(
            _("Sales: {count}; revenue {revenue}; cost {cost}; margin {margin}").format(
                count=s.sales,
                revenue=format_money(s.revenue, currency),
                cost=format_money(s.cost, currency),
                margin=format_money(s.margin, currency),
            )
        )
    if stars is not None:
        lines.append(_stars_line(stars, currency))
    return lines


def _stars_line(summary: PaymentSummary, currency: str) -> str:
    return _(
        "Stars top-ups: {count} ({stars} Stars, {amount}); refunded: {refunds} ({refunded})"
    ).format(
        count=summary.topups,
        stars=summary.topup_stars,
        amount=format_money(summary.topped_up, currency),
        refunds=summary.refunds,
        refunded=format_money(summary.refunded, currency),
    )


# -- /ban, /unban, /markup -----------------------------------------------------------------


def ban(outcome: BanOutcome) -> str:
    if outcome.banned:
        text = (
            _("<code>{user}</code> is banned: every message and button is refused.")
            if outcome.changed
            else _("<code>{user}</code> was banned already.")
        )
    else:
        text = (
            _("<code>{user}</code> is unbanned.")
            if outcome.changed
            else _("<code>{user}</code> was not banned.")
        )
    return text.format(user=outcome.user_id)


def markup(report: MarkupReport, currency: str) -> str:
    percent = format_percent(report.markup)
    if report.changed:
        return _(
            "Markup: {markup}%. A number that costs {cost} at SMS-Man now sells for {price}."
        ).format(
            markup=percent,
            cost=format_money(report.example_cost, currency),
            price=format_money(report.example_price, currency),
        )
    current = (
        _("Markup: {markup}% (set with /markup).")
        if report.overridden
        else _("Markup: {markup}% (MARKUP_PERCENT).")
    ).format(markup=percent)
    return (
        current
        + "\n"
        + _("Change it: /markup PERCENT, e.g. /markup 15; back to MARKUP_PERCENT: /markup reset")
    )
