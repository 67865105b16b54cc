"""Message texts. Everything from outside (titles, numbers, codes) is escaped here."""

from __future__ import annotations

import time
from collections.abc import Sequence
from html import escape

from aiogram.utils.i18n import gettext as _
from aiogram.utils.i18n import ngettext

from bot.services.catalogue import CountryItem, Offer
from bot.services.money import format_money
from storage.models import Code, Order, OrderStatus


def e(value: object) -> str:
    return escape(str(value), quote=False)


def start_text(first_name: str | None) -> str:
    name = e(first_name or "")
    return _(
        "Hi, {name}! I rent virtual phone numbers for receiving SMS codes.\n"
        "Pick a country, then a service, and the code arrives right here."
    ).format(name=name)


def help_text() -> str:
    return _(
        "<b>How it works</b>\n"
        "1. Tap <b>Buy number</b>, pick a country and a service.\n"
        "2. Check the price and tap <b>Buy</b>.\n"
        "3. Use the number where you need a code; the code arrives in this chat.\n"
        "No code in time? The order is cancelled and nothing is charged.\n\n"
        "/buy — buy a number\n/orders — my orders\n/balance — balance\n"
        "/language — language"
    )


def refused_private(user_id: int) -> str:
    return _(
        "Sorry, this bot is private. Ask its owner to add your Telegram id: <code>{id}</code>"
    ).format(id=user_id)


def banned() -> str:
    return _("Your access to this bot has been suspended.")


def choose_country(total: int, query: str | None) -> str:
    if query:
        return _("Countries matching “{query}”: {count}. Pick one:").format(
            query=e(query), count=total
        )
    return _("Pick a country (or type its name to search):")


def choose_service(country: CountryItem, locale: str, query: str | None) -> str:
    title = e(country.title_in(locale))
    if query:
        return _("{flag} {country}: services matching “{query}”. Pick one:").format(
            flag=country.flag, country=title, query=e(query)
        )
    return _("{flag} {country}: pick a service (or type its name to search):").format(
        flag=country.flag, country=title
    )


def nothing_found(query: str) -> str:
    return _("Nothing matches “{query}”. Try another name.").format(query=e(query))


def no_countries() -> str:
    return _("No numbers are on sale right now. Please try again later.")


def no_services() -> str:
    return _("No services are on sale in this country right now.")


def catalogue_unavailable() -> str:
    return _("The number provider does not answer right now. Please try again in a minute.")


def confirm_text(offer: Offer, price: int, currency: str, locale: str) -> str:
    return _(
        "<b>Check your order</b>\n"
        "Country: {flag} {country}\n"
        "Service: {service}\n"
        "Price: <b>{price}</b>\n"
        "In stock: {count}\n\n"
        "Nothing is charged if no code comes."
    ).format(
        flag=offer.country.flag,
        country=e(offer.country.title_in(locale)),
        service=e(offer.service.title),
        price=format_money(price, currency),
        count=offer.service.count,
    )


def status_label(status: OrderStatus) -> str:
    labels = {
        OrderStatus.PURCHASING: _("buying…"),
        OrderStatus.WAITING: _("waiting for the SMS"),
        OrderStatus.RECEIVED: _("code received"),
        OrderStatus.FINISHED: _("finished"),
        OrderStatus.CANCELLED: _("cancelled, not charged"),
        OrderStatus.EXPIRED: _("expired, not charged"),
        OrderStatus.FAILED: _("failed, not charged"),
    }
    return labels[status]


