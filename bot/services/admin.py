"""The operator's side: admin commands, the commands menu, alerts, the low-balance watch.

Every `*_command` takes the command's arguments as typed and returns the reply (HTML,
anything from outside escaped). A malformed command gets a clear reply and changes nothing.
Wallet moves are keyed by the command message (admin chat + message id), so an update
Telegram hands out twice moves money once.
"""

from __future__ import annotations

import asyncio
import html
import logging
import re
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError
from aiogram.types import BotCommand, BotCommandScopeChat, BotCommandScopeDefault
from aiogram.utils.i18n import I18n, ngettext
from aiogram.utils.i18n import gettext as _

from bot.delivery.api import Tell
from bot.locale import SUPPORTED_LOCALES
from bot.services.access import Access
from bot.services.money import (
    MAX_AMOUNT_MINOR,
    AmountError,
    PercentError,
    format_money,
    format_percent,
    parse_amount,
    parse_percent,
)
from bot.services.pricing import Pricing
from bot.settings import Settings
from bot.smsman.client import SmsManClient
from bot.smsman.errors import SmsManError
from storage.db import Database
from storage.errors import InsufficientFunds
from storage.models import LedgerKind, LedgerRow, Order, OrderStatus, User
from storage.payments import Payment, PaymentStatus, PaymentSummary
from storage.stats import Summary

log = logging.getLogger(__name__)

LOW_BALANCE_KEY = "low_balance_alerted"
PROVIDER_SHORT_KEY = "provider_balance_alerted"  # a purchase failed on the SMS-Man balance
BALANCE_CHECK_EVERY = 300.0
DAY = 86400.0
NOTE_MAX = 200  # characters of a /credit or /debit note kept
NOTE_SHOWN = 60  # ... and shown by /user
USER_ORDERS = 5  # orders /user shows
USER_LEDGER = 10  # ledger rows /user shows
USER_PAYMENTS = 5  # Stars top-ups /user shows
EXAMPLE_COST = 100_00  # /markup shows what a number of this provider cost sells for
_USER_ID = re.compile(r"^[0-9]{1,16}$")  # ASCII digits: int() also reads "٣" and "³"
MAX_USER_ID = 2**52  # Telegram: user ids have at most 52 significant bits


def parse_user_id(text: str) -> int | None:
    """A Telegram user id as an admin types it, or None."""
    text = text.strip()
    if not _USER_ID.fullmatch(text):
        return None
    user_id = int(text)
    return user_id if 0 < user_id < MAX_USER_ID else None


def user_commands(stars: bool = False) -> list[BotCommand]:
    commands = [
        BotCommand(command="start", description=_("Main menu")),
        BotCommand(command="buy", description=_("Buy a number")),
        BotCommand(command="orders", description=_("My orders")),
        BotCommand(command="balance", description=_("Balance")),
        BotCommand(command="help", description=_("How it works")),
        BotCommand(command="language", description=_("Language")),
    ]
    if stars:
        commands += [
            BotCommand(command="topup", description=_("Top up with Telegram Stars")),
            BotCommand(command="paysupport", description=_("Help with payments and refunds")),
        ]
    return commands


def admin_commands(shop: bool) -> list[BotCommand]:
    commands = [
        BotCommand(command="stats", description=_("Sales statistics")),
        BotCommand(command="user", description=_("A user's wallet and orders")),
        BotCommand(command="ban", description=_("Ban a user")),
        BotCommand(command="unban", description=_("Unban a user")),
    ]
    if shop:
        commands += [
            BotCommand(command="credit", description=_("Top up a wallet")),
            BotCommand(command="debit", description=_("Take from a wallet")),
            BotCommand(command="markup", description=_("Set the markup")),
            BotCommand(command="refund", description=_("Refund a Stars top-up")),
        ]
    return commands


@dataclass(frozen=True, slots=True)
class WalletMove:
    done: bool  # False: this command was carried out before (same key); nothing moved now
    available: int  # the user's balance after it
    held: int


@dataclass(frozen=True, slots=True)
class _Move:
    user_id: int
    amount: int
    note: str | None


