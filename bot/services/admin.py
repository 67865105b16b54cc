"""The operator's side: admin commands, alerts, the low-balance watch (the commands menu is
bot/ui/commands.py).

Every `*_command` takes the command's arguments as typed and returns what happened as a
small result type (bot/ui/admin.py renders it). A malformed command is Refused and changes
nothing. Wallet moves are keyed by the command message (admin chat + message id), so an update
Telegram hands out twice moves money once.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

from bot.delivery.api import Tell
from bot.locale import SUPPORTED_LOCALES
from bot.services.access import Access
from bot.services.money import AmountError, PercentError, parse_amount, parse_percent
from bot.services.pricing import Pricing
from bot.settings import Settings
from bot.smsman.client import SmsManClient
from bot.smsman.errors import SmsManError
from storage.db import Database
from storage.errors import InsufficientFunds
from storage.models import LedgerRow, Order, User
from storage.payments import Payment, PaymentSummary
from storage.stats import Summary

log = logging.getLogger(__name__)

LOW_BALANCE_KEY = "low_balance_alerted"
PROVIDER_SHORT_KEY = "provider_balance_alerted"  # a purchase failed on the SMS-Man balance
BALANCE_CHECK_EVERY = 300.0
DAY = 86400.0
NOTE_MAX = 200  # characters of a /credit or /debit note kept
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


@dataclass(frozen=True, slots=True)
class WalletMove:
    done: bool  # False: this command was carried out before (same key); nothing moved now
    available: int  # the user's balance after it
    held: int


class Refusal(StrEnum):
    """Why an admin command changed nothing."""

    NOT_SHOP = "not_shop"  # wallets and the markup exist only in shop mode
    USAGE = "usage"
    BAD_USER_ID = "bad_user_id"
    BAD_AMOUNT = "bad_amount"
    BAD_PERCENT = "bad_percent"
    REPEATED = "repeated"  # this command message was carried out before
    SHORT = "short"  # /debit: less available than asked (holds cannot be taken)
    NOT_FOUND = "not_found"  # /user: they never used the bot
    ADMIN = "admin"  # /ban: admins cannot be banned


@dataclass(frozen=True, slots=True)
class Refused:
    command: str  # "credit", "debit", "user", "ban", "unban", "markup"
    reason: Refusal
    typed: str = ""  # BAD_*: what the admin typed, as typed
    user_id: int = 0  # SHORT, NOT_FOUND
    available: int = 0  # SHORT


@dataclass(frozen=True, slots=True)
class Moved:
    """/credit or /debit carried out."""

    command: str
    user_id: int
    amount: int
    available: int  # their balance after it
    newcomer: bool  # a credit to someone who has not used the bot yet: the money waits


class UserFlag(StrEnum):
    ADMIN = "admin"
    NOT_LISTED = "not_listed"  # private mode, not in ALLOWED_USER_IDS
    BANNED = "banned"
    BLOCKED = "blocked"  # they blocked the bot


@dataclass(frozen=True, slots=True)
class UserReport:
    """/user: the last orders always; the wallet, Stars top-ups and ledger in shop mode."""

    user: User
    flags: tuple[UserFlag, ...]
    wallet: tuple[int, int] | None  # (available, held); None outside shop mode
    orders: list[Order]
    payments: list[Payment]
    ledger: list[LedgerRow]


@dataclass(frozen=True, slots=True)
class Period:
    orders: Summary
    stars: PaymentSummary | None  # shop mode only


@dataclass(frozen=True, slots=True)
class StatsReport:
    today: Period  # since 00:00 UTC
    week: Period  # the last 7 days
    balance: Decimal | None  # SMS-Man's; None: it did not answer
    markup: Decimal | None  # shop mode only
    shop: bool


@dataclass(frozen=True, slots=True)
class BanOutcome:
    user_id: int
    banned: bool  # what was asked: True for /ban, False for /unban
    changed: bool  # False: they were so already


@dataclass(frozen=True, slots=True)
class MarkupReport:
    markup: Decimal
    changed: bool  # False: /markup alone, which shows it
    overridden: bool  # set with /markup rather than MARKUP_PERCENT
    example_cost: int  # a number of this cost at SMS-Man ...
    example_price: int  # ... sells for this


AdminReply = Refused | Moved | UserReport | StatsReport | BanOutcome | MarkupReport


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
    ) -> None:
        self._settings = settings
        self._db = db
        self._client = client
        self._access = access
        self._pricing = pricing
        self._tell = tell
        self._balance_lock = asyncio.Lock()
        self._provider_short: bool | None = None  # alerted this crossing? None: not known
        self._tasks: set[asyncio.Task[None]] = set()  # alerts on their way

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

    def _parse_move(self, command: str, args: str) -> _Move | Refused:
        """USER_ID AMOUNT [note], or why not."""
        parts = args.split(maxsplit=2)
        if len(parts) < 2:
            return Refused(command, Refusal.USAGE)
        user_id = parse_user_id(parts[0])
        if user_id is None:
            return Refused(command, Refusal.BAD_USER_ID, typed=parts[0])
        try:
            amount = parse_amount(parts[1])
        except AmountError:
            return Refused(command, Refusal.BAD_AMOUNT, typed=parts[1])
        note = parts[2].strip()[:NOTE_MAX] if len(parts) > 2 else None
        return _Move(user_id, amount, note or None)

    async def credit_command(self, args: str, *, chat_id: int, message_id: int) -> Moved | Refused:
        """/credit USER_ID AMOUNT [note]: top up a wallet."""
        if not self._settings.is_shop:
            return Refused("credit", Refusal.NOT_SHOP)
        move = self._parse_move("credit", args)
        if isinstance(move, Refused):
            return move
        known = await self._db.users.get(move.user_id)  # language is set once they write
        result = await self.credit(
            move.user_id, move.amount, note=move.note, key=f"credit:{chat_id}:{message_id}"
        )
        if not result.done:
            return Refused("credit", Refusal.REPEATED)
        newcomer = known is None or known.language is None
        return Moved("credit", move.user_id, move.amount, result.available, newcomer)

    async def debit_command(self, args: str, *, chat_id: int, message_id: int) -> Moved | Refused:
        """/debit USER_ID AMOUNT [note]: take from a wallet (a correction)."""
        if not self._settings.is_shop:
            return Refused("debit", Refusal.NOT_SHOP)
        move = self._parse_move("debit", args)
        if isinstance(move, Refused):
            return move
        try:
            result = await self.debit(
                move.user_id, move.amount, note=move.note, key=f"debit:{chat_id}:{message_id}"
            )
        except InsufficientFunds as exc:
            return Refused("debit", Refusal.SHORT, user_id=move.user_id, available=exc.available)
        if not result.done:
            return Refused("debit", Refusal.REPEATED)
        return Moved("debit", move.user_id, move.amount, result.available, newcomer=False)

    # -- /user ---------------------------------------------------------------------------

    async def user_command(self, args: str) -> UserReport | Refused:
        """/user USER_ID: flags, wallet, the last orders, Stars top-ups and ledger rows."""
        user_id = parse_user_id(args)
        if user_id is None:
            return Refused("user", Refusal.USAGE)
        user = await self._db.users.get(user_id)
        if user is None:
            return Refused("user", Refusal.NOT_FOUND, user_id=user_id)
        orders = await self._db.orders.list_for_user(user_id, limit=USER_ORDERS)
        if not self._settings.is_shop:
            return UserReport(user, self._flags(user), None, orders, [], [])
        return UserReport(
            user,
            self._flags(user),
            await self._db.wallet.balance(user_id),
            orders,
            await self._db.payments.list_for_user(user_id, USER_PAYMENTS),
            await self._db.wallet.history(user_id, USER_LEDGER),
        )

    def _flags(self, user: User) -> tuple[UserFlag, ...]:
        flags = []
        if self._access.is_admin(user.id):
            flags.append(UserFlag.ADMIN)
        elif not self._settings.is_shop and not self._access.is_listed(user.id):
            flags.append(UserFlag.NOT_LISTED)
        if user.banned:
            flags.append(UserFlag.BANNED)
        if user.blocked:
            flags.append(UserFlag.BLOCKED)
        return tuple(flags)

    # -- /stats --------------------------------------------------------------------------

    async def stats_command(self, now: float | None = None) -> StatsReport:
        """/stats: today (since 00:00 UTC) and the last 7 days, and the SMS-Man balance."""
        now = time.time() if now is None else now
        today = await self._period(now - now % DAY)
        week = await self._period(now - 7 * DAY)
        balance: Decimal | None
        try:
            balance = (await self._client.get_balance()).balance
        except SmsManError as exc:
            log.warning("stats: balance unavailable: %s", exc.code)
            balance = None
        else:
            await self._note_balance(balance)
        shop = self._settings.is_shop
        markup = self._pricing.markup if shop else None
        return StatsReport(today, week, balance, markup, shop)

    async def _period(self, since: float) -> Period:
        orders = await self._db.stats.summary(since)
        stars = await self._db.payments.summary(since) if self._settings.is_shop else None
        return Period(orders, stars)

    # -- /ban, /unban --------------------------------------------------------------------

    async def ban_command(self, args: str, *, banned: bool) -> BanOutcome | Refused:
        """/ban USER_ID or /unban USER_ID. A ban may come before the user ever wrote."""
        command = "ban" if banned else "unban"
        user_id = parse_user_id(args)
        if user_id is None:
            return Refused(command, Refusal.USAGE)
        if banned and self._access.is_admin(user_id):
            return Refused(command, Refusal.ADMIN, user_id=user_id)
        changed = await self._db.users.set_banned(user_id, banned)
        if changed:
            log.info("user %s %s", user_id, "banned" if banned else "unbanned")
        return BanOutcome(user_id, banned, changed)

    # -- /markup -------------------------------------------------------------------------

    async def markup_command(self, args: str) -> MarkupReport | Refused:
        """/markup PERCENT stores the markup (it overrides MARKUP_PERCENT, also after a
        restart); /markup alone shows it; /markup reset returns to MARKUP_PERCENT."""
        if not self._settings.is_shop:
            return Refused("markup", Refusal.NOT_SHOP)
        text = args.strip()
        if text.lower() == "reset":
            await self._pricing.reset_markup()
        elif text:
            try:
                percent = parse_percent(text)
            except PercentError:
                return Refused("markup", Refusal.BAD_PERCENT, typed=text)
            await self._pricing.set_markup(percent)
        if text:
            log.info("markup set to %s%%", self._pricing.markup)
        return MarkupReport(
            markup=self._pricing.markup,
            changed=bool(text),
            overridden=self._pricing.overridden,
            example_cost=EXAMPLE_COST,
            example_price=self._pricing.price(EXAMPLE_COST),
        )

    # -- alerts --------------------------------------------------------------------------

    async def reachable_admins(self) -> list[User]:
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
        for admin in await self.reachable_admins():
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

    async def locale_of(self, user_id: int) -> str:
        """The language the user chose (English until they do)."""
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
