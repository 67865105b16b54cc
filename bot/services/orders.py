"""An order's life: buy, poll, deliver a code, cancel, finish, expire.

The storage state machine decides who wins a race; this module acts only on a transition
that happened (reject at SMS-Man, refund, tell the user). Handlers and the poller share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from bot.delivery.api import Tell
from bot.services.catalogue import CatalogueService
from bot.services.money import from_minor
from bot.services.pricing import Pricing
from bot.settings import Settings
from bot.smsman.client import SmsManClient
from bot.smsman.errors import (
    InsufficientBalance,
    NoNumbers,
    ProviderUnavailable,
    RequestGone,
    SmsManError,
    WrongStatus,
)
from bot.smsman.types import Status
from storage.db import Database
from storage.errors import (
    DuplicateOrder,
    InsufficientFunds,
    TooManyActiveOrders,
    TooManyRecentOrders,
    UserBanned,
)
from storage.leases import Replica
from storage.models import Code, Order, OrderStatus

log = logging.getLogger(__name__)

Clock = Callable[[], float]
# A purchase still `purchasing` this long after SMSMAN_TIMEOUT is stuck (a write failed
# between the hold and the number being stored): the sweep fails it and releases the hold.
PURCHASE_MARGIN = 60.0
# SMS-Man refusing the reject of an order past its deadline, with no code in sight: get-sms
# is asked until this long past the deadline, then the order ends here (refunded) and the
# operator is asked to reconcile it at SMS-Man by hand.
REJECT_GRACE = 300.0


class Alerts(Protocol):
    """What the operator is told, sent in the background (never inside a user's update)."""

    def provider_balance_short(self) -> None:
        """A purchase failed on the SMS-Man balance (one alert per crossing)."""

    def provider_balance_enough(self) -> None:
        """A purchase went through: the balance is enough again (re-arms the alert)."""

    def reject_refused(self, order: Order, error: str) -> None:
        """SMS-Man kept refusing an order's reject; it was ended here without a code."""


class BuyOutcome(StrEnum):
    BOUGHT = "bought"
    DUPLICATE = "duplicate"  # this confirm screen already made its order
    SHORT = "short"  # wallet below the price
    TOO_MANY = "too_many"
    TOO_FAST = "too_fast"
    BANNED = "banned"
    PRICE_CHANGED = "price_changed"
    NO_NUMBERS = "no_numbers"
    UNAVAILABLE = "unavailable"  # the operator's SMS-Man balance is too low
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class BuyResult:
    outcome: BuyOutcome
    order: Order | None = None
    price: int = 0
    available: int = 0


class ActionOutcome(StrEnum):
    DONE = "done"
    NOT_FOUND = "not_found"  # no such order for this user
    NOT_ALLOWED = "not_allowed"  # the order is not in a state that allows it
    TRY_LATER = "try_later"  # SMS-Man did not answer; nothing changed
    REFUSED = "refused"  # SMS-Man answered no (e.g. too early to cancel); nothing changed


@dataclass(frozen=True, slots=True)
class ActionResult:
    outcome: ActionOutcome
    order: Order | None = None


@dataclass(frozen=True, slots=True)
class OrdersView:
    open: list[Order]
    finished: list[tuple[Order, list[Code]]]


class PollOutcome(StrEnum):
    WAITING = "waiting"  # no code yet: poll again after the interval
    CODE = "code"  # a new code was stored (and its message queued)
    IDLE = "idle"  # open, but nothing to ask SMS-Man until the deadline
    RETRY = "retry"  # SMS-Man refused the reject without showing a code: try again soon
    CLOSED = "closed"  # the order left the open states (or never was there)


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one poller step did to an order, and the order after it."""

    outcome: PollOutcome
    order: Order | None = None
    answered: bool = False  # SMS-Man was asked and answered (the circuit breaker's probe)


class OrderService:
    def __init__(
        self,
        *,
        settings: Settings,
        db: Database,
        client: SmsManClient,
        catalogue: CatalogueService,
        pricing: Pricing,
        tell: Tell,
        alerts: Alerts | None = None,
        clock: Clock = time.time,
        replica: Replica | None = None,
    ) -> None:
        self._settings = settings
        self._db = db
        self._client = client
        self._catalogue = catalogue
        self._pricing = pricing
        self._tell = tell
        self._alerts = alerts
        self._buying: set[int] = set()  # orders whose get-number this process is making
        self.clock = clock  # tests may swap it (the countdown)
        self._locks: weakref.WeakValueDictionary[int, asyncio.Lock] = weakref.WeakValueDictionary()
        # Set by the poller: (order id, when, new): `new` for an order this replica just
        # bought (it holds its lease from the start: `replica`).
        self.on_scheduled: Callable[..., None] | None = None
        self._replica = replica

    # -- helpers -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _order_lock(self, order_id: int) -> AsyncIterator[None]:
        """One actor per order in this process: the user's tap and the poller take turns."""
        async with _lock_for(self._locks, order_id):
            yield

    def _schedule(self, order_id: int, at: float, *, new: bool = False) -> None:
        if self.on_scheduled is not None:
            self.on_scheduled(order_id, at, new=new)

    # -- buying --------------------------------------------------------------------------

    def price_for(self, cost: int) -> int:
        """What a user pays for a provider cost right now (a quote)."""
        return self._pricing.price(cost)

    async def buy(
        self,
        *,
        user_id: int,
        chat_id: int,
        country_id: int,
        service_id: int,
        quoted_cost: int,
        quoted_price: int,
        multiple_sms: bool,
        idempotency_key: str,
        card_message_id: int | None = None,
    ) -> BuyResult:
        """Hold the quoted price, then get-number with maxPrice = the quoted cost.

        `idempotency_key` names the tap's source (the confirm screen): while its order is
        in flight or bought, another tap finds it (DUPLICATE); after a failed purchase
        another tap is a new attempt, keyed `{key}#2`, `{key}#3`, ... (UNIQUE in SQL, so
        two taps racing after a failure still make one attempt).
        `card_message_id`: the confirm screen that becomes the order card, recorded before
        the number is bought so a code arriving at once edits it rather than a second card.
        """
        key = idempotency_key
        attempt = 1
        while (existing := await self._db.orders.by_idempotency_key(key)) is not None:
            if existing.status is not OrderStatus.FAILED:
                return BuyResult(BuyOutcome.DUPLICATE, existing)
            attempt += 1
            key = f"{idempotency_key}#{attempt}"
        offer = await self._catalogue.offer(country_id, service_id)
        if offer is None:
            return BuyResult(BuyOutcome.NO_NUMBERS)
        if quoted_cost < offer.service.cost:
            return BuyResult(BuyOutcome.PRICE_CHANGED)
        now = self.clock()
        shop = self._settings.is_shop
        price = self._pricing.price(quoted_cost) if shop else 0
        if shop and price > quoted_price:
            return BuyResult(BuyOutcome.PRICE_CHANGED)  # the markup rose since the quote
        try:
            order = await self._db.orders.create(
                user_id=user_id,
                chat_id=chat_id,
                country_id=country_id,
                country_title=offer.country.title,
                service_id=service_id,
                service_title=offer.service.title,
                price=price,
                cost=quoted_cost,
                currency=self._settings.currency,
                idempotency_key=key,
                multiple_sms=multiple_sms,
                hold=shop,
                max_active=self._settings.max_active_orders,
                max_per_minute=self._settings.purchases_per_minute,
                now=now,
            )
        except DuplicateOrder as exc:
            return BuyResult(BuyOutcome.DUPLICATE, exc.order)
        except InsufficientFunds as exc:
            return BuyResult(BuyOutcome.SHORT, price=price, available=exc.available)
        except TooManyActiveOrders:
            return BuyResult(BuyOutcome.TOO_MANY)
        except TooManyRecentOrders:
            return BuyResult(BuyOutcome.TOO_FAST)
        except UserBanned:
            return BuyResult(BuyOutcome.BANNED)
        log.info("order %s user %s: buying %s/%s", order.id, user_id, country_id, service_id)
        self._buying.add(order.id)  # the sweep leaves it alone while this runs
        try:
            if card_message_id is not None:
                await self._db.orders.set_message(order.id, card_message_id, None)
            return await self._get_number(order, multiple_sms)
        finally:
            self._buying.discard(order.id)

    async def _get_number(self, order: Order, multiple_sms: bool) -> BuyResult:
        try:
            number = await self._client.get_number(
                order.country_id,
                order.service_id,
                max_price=from_minor(order.cost),
                currency=self._settings.currency,
                multiple_sms=multiple_sms,
            )
        except NoNumbers:
            await self._fail(order, "no numbers")
            return BuyResult(BuyOutcome.NO_NUMBERS)
        except InsufficientBalance:
            await self._fail(order, "provider balance too low")
            if self._alerts is not None:
                self._alerts.provider_balance_short()
            return BuyResult(BuyOutcome.UNAVAILABLE)
        except ProviderUnavailable as exc:
            # The answer was lost: SMS-Man may have sold a number we will never see. It
            # lapses there unused; the user is not charged for it.
            await self._fail(order, f"outcome unknown: {exc.message}")
            return BuyResult(BuyOutcome.FAILED)
        except SmsManError as exc:
            await self._fail(order, f"{exc.code}: {exc.message}")
            return BuyResult(BuyOutcome.FAILED)
        if self._alerts is not None:
            self._alerts.provider_balance_enough()
        now = self.clock()
        expires_at = now + self._settings.activation_timeout
        next_poll = now + self._settings.sms_poll_interval
        try:
            stored = await self._db.orders.mark_waiting(
                order.id,
                request_id=number.request_id,
                number=number.number,
                expires_at=expires_at,
                next_poll_at=next_poll,
                lease=self._replica.lease() if self._replica is not None else None,
            )
        except Exception:
            # The number is bought but not recorded: give it back at SMS-Man, and fail the
            # order (if that write fails too, the sweep of stuck purchases does it later).
            log.exception(
                "order %s user %s: could not store the number bought", order.id, order.user_id
            )
            await self._give_back(order, number.request_id)
            with contextlib.suppress(Exception):
                await self._fail(order, "the number could not be stored")
            return BuyResult(BuyOutcome.FAILED)
        if not stored:  # the sweep failed it meanwhile (it took far longer than it may)
            log.error(
                "order %s user %s: left purchasing before its number was stored",
                order.id,
                order.user_id,
            )
            await self._give_back(order, number.request_id)
            return BuyResult(BuyOutcome.FAILED)
        log.info(
            "order %s user %s: number bought, request %s",
            order.id,
            order.user_id,
            number.request_id,
        )
        self._schedule(order.id, next_poll, new=True)
        fresh = await self._db.orders.get(order.id)
        return BuyResult(BuyOutcome.BOUGHT, fresh)

    async def _give_back(self, order: Order, request_id: int) -> None:
        """Reject a number we bought but could not record (best effort: it lapses anyway)."""
        try:
            await self._client.set_status(request_id, Status.REJECT)
        except SmsManError as exc:
            log.warning(
                "order %s: request %s not rejected (%s); it lapses at SMS-Man",
                order.id,
                request_id,
                exc.code,
            )

    async def _fail(self, order: Order, why: str) -> bool:
        """purchasing -> failed, the hold released; False if it had left purchasing."""
        if not await self._db.orders.mark_failed(order.id):
            return False
        log.info(
            "order %s user %s: purchase failed (%s); hold released", order.id, order.user_id, why
        )
        return True

    async def fail_stale_purchases(self) -> int:
        """Fail purchases stuck in `purchasing` (older than SMSMAN_TIMEOUT plus a margin,
        and not being bought by this process right now): the hold goes back, once (the
        transition is guarded in SQL). Returns how many were failed. The poller runs it."""
        now = self.clock()
        cutoff = now - self._settings.smsman_timeout - PURCHASE_MARGIN
        failed = 0
        for order in await self._db.orders.list_open():
            if (
                order.status is OrderStatus.PURCHASING
                and order.created_at < cutoff
                and order.id not in self._buying
            ):
                failed += await self._fail(order, f"stuck for {now - order.created_at:.0f}s")
        return failed

    # -- user actions --------------------------------------------------------------------

    async def history(self, user_id: int, limit: int = 10) -> OrdersView:
        """Open orders, and the last `limit` ended ones with their codes."""
        open_orders = await self._db.orders.list_for_user(user_id, open_only=True, limit=50)
        recent = await self._db.orders.list_for_user(user_id, limit=limit + len(open_orders))
        ended = [order for order in recent if not order.is_open][:limit]
        finished = [(order, await self._db.orders.codes_of(order.id)) for order in ended]
        return OrdersView(open_orders, finished)

    async def order_of(self, user_id: int, order_id: int) -> Order | None:
        return await self._db.orders.get_for_user(order_id, user_id)

    async def cancel(self, user_id: int, order_id: int) -> ActionResult:
        order = await self._db.orders.get_for_user(order_id, user_id)
        if order is None:
            return ActionResult(ActionOutcome.NOT_FOUND)
        async with self._order_lock(order.id):
            order = await self._db.orders.get(order.id)
            if order is None or order.status is not OrderStatus.WAITING:
                return ActionResult(ActionOutcome.NOT_ALLOWED, order)
            try:
                outcome = await self._reject(order, expire=False)
            except ProviderUnavailable:
                return ActionResult(ActionOutcome.TRY_LATER, order)
            except SmsManError as exc:  # pragma: no cover - _reject answers them itself
                log.warning("order %s: cancel failed: %s", order.id, exc.code)
                return ActionResult(ActionOutcome.REFUSED, order)
            if outcome is PollOutcome.RETRY:  # refused, and no code in sight
                return ActionResult(ActionOutcome.REFUSED, order)
        return ActionResult(ActionOutcome.DONE, await self._db.orders.get(order.id))

    async def finish(self, user_id: int, order_id: int) -> ActionResult:
        order = await self._db.orders.get_for_user(order_id, user_id)
        if order is None:
            return ActionResult(ActionOutcome.NOT_FOUND)
        async with self._order_lock(order.id):
            order = await self._db.orders.get(order.id)
            if order is None or order.status is not OrderStatus.RECEIVED:
                return ActionResult(ActionOutcome.NOT_ALLOWED, order)
            try:
                await self._close(order)
            except ProviderUnavailable:
                return ActionResult(ActionOutcome.TRY_LATER, order)
        return ActionResult(ActionOutcome.DONE, await self._db.orders.get(order.id))

    async def another_code(self, user_id: int, order_id: int) -> ActionResult:
        order = await self._db.orders.get_for_user(order_id, user_id)
        if order is None:
            return ActionResult(ActionOutcome.NOT_FOUND)
        async with self._order_lock(order.id):
            order = await self._db.orders.get(order.id)
            if (
                order is None
                or order.status is not OrderStatus.RECEIVED
                or not order.multiple_sms
                or order.want_more
                or order.request_id is None
            ):
                return ActionResult(ActionOutcome.NOT_ALLOWED, order)
            try:
                await self._client.set_status(order.request_id, Status.RETRY_SMS)
            except ProviderUnavailable:
                return ActionResult(ActionOutcome.TRY_LATER, order)
            except SmsManError as exc:
                log.warning(
                    "order %s user %s: retrysms refused: %s", order.id, order.user_id, exc.code
                )
                return ActionResult(ActionOutcome.NOT_ALLOWED, order)
            next_poll = self.clock() + self._settings.sms_poll_interval
            await self._db.orders.request_more(order.id)
            log.info("order %s user %s: another code asked for (retrysms)", order.id, order.user_id)
            self._schedule(order.id, next_poll)
        return ActionResult(ActionOutcome.DONE, await self._db.orders.get(order.id))

    # -- the poller's side ---------------------------------------------------------------

    async def step(self, order_id: int) -> StepResult:
        """One turn of the poller for one order, under the order's lock.

        Past its deadline the order is rejected (no code) or closed (a code came);
        otherwise a waiting order, or a received one that asked for another code, is polled
        once. What the user must see is queued (bot/delivery), never waited for: the lock
        covers SMS-Man calls and database transitions only. `ProviderUnavailable` and
        other `SmsManError`s are the caller's to back off; nothing changed then.
        """
        async with self._order_lock(order_id):
            order = await self._db.orders.get(order_id)
            if order is None:
                return StepResult(PollOutcome.CLOSED)
            if not order.is_open or order.status is OrderStatus.PURCHASING:
                return StepResult(PollOutcome.CLOSED, order)
            if order.request_id is None:  # pragma: no cover - waiting orders have one
                return StepResult(PollOutcome.CLOSED, order)
            if order.expires_at is not None and self.clock() >= order.expires_at:
                outcome = await self._expire(order)
            elif order.status is OrderStatus.WAITING or order.want_more:
                outcome = await self._poll(order)
            else:
                return StepResult(PollOutcome.IDLE, order)
            if outcome is PollOutcome.WAITING:
                return StepResult(outcome, order, answered=True)
            fresh = await self._db.orders.get(order_id)
            if fresh is None or not fresh.is_open:
                outcome = PollOutcome.CLOSED
            return StepResult(outcome, fresh, answered=True)

    async def _poll(self, order: Order) -> PollOutcome:
        """get-sms once; a new code is stored, then queued for the user."""
        assert order.request_id is not None
        try:
            sms = await self._client.get_sms(order.request_id)
        except RequestGone:
            await self._request_gone(order)
            return PollOutcome.CLOSED
        if sms.code is None:
            return PollOutcome.WAITING
        code = await self._store_code(order, sms.code)
        if code is None:
            return PollOutcome.WAITING  # the same code again, before the next one came
        # Stored, then queued: bot/delivery sends it and only then marks it delivered.
        await self._tell.code(code)
        return PollOutcome.CODE

    async def _store_code(self, order: Order, code: str) -> Code | None:
        stored = await self._db.orders.add_code(order.id, code, now=self.clock())
        if stored is not None:
            log.info("order %s user %s: code stored", order.id, order.user_id)
        return stored

    async def _request_gone(self, order: Order) -> None:
        """SMS-Man forgot the request: it ends here, refunded only if no code came."""
        if order.status is OrderStatus.WAITING:
            if await self._db.orders.expire(order.id, now=self.clock()):
                log.info(
                    "order %s user %s: request gone at SMS-Man; expired, hold released",
                    order.id,
                    order.user_id,
                )
                await self._tell_expired(order)
        elif order.status is OrderStatus.RECEIVED and await self._db.orders.finish(
            order.id, now=self.clock()
        ):
            log.info("order %s user %s: request gone at SMS-Man; finished", order.id, order.user_id)
        await self._tell.card(order)

    async def expire_due(self, order_id: int) -> PollOutcome:
        """End the order now as if its deadline passed: reject without a code (the hold goes
        back, the user is told), close with one. The poller does this in `step`."""
        async with self._order_lock(order_id):
            order = await self._db.orders.get(order_id)
            if (
                order is None
                or order.request_id is None
                or order.status not in (OrderStatus.WAITING, OrderStatus.RECEIVED)
            ):
                return PollOutcome.CLOSED
            return await self._expire(order)

    async def _expire(self, order: Order) -> PollOutcome:
        """The deadline passed: reject without a code, close with one."""
        if order.status is OrderStatus.WAITING:
            return await self._reject(order, expire=True)
        await self._close(order)
        return PollOutcome.CLOSED

    async def _reject(self, order: Order, *, expire: bool) -> PollOutcome:
        """Reject at SMS-Man, then cancel or expire here (the hold goes back).

        SMS-Man refuses a reject once a code came, and may refuse it for reasons of its
        own (too early to cancel, an answer we do not know): either way get-sms is asked,
        and a code found is delivered instead (CODE). Refused with no code in sight: RETRY,
        nothing changed; but an expiry refused until REJECT_GRACE past the deadline ends
        here (see `_give_up`). Only `ProviderUnavailable` goes to the caller.
        """
        assert order.request_id is not None
        try:
            await self._client.set_status(order.request_id, Status.REJECT)
        except RequestGone:
            pass  # already gone at SMS-Man: nothing more to reject
        except ProviderUnavailable:
            raise
        except SmsManError as exc:
            return await self._reject_refused(order, exc, expire=expire)
        now = self.clock()
        moved = self._db.orders.expire if expire else self._db.orders.cancel
        if await moved(order.id, now=now):
            log.info(
                "order %s user %s: %s, hold released",
                order.id,
                order.user_id,
                "expired" if expire else "cancelled",
            )
            if expire:
                await self._tell_expired(order)
        await self._tell.card(order)
        return PollOutcome.CLOSED

    async def _reject_refused(
        self, order: Order, refusal: SmsManError, *, expire: bool
    ) -> PollOutcome:
        log.info(
            "order %s user %s: reject refused (%s: %s), looking for a code",
            order.id,
            order.user_id,
            refusal.code,
            refusal.message,
        )
        try:
            outcome = await self._poll(order)
        except ProviderUnavailable:
            raise
        except SmsManError as exc:  # get-sms refused too: no code in sight
            log.warning("order %s: get-sms after the refused reject: %s", order.id, exc.code)
            outcome = PollOutcome.WAITING
        if outcome is not PollOutcome.WAITING:
            return outcome
        deadline = order.expires_at if order.expires_at is not None else self.clock()
        if not expire or self.clock() < deadline + REJECT_GRACE:
            return PollOutcome.RETRY
        await self._give_up(order, refusal)
        return PollOutcome.CLOSED

    async def _give_up(self, order: Order, refusal: SmsManError) -> None:
        """SMS-Man kept refusing the reject of an order past its deadline and never showed
        a code: it ends here as expired (the hold goes back, the user is told) and the
        operator is alerted once (only the transition's winner gets here) to reconcile the
        request at SMS-Man by hand."""
        if await self._db.orders.expire(order.id, now=self.clock()):
            log.warning(
                "order %s user %s: SMS-Man refused the reject until %.0fs past the deadline"
                " (%s: %s); expired here, hold released; request %s needs a look by hand",
                order.id,
                order.user_id,
                REJECT_GRACE,
                refusal.code,
                refusal.message,
                order.request_id,
            )
            await self._tell_expired(order)
            if self._alerts is not None:
                self._alerts.reject_refused(order, f"{refusal.code or '?'}: {refusal.message}")
        await self._tell.card(order)

    async def _close(self, order: Order) -> None:
        assert order.request_id is not None
        try:
            await self._client.set_status(order.request_id, Status.CLOSE)
        except (WrongStatus, RequestGone):
            pass  # SMS-Man already ended it; we only record the end
        if await self._db.orders.finish(order.id, now=self.clock()):
            log.info("order %s user %s: finished", order.id, order.user_id)
        await self._tell.card(order)

    def countdown(self, order: Order) -> None:
        """The card's minutes changed (the poller): delivery edits it when it can."""
        self._tell.countdown(order)

    async def _tell_expired(self, order: Order) -> None:
        # The card first: by the time the notice shows, the card says so too (one chat's
        # pushes of one priority go out in the order they were queued).
        await self._tell.card(order)
        await self._tell.notice(order.chat_id, "order_expired", order=order.id)

    async def user_returned(self, user_id: int) -> None:
        """A user unblocked the bot: their codes held back meanwhile go out."""
        await self._tell.undelivered_codes(user_id)

    async def recover(self) -> list[Order]:
        """At start: purchases cut short by a crash fail (released, nothing charged).
        Returns the orders still open (waiting or received) for the poller."""
        still_open = []
        for order in await self._db.orders.list_open():
            if order.status is OrderStatus.PURCHASING:
                await self._fail(order, "interrupted by a restart")
            else:
                still_open.append(order)
        return still_open


def _lock_for(locks: weakref.WeakValueDictionary[int, asyncio.Lock], key: int) -> asyncio.Lock:
    lock = locks.get(key)
    if lock is None:
        lock = asyncio.Lock()
        locks[key] = lock
    return lock