class AdminService:
    def __init__(
        self,
        *,
        settings: Settings,
        db: Database,
        client: SmsManClient,
        access: Access,
        pricing: Pricing,
        tell: Tell,
        i18n: I18n,
    ) -> None:
        self._settings = settings
        self._db = db
        self._client = client
        self._access = access
        self._pricing = pricing
        self._tell = tell
        self._i18n = i18n
        self._balance_lock = asyncio.Lock()
        self._provider_short: bool | None = None  # alerted this crossing? None: not known
        self._tasks: set[asyncio.Task[None]] = set()  # alerts on their way

    def _money(self, minor: int) -> str:
        return format_money(minor, self._settings.currency)

    # -- wallet moves --------------------------------------------------------------------

    async def credit(self, user_id: int, amount: int, *, note: str | None, key: str) -> WalletMove:
        """Add `amount` (minor units, > 0) to the wallet; once per `key`."""
        row = await self._db.wallet.credit(user_id, amount, note=note, idempotency_key=key)
        available, held = await self._db.wallet.balance(user_id)
        if row is not None:
            log.info("admin credit: user %s +%s", user_id, amount)
        return WalletMove(row is not None, available, held)

    async def debit(self, user_id: int, amount: int, *, note: str | None, key: str) -> WalletMove:
        """Take `amount` off the available balance (never below zero; money on hold stays);
        once per `key`. InsufficientFunds(available) if short, and nothing changes."""
        row = await self._db.wallet.debit(user_id, amount, note=note, idempotency_key=key)
        available, held = await self._db.wallet.balance(user_id)
        if row is not None:
            log.info("admin debit: user %s -%s", user_id, amount)
        return WalletMove(row is not None, available, held)

    def _parse_move(self, command: str, args: str) -> _Move | str:
        """USER_ID AMOUNT [note], or the reply explaining what is wrong."""
        usage = _(
            "Usage: /{command} USER_ID AMOUNT [note]\nExample: /{command} 123456789 150.50"
        ).format(command=command)
        parts = args.split(maxsplit=2)
        if len(parts) < 2:
            return usage
        user_id = parse_user_id(parts[0])
        if user_id is None:
            return _("“{text}” is not a Telegram user id (digits only).").format(
                text=_e(parts[0][:32])
            ) + ("\n" + usage)
        try:
            amount = parse_amount(parts[1])
        except AmountError:
            return _(
                "“{text}” is not an amount: write a positive number with at most two "
                "decimals, up to {max}, e.g. 150 or 99.50."
            ).format(text=_e(parts[1][:32]), max=self._money(MAX_AMOUNT_MINOR))
        note = parts[2].strip()[:NOTE_MAX] if len(parts) > 2 else None
        return _Move(user_id, amount, note or None)

    async def credit_command(self, args: str, *, chat_id: int, message_id: int) -> str:
        """/credit USER_ID AMOUNT [note]: top up a wallet."""
        if not self._settings.is_shop:
            return _("Wallets exist only in shop mode (ACCESS_MODE=shop).")
        move = self._parse_move("credit", args)
        if isinstance(move, str):
            return move
        known = await self._db.users.get(move.user_id)  # language is set once they write
        result = await self.credit(
            move.user_id, move.amount, note=move.note, key=f"credit:{chat_id}:{message_id}"
        )
        if not result.done:
            return _("This command was carried out already; nothing changed.")
        text = _("Credited {amount} to <code>{user}</code>. Their balance: {balance}.").format(
            amount=self._money(move.amount),
            user=move.user_id,
            balance=self._money(result.available),
        )
        if known is None or known.language is None:
            text += "\n" + _("They have not used the bot yet; the money waits for them.")
        return text

    async def debit_command(self, args: str, *, chat_id: int, message_id: int) -> str:
        """/debit USER_ID AMOUNT [note]: take from a wallet (a correction)."""
        if not self._settings.is_shop:
            return _("Wallets exist only in shop mode (ACCESS_MODE=shop).")
        move = self._parse_move("debit", args)
        if isinstance(move, str):
            return move
        try:
            result = await self.debit(
                move.user_id, move.amount, note=move.note, key=f"debit:{chat_id}:{message_id}"
            )
        except InsufficientFunds as exc:
            return _(
                "Nothing taken: <code>{user}</code> has only {available} available "
                "(money on hold for waiting orders cannot be taken)."
            ).format(user=move.user_id, available=self._money(exc.available))
        if not result.done:
            return _("This command was carried out already; nothing changed.")
        return _("Took {amount} from <code>{user}</code>. Their balance: {balance}.").format(
            amount=self._money(move.amount),
            user=move.user_id,
            balance=self._money(result.available),
        )

    # -- /user ---------------------------------------------------------------------------

    async def user_command(self, args: str) -> str:
        """/user USER_ID: flags, wallet, the last orders and ledger rows."""
        user_id = parse_user_id(args)
        if user_id is None:
            return _("Usage: /user USER_ID\nExample: /user 123456789")
        user = await self._db.users.get(user_id)
        if user is None:
            return _("No user <code>{user}</code>: they have never used the bot.").format(
                user=user_id
            )
        lines = [self._user_header(user)]
        if self._settings.is_shop:
            available, held = await self._db.wallet.balance(user_id)
            lines.append(
                _("Balance: <b>{available}</b>; on hold: {held}").format(
                    available=self._money(available), held=self._money(held)
                )
            )
        orders = await self._db.orders.list_for_user(user_id, limit=USER_ORDERS)
        if orders:
            lines.append("")
            lines.append(_("<b>Last orders</b>:"))
            lines += [_order_line(order) for order in orders]
        else:
            lines.append(_("No orders."))
        if self._settings.is_shop:
            payments = await self._db.payments.list_for_user(user_id, USER_PAYMENTS)
            if payments:
                lines.append("")
                lines.append(_("<b>Stars top-ups</b>:"))
                lines += [_payment_line(p, _when(p.created_at)) for p in payments]
            history = await self._db.wallet.history(user_id, USER_LEDGER)
            if history:
                lines.append("")
                lines.append(_("<b>Last ledger rows</b>:"))
                lines += [self._ledger_line(row) for row in history]
        lines.append("")
        lines.append(_("Times are UTC."))
        return "\n".join(lines)

    def _user_header(self, user: User) -> str:
        flags = []
        if self._access.is_admin(user.id):
            flags.append(_("admin"))
        elif not self._settings.is_shop and not self._access.is_listed(user.id):
            flags.append(_("not in ALLOWED_USER_IDS"))
        if user.banned:
            flags.append(_("banned"))
        if user.blocked:
            flags.append(_("blocked the bot"))
        header = _("<b>User</b> <code>{user}</code>, first seen {date}").format(
            user=user.id, date=_when(user.first_seen)
        )
        if flags:
            header += " — " + ", ".join(flags)
        return header

    def _ledger_line(self, row: LedgerRow) -> str:
        amount = ("+" if row.amount > 0 else "") + self._money(row.amount)
        line = f"{_when(row.created_at)} {_kind_label(row.kind)} {amount}"
        if row.order_id is not None:
            line += f" #{row.order_id}"
        if row.note:
            note = row.note if len(row.note) <= NOTE_SHOWN else row.note[: NOTE_SHOWN - 1] + "…"
            line += f" — {_e(note)}"
        return line

    # -- /stats --------------------------------------------------------------------------

    async def stats_command(self, now: float | None = None) -> str:
        """/stats: today (since 00:00 UTC) and the last 7 days, and the SMS-Man balance."""
        now = time.time() if now is None else now
        today = await self._db.stats.summary(now - now % DAY)
        week = await self._db.stats.summary(now - 7 * DAY)
        lines = [_("<b>Today</b> (since 00:00 UTC)")]
        lines += self._summary_lines(today)
        lines += await self._payment_lines(now - now % DAY)
        lines += ["", _("<b>Last 7 days</b>")]
        lines += self._summary_lines(week)
        lines += await self._payment_lines(now - 7 * DAY)
        try:
            balance = (await self._client.get_balance()).balance
        except SmsManError as exc:
            log.warning("stats: balance unavailable: %s", exc.code)
            shown = _("unavailable")
        else:
            await self._note_balance(balance)
            shown = f"{balance:.2f}"
        lines += ["", _("SMS-Man balance: <b>{balance}</b>").format(balance=_e(shown))]
        if self._settings.is_shop:
            lines.append(_("Markup: {markup}%").format(markup=format_percent(self._pricing.markup)))
        return "\n".join(lines)

    def _summary_lines(self, s: Summary) -> list[str]:
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
        if self._settings.is_shop:
            lines.append(
                _("Refunds: {count} ({amount})").format(
                    count=s.refunds, amount=self._money(s.refunded)
                )
            )
            lines.append(
                _("Sales: {count}; revenue {revenue}; cost {cost}; margin {margin}").format(
                    count=s.sales,
                    revenue=self._money(s.revenue),
                    cost=self._money(s.cost),
                    margin=self._money(s.margin),
                )
            )
        return lines

    async def _payment_lines(self, since: float) -> list[str]:
        if not self._settings.is_shop:
            return []
        summary = await self._db.payments.summary(since)
        return [_stars_summary_line(summary, self._settings.currency)]

    # -- /ban, /unban --------------------------------------------------------------------

    async def ban_command(self, args: str, *, banned: bool) -> str:
        """/ban USER_ID or /unban USER_ID. A ban may come before the user ever wrote."""
        user_id = parse_user_id(args)
        if user_id is None:
            if banned:
                return _("Usage: /ban USER_ID\nExample: /ban 123456789")
            return _("Usage: /unban USER_ID\nExample: /unban 123456789")
        if banned and self._access.is_admin(user_id):
            return _("Admins cannot be banned (they are listed in ADMIN_IDS).")
        changed = await self._db.users.set_banned(user_id, banned)
        if changed:
            log.info("user %s %s", user_id, "banned" if banned else "unbanned")
        if banned:
            return (
                _("<code>{user}</code> is banned: every message and button is refused.")
                if changed
                else _("<code>{user}</code> was banned already.")
            ).format(user=user_id)
        return (
            _("<code>{user}</code> is unbanned.")
            if changed
            else _("<code>{user}</code> was not banned.")
        ).format(user=user_id)

    # -- /markup -------------------------------------------------------------------------

    async def markup_command(self, args: str) -> str:
        """/markup PERCENT stores the markup (it overrides MARKUP_PERCENT, also after a
        restart); /markup alone shows it; /markup reset returns to MARKUP_PERCENT."""
        if not self._settings.is_shop:
            return _("The markup applies only in shop mode (ACCESS_MODE=shop).")
        text = args.strip()
        if not text:
            current = (
                _("Markup: {markup}% (set with /markup).")
                if self._pricing.overridden
                else _("Markup: {markup}% (MARKUP_PERCENT).")
            ).format(markup=format_percent(self._pricing.markup))
            return (
                current
                + "\n"
                + _(
                    "Change it: /markup PERCENT, e.g. /markup 15; back to MARKUP_PERCENT: "
                    "/markup reset"
                )
            )
        if text.lower() == "reset":
            await self._pricing.reset_markup()
        else:
            try:
                percent = parse_percent(text)
            except PercentError:
                return _(
                    "“{text}” is not a markup: write a number from 0 to 1000 with at most "
                    "two decimals, e.g. /markup 12.5"
                ).format(text=_e(text[:32]))
            await self._pricing.set_markup(percent)
        log.info("markup set to %s%%", self._pricing.markup)
        return _(
            "Markup: {markup}%. A number that costs {cost} at SMS-Man now sells for {price}."
        ).format(
            markup=format_percent(self._pricing.markup),
            cost=self._money(EXAMPLE_COST),
            price=self._money(self._pricing.price(EXAMPLE_COST)),
        )

    # -- the commands menu ---------------------------------------------------------------

    async def setup_commands(self, bot: Bot) -> None:
        """/start, /buy, /orders, /balance, /help for all; admins also see theirs.

        Telegram answers "chat not found" for a chat that never talked to the bot, so an
        admin's own list is set here only if we know them, and otherwise on their /start.
        """
        for locale in SUPPORTED_LOCALES:
            with self._i18n.use_locale(locale):
                commands = user_commands(self._settings.stars_enabled)
            code = None if locale == "en" else locale
            await bot.set_my_commands(commands, scope=BotCommandScopeDefault(), language_code=code)
        for admin in await self._reachable_admins():
            await self.setup_admin_commands(bot, admin.id)

    async def setup_admin_commands(self, bot: Bot, admin_id: int) -> None:
        with self._i18n.use_locale(await self._locale(admin_id)):
            commands = user_commands(self._settings.stars_enabled) + admin_commands(
                self._settings.is_shop
            )
        try:
            await bot.set_my_commands(commands, scope=BotCommandScopeChat(chat_id=admin_id))
        except TelegramAPIError as exc:
            log.warning("could not set the admin commands of %s: %s", admin_id, exc.message)

    # -- alerts --------------------------------------------------------------------------

    async def _reachable_admins(self) -> list[User]:
        """Admins the bot may write to: they talked to it (a row made by /credit or /ban
        has no language yet) and did not block it."""
        found = []
        for admin_id in sorted(self._access.admin_ids):
            user = await self._db.users.get(admin_id)
            if user is not None and user.language is not None and not user.blocked:
                found.append(user)
        return found

    async def alert(self, name: str, **args: object) -> None:
        """Tell every admin (a notice by name, rendered by bot/delivery in their language)."""
        for admin in await self._reachable_admins():
            await self._tell.notice(admin.id, name, **args)

    def _in_background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Alerts never hold up the user's update that caused them."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._alert_done)

    def _alert_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("an admin alert failed", exc_info=task.exception())

    async def stop(self, grace: float = 5.0) -> None:
        """Let alerts on their way go out for `grace` seconds, then cancel the rest."""
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()

    # The OrderService's Alerts: called inside a purchase, they only start a task.

    def provider_balance_short(self) -> None:
        """A purchase failed on the SMS-Man balance: one alert per crossing (the flag
        outlives restarts); a purchase that goes through re-arms it."""
        if self._provider_short:
            return
        self._provider_short = True
        self._in_background(self._alert_provider_short())

    async def _alert_provider_short(self) -> None:
        if not await self._db.kv.set_if_absent(PROVIDER_SHORT_KEY, "1"):
            return  # told before (before a restart, too)
        log.warning("a purchase failed on the SMS-Man balance: telling the admins")
        await self.alert("provider_balance_short")

    def provider_balance_enough(self) -> None:
        if self._provider_short is False:
            return
        self._provider_short = False
        self._in_background(self._rearm_provider_short())

    async def _rearm_provider_short(self) -> None:
        await self._db.kv.delete(PROVIDER_SHORT_KEY)

    def reject_refused(self, order: Order, error: str) -> None:
        self._in_background(self.alert("reject_refused", order=order.id, error=error))

    async def _locale(self, user_id: int) -> str:
        user = await self._db.users.get(user_id)
        return _locale_of(user)

    async def check_balance(self) -> None:
        """Admins hear of a low SMS-Man balance once per crossing of the threshold."""
        if self._settings.low_balance_alert <= 0:
            return
        try:
            balance = (await self._client.get_balance()).balance
        except SmsManError as exc:
            log.warning("balance check failed: %s", exc.code)
            return
        await self._note_balance(balance)

    async def _note_balance(self, balance: Decimal) -> None:
        """Alert when the balance is below the threshold and was not before (the flag
        outlives restarts); rising to the threshold or above re-arms the alert."""
        threshold = self._settings.low_balance_alert
        if threshold <= 0:
            return
        async with self._balance_lock:  # /stats and the watch may look at the same time
            alerted = await self._db.kv.get(LOW_BALANCE_KEY) == "1"
            if balance < threshold and not alerted:
                await self._db.kv.set(LOW_BALANCE_KEY, "1")
                log.warning("SMS-Man balance %s below %s: telling the admins", balance, threshold)
                await self.alert(
                    "low_balance", balance=f"{balance:.2f}", threshold=f"{threshold:.2f}"
                )
            elif balance >= threshold and alerted:
                await self._db.kv.set(LOW_BALANCE_KEY, "0")

    async def watch_balance(self, every: float = BALANCE_CHECK_EVERY) -> None:
        """Check every `every` seconds until cancelled; a failed check (a locked database,
        a bug) is logged and the watch goes on: a background loop never dies silently."""
        if self._settings.low_balance_alert <= Decimal(0):
            return
        while True:
            try:
                await self.check_balance()
            except Exception:
                log.exception("balance check failed; trying again in %.0fs", every)
            await asyncio.sleep(every)