def minutes_left(seconds: float) -> str:
    minutes = max(0, int(seconds + 59) // 60)
    return ngettext("{n} minute", "{n} minutes", minutes).format(n=minutes)


def phone(number: str | None) -> str:
    if not number:
        return "—"
    digits = number.lstrip("+")
    return f"<code>+{e(digits)}</code>"


def order_card(
    order: Order, codes: Sequence[Code], now: float | None = None, *, country: str | None = None
) -> str:
    """`country`: the name in the reader's language (CLDR); else the provider's title."""
    now = time.time() if now is None else now
    lines = [
        _("<b>Order #{id}</b>").format(id=order.id),
        _("Number: {number}").format(number=phone(order.number)),
        _("Country: {country}").format(country=e(country or order.country_title)),
        _("Service: {service}").format(service=e(order.service_title)),
        _("Price: {price}").format(price=format_money(order.price or order.cost, order.currency)),
        _("Status: {status}").format(status=status_label(order.status)),
    ]
    if order.status is OrderStatus.WAITING and order.expires_at is not None:
        lines.append(_("Time left: {left}").format(left=minutes_left(order.expires_at - now)))
    if codes:
        shown = ", ".join(f"<code>{e(c.code)}</code>" for c in codes)
        # Not ngettext: a label, not a count (Russian plural rules would say "Код" for 21).
        label = _("Code: {codes}") if len(codes) == 1 else _("Codes: {codes}")
        lines.append(label.format(codes=shown))
    if order.status is OrderStatus.WAITING:
        lines.append(_("The code will appear here as soon as it arrives."))
    return "\n".join(lines)


def code_message(order: Order, code: str) -> str:
    return _("🔔 Code for {service} on {number}:\n\n<code>{code}</code>").format(
        service=e(order.service_title), number=phone(order.number), code=e(code)
    )


def orders_text(open_orders: Sequence[Order], finished: Sequence[tuple[Order, list[Code]]]) -> str:
    if not open_orders and not finished:
        return _("You have no orders yet.")
    lines: list[str] = []
    if open_orders:
        lines.append(_("<b>Waiting</b> (tap one to bring its card back):"))
        for order in open_orders:
            lines.append(f"#{order.id} {phone(order.number)} {e(order.service_title)}")
    if finished:
        lines.append(_("<b>Recent</b>:"))
        for order, codes in finished:
            shown = ", ".join(f"<code>{e(c.code)}</code>" for c in codes) or "—"
            lines.append(
                f"#{order.id} {phone(order.number)} {e(order.service_title)}: "
                f"{status_label(order.status)}; {shown}"
            )
    return "\n".join(lines)


def balance_shop(available: int, held: int, currency: str) -> str:
    text = _("Your balance: <b>{available}</b>").format(available=format_money(available, currency))
    if held:
        text += "\n" + _("On hold for waiting orders: {held}").format(
            held=format_money(held, currency)
        )
    return text


def balance_private(balance: str) -> str:
    return _("SMS-Man balance: <b>{balance}</b>").format(balance=e(balance))


def top_up_first(available: int, price: int, currency: str) -> str:
    return _(
        "Not enough money: the number costs {price}, your balance is {available}. "
        "Please top up first."
    ).format(price=format_money(price, currency), available=format_money(available, currency))


def no_numbers() -> str:
    return _("No numbers left for this service in this country. Try another country.")


def provider_down() -> str:
    return _("The service is temporarily unavailable. Nothing was charged; please try later.")


def purchase_failed() -> str:
    return _("The purchase did not go through. Nothing was charged; please try again.")


def too_many_active(limit: int) -> str:
    return ngettext(
        "You already have {n} waiting order. Finish or cancel it first.",
        "You already have {n} waiting orders. Finish or cancel one first.",
        limit,
    ).format(n=limit)


def too_fast() -> str:
    return _("Too many purchases in a minute. Please wait a little.")


def price_changed() -> str:
    return _("The price has changed. Please check it again.")


def outdated() -> str:
    return _("This menu is outdated. Here is a fresh one.")


def not_yours() -> str:
    return _("This order is not available.")


def cannot_cancel() -> str:
    return _("This order can no longer be cancelled.")


def cancel_refused() -> str:
    return _("SMS-Man does not allow cancelling this number yet. Please try again in a minute.")


def try_again_later() -> str:
    return _("The provider did not answer. Please try again in a moment.")


def something_failed() -> str:
    """A failure that is not the provider's (Telegram refused a call, or a bug)."""
    return _("Something went wrong. Please try again in a moment.")


def order_expired_notice(order: Order) -> str:
    return _(
        "⌛ No code came for order #{id} ({service}) in time. It was cancelled and not charged."
    ).format(id=order.id, service=e(order.service_title))


def low_balance_alert(balance: str, threshold: str) -> str:
    return _("⚠️ SMS-Man balance is low: {balance} (alert below {threshold}).").format(
        balance=e(balance), threshold=e(threshold)
    )


def provider_balance_alert() -> str:
    return _("⚠️ A purchase failed: the SMS-Man balance is too low. Please top it up.")


def reject_refused_alert(order: Order, error: str) -> str:
    return _(
        "⚠️ Order #{order}: SMS-Man kept refusing to cancel request {request} ({error}) and "
        "no code came. The order was ended here and the user's money released. Please check "
        "that request at SMS-Man by hand."
    ).format(order=order.id, request=order.request_id, error=e(error))


def choose_language() -> str:
    return _("Choose your language:")


def language_set() -> str:
    return _("Language set to English.")


def plain_short(text: str, limit: int = 200) -> str:
    """A callback answer or alert: plain text within Telegram's 200 characters."""
    from bot.ui.screen import plain

    return plain(text)[:limit]


def broadcast_progress(*, sent: int, blocked: int, left: int, status: str) -> str:
    head = {
        "running": _("📣 Broadcast in progress"),
        "done": _("📣 Broadcast finished"),
        "cancelled": _("📣 Broadcast cancelled"),
    }[status]
    return "\n".join(
        [
            f"<b>{head}</b>",
            _("Sent: {n}").format(n=sent),
            _("Blocked the bot: {n}").format(n=blocked),
            _("Left: {n}").format(n=left),
        ]
    )


def broadcast_usage() -> str:
    return _(
        "Reply to a message with /broadcast to send it to every user, or write the text after"
        " the command: /broadcast Hello. /broadcast cancel stops a broadcast under way."
    )


def broadcast_cancelled(count: int) -> str:
    if count == 0:
        return _("No broadcast is under way.")
    return _("Broadcast cancelled.")


def broadcast_only_text() -> str:
    return _("Only a text message can be broadcast.")