def _locale_of(user: User | None) -> str:
    return user.language if user and user.language in SUPPORTED_LOCALES else "en"


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


def _kind_label(kind: LedgerKind) -> str:
    labels = {
        LedgerKind.CREDIT: _("credit"),
        LedgerKind.DEBIT: _("debit"),
        LedgerKind.HOLD: _("hold"),
        LedgerKind.CAPTURE: _("capture"),
        LedgerKind.RELEASE: _("release"),
    }
    return labels[kind]


def _order_line(order: Order) -> str:
    price = format_money(order.price or order.cost, order.currency)
    return (
        f"#{order.id} {_when(order.created_at)} {_e(order.service_title)}, "
        f"{_e(order.country_title)}: {_status_label(order.status)} — {price}"
    )


def _e(value: object) -> str:
    return html.escape(str(value), quote=False)


def _status_label(status: OrderStatus) -> str:
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


def _payment_status_label(status: PaymentStatus) -> str:
    labels = {
        PaymentStatus.CREDITED: _("credited"),
        PaymentStatus.REFUNDING: _("refund in progress"),
        PaymentStatus.REFUNDED: _("refunded"),
    }
    return labels[status]


def _payment_line(payment: Payment, when: str) -> str:
    amount = format_money(payment.amount, payment.currency)
    return (
        f"{when} {payment.stars} ⭐ → {amount}: "
        f"{_payment_status_label(payment.status)} — <code>{_e(payment.charge_id)}</code>"
    )


def _stars_summary_line(summary: PaymentSummary, currency: str) -> str:
    return _(
        "Stars top-ups: {count} ({stars} Stars, {amount}); refunded: {refunds} ({refunded})"
    ).format(
        count=summary.topups,
        stars=summary.topup_stars,
        amount=format_money(summary.topped_up, currency),
        refunds=summary.refunds,
        refunded=format_money(summary.refunded, currency),
    )
