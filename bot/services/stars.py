"""Wallet top-ups paid in Telegram Stars: quotes, pre-checkout, credit once, reconcile, refund.

The quote travels in the invoice payload, signed (HMAC-SHA256 with a random key kept in
the database, so it survives a token change and is shared by every replica): the user, the
Stars, the credit in minor units and when it was issued. Pre-checkout only checks that
signature and a few fields (no provider call, no write), so it answers well inside
Telegram's 10 seconds. The credit is the quoted one, never recomputed from a float.

Money moves in storage/payments.py, keyed by telegram_payment_charge_id; this module
decides and talks to Telegram (getStarTransactions, refundStarPayment).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import re
import secrets
import time
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from enum import StrEnum

from aiogram import Bot
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramNetworkError,
    TelegramServerError,
)
from aiogram.types import StarTransaction, TransactionPartnerUser

from bot.services.money import MINOR_PER_UNIT
from bot.settings import Settings
from storage.db import Database
from storage.errors import InsufficientFunds
from storage.payments import Payment, PaymentSource, PaymentStatus

log = logging.getLogger(__name__)

STARS = "XTR"
KEY_NAME = "stars_payload_key"
PAYLOAD_VERSION = "s1"
QUOTE_TTL = 24 * 3600.0  # an invoice older than this is refused at pre-checkout
RECONCILE_EVERY = 180.0
PAGE = 100  # getStarTransactions' largest page
MAX_PAGES = 200  # one pass reads at most 20,000 transactions
STUCK_AFTER = 60.0  # a refund still "refunding" this long after its start was cut short
_MAC_CHARS = 22  # 132 bits of the HMAC, base64url
_PAYLOAD = re.compile(
    rf"^{PAYLOAD_VERSION}\.([0-9]{{1,16}})\.([0-9]{{1,5}})\.([0-9]{{1,12}})\.([0-9]{{1,12}})"
    rf"\.([A-Za-z0-9_-]{{{_MAC_CHARS}}})$"
)


def stars_credit(stars: int, rate: Decimal) -> int:
    """What `stars` credit at `rate` (CURRENCY per Star), in minor units.

    Rounded down to a whole minor unit: a wallet is never credited more than was paid.
    """
    exact = Decimal(stars) * rate * MINOR_PER_UNIT
    return int(exact.to_integral_value(rounding=ROUND_DOWN))


@dataclass(frozen=True, slots=True)
class Quote:
    user_id: int
    stars: int
    amount: int  # minor units credited
    issued: int  # Unix seconds


class PayloadSigner:
    """Quote <-> invoice payload (at most ~75 ASCII bytes; Telegram allows 128)."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, body: str) -> str:
        digest = hmac.new(self._key, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode()[:_MAC_CHARS]

    def sign(self, quote: Quote) -> str:
        body = f"{PAYLOAD_VERSION}.{quote.user_id}.{quote.stars}.{quote.amount}.{quote.issued}"
        return f"{body}.{self._mac(body)}"

    def verify(self, payload: str) -> Quote | None:
        """The quote, or None if the payload is not one we signed (or was altered)."""
        match = _PAYLOAD.fullmatch(payload)
        if match is None:
            return None
        body = payload.rsplit(".", 1)[0]
        if not hmac.compare_digest(self._mac(body), match[5]):
            return None
        return Quote(int(match[1]), int(match[2]), int(match[3]), int(match[4]))


class Verdict(StrEnum):
    """Pre-checkout: may this payment go ahead?"""

    OK = "ok"
    DISABLED = "disabled"  # no Stars top-ups (STARS_RATE unset or private mode)
    NOT_OURS = "not_ours"  # unsigned, altered or not an XTR invoice
    OTHER_USER = "other_user"  # someone else's invoice
    AMOUNT = "amount"  # the amount differs from the quote
    EXPIRED = "expired"  # older than QUOTE_TTL
    BANNED = "banned"


@dataclass(frozen=True, slots=True)
class CreditResult:
    payment: Payment | None  # None: the payment could not be priced (see the log)
    new: bool  # False: this charge was credited before, nothing changed now
    available: int


class RefundOutcome(StrEnum):
    REFUNDED = "refunded"
    NOT_FOUND = "not_found"
    OTHER_USER = "other_user"
    ALREADY = "already"  # refunded before
    IN_PROGRESS = "in_progress"
    SPENT = "spent"  # the wallet no longer holds the amount: nothing done
    REFUSED = "refused"  # Telegram refused: the money is back in the wallet
    UNKNOWN = "unknown"  # no answer from Telegram: settled by the reconciler


@dataclass(frozen=True, slots=True)
class RefundResult:
    outcome: RefundOutcome
    payment: Payment | None = None
    available: int = 0
    error: str = ""


class StarsService:
    def __init__(self, settings: Settings, db: Database, bot: Bot) -> None:
        self._settings = settings
        self._db = db
        self._bot = bot
        self._signer: PayloadSigner | None = None
        self._reconcile_lock = asyncio.Lock()
        self.stuck_after = STUCK_AFTER

    @property
    def currency(self) -> str:
        return self._settings.currency

    @property
    def enabled(self) -> bool:
        return self._settings.stars_enabled

    async def load(self) -> None:
        """The payload key: made once (random) and kept in the database."""
        await self._db.kv.set_if_absent(KEY_NAME, secrets.token_hex(32))
        key = await self._db.kv.get(KEY_NAME)
        assert key is not None
        self._signer = PayloadSigner(bytes.fromhex(key))

    @property
    def signer(self) -> PayloadSigner:
        if self._signer is None:
            raise RuntimeError("StarsService.load() was not awaited")
        return self._signer

    # -- quotes and invoices ---------------------------------------------------------------

    def options(self) -> list[tuple[int, int]]:
        """(Stars, credit in minor units) for each amount offered; those crediting
        nothing at this rate are left out."""
        rate = self._settings.stars_rate
        if not self.enabled or rate is None:
            return []
        found = [(stars, stars_credit(stars, rate)) for stars in self._settings.topup_stars]
        return [(stars, amount) for stars, amount in found if amount > 0]

    def quote(self, user_id: int, stars: int, now: float | None = None) -> Quote | None:
        """A quote for one of the amounts offered; None for any other (a forged button)."""
        for offered, amount in self.options():
            if offered == stars:
                issued = int(time.time() if now is None else now)
                return Quote(user_id, stars, amount, issued)
        return None

    def payload(self, quote: Quote) -> str:
        return self.signer.sign(quote)

    # -- pre-checkout ----------------------------------------------------------------------

    async def pre_checkout(
        self,
        *,
        user_id: int,
        currency: str,
        total_amount: int,
        payload: str,
        banned: bool,
        now: float | None = None,
    ) -> Verdict:
        """Cheap checks only: Telegram waits for the answer at most 10 seconds."""
        if not self.enabled:
            return Verdict.DISABLED
        if banned:
            return Verdict.BANNED
        quote = self.signer.verify(payload)
        if quote is None or currency != STARS:
            return Verdict.NOT_OURS
        if quote.user_id != user_id:
            return Verdict.OTHER_USER
        if total_amount != quote.stars:
            return Verdict.AMOUNT
        if (time.time() if now is None else now) - quote.issued > QUOTE_TTL:
            return Verdict.EXPIRED
        return Verdict.OK

    # -- credit ----------------------------------------------------------------------------

    def _price(self, user_id: int, stars: int, payload: str) -> int | None:
        """The credit for a payment Telegram took: the quote's when the payload is ours
        for this user and amount, else (never expected) the Stars at today's rate."""
        quote = self.signer.verify(payload)
        if quote is not None and quote.user_id == user_id and quote.stars == stars:
            return quote.amount
        rate = self._settings.stars_rate
        log.warning("payment of %s Stars by user %s: not our payload", stars, user_id)
        return stars_credit(stars, rate) if rate is not None else None

    async def credit(
        self,
        *,
        user_id: int,
        charge_id: str,
        stars: int,
        payload: str,
        source: PaymentSource = PaymentSource.UPDATE,
    ) -> CreditResult:
        """Credit a paid invoice once per charge id; again: a no-op that says so."""
        known = await self._db.payments.get(charge_id)
        if known is not None:
            available, _held = await self._db.wallet.balance(known.user_id)
            return CreditResult(known, False, available)
        amount = self._price(user_id, stars, payload)
        if amount is None or amount <= 0:
            log.error("payment %s user %s: %s Stars cannot be priced", charge_id, user_id, stars)
            return CreditResult(None, False, (await self._db.wallet.balance(user_id))[0])
        payment, new = await self._db.payments.credit(
            charge_id=charge_id,
            user_id=user_id,
            stars=stars,
            amount=amount,
            currency=self._settings.currency,
            payload=payload,
            source=source,
        )
        if new:
            log.info(
                "payment %s user %s: %s Stars, credited %s (%s)",
                charge_id,
                user_id,
                stars,
                amount,
                source.value,
            )
        available, _held = await self._db.wallet.balance(payment.user_id)
        return CreditResult(payment, new, available)

    # -- reconcile -------------------------------------------------------------------------

    async def reconcile(self) -> int:
        """Credit every incoming payment Telegram lists that the ledger lacks; settle refunds
        cut short by a crash and refunds made elsewhere. Returns how many were credited."""
        if not self.enabled:
            return 0
        async with self._reconcile_lock:
            credited = 0
            refunded: set[str] = set()
            for page in range(MAX_PAGES):
                result = await self._bot.get_star_transactions(offset=page * PAGE, limit=PAGE)
                transactions = result.transactions
                credited += await self._credit_missing(transactions)
                refunded.update(
                    tx.id for tx in transactions if _partner_user(tx.receiver) is not None
                )
                if len(transactions) < PAGE:
                    break
            else:
                log.warning("reconcile: stopped after %s transactions", MAX_PAGES * PAGE)
            await self._settle_refunds(refunded)
            return credited

    async def _credit_missing(self, transactions: list[StarTransaction]) -> int:
        incoming = [
            (tx, partner)
            for tx in transactions
            if (partner := _partner_user(tx.source)) is not None and tx.amount > 0
        ]
        known = await self._db.payments.known(tx.id for tx, _ in incoming)
        credited = 0
        for tx, partner in incoming:
            if tx.id in known:
                continue
            result = await self.credit(
                user_id=partner.user.id,
                charge_id=tx.id,
                stars=tx.amount,
                payload=partner.invoice_payload or "",
                source=PaymentSource.RECONCILED,
            )
            if result.new and result.payment is not None:
                credited += 1
                log.info(
                    "payment %s user %s: reconciled, %s Stars credited %s",
                    tx.id,
                    partner.user.id,
                    tx.amount,
                    result.payment.amount,
                )
        return credited

    async def _settle_refunds(self, refunded_at_telegram: set[str]) -> None:
        for charge_id in refunded_at_telegram:
            payment = await self._db.payments.get(charge_id)
            if payment is not None and payment.status is not PaymentStatus.REFUNDED:
                await self.refunded_by_telegram(charge_id)  # a refund whose answer was lost
        for payment in await self._db.payments.stuck_refunds(time.time() - self.stuck_after):
            result = await self._send_refund(payment)
            log.info("payment %s: unfinished refund settled: %s", payment.charge_id, result.outcome)

    async def run_reconciler(self, every: float = RECONCILE_EVERY) -> None:
        """At start, then every `every` seconds, for as long as the bot runs."""
        if not self.enabled:
            return
        while True:
            try:
                await self.reconcile()
            except TelegramAPIError as exc:
                log.warning("reconcile: Telegram failed: %s", type(exc).__name__)
            except Exception:  # the next pass may succeed; never let the loop die
                log.exception("reconcile failed")
            await asyncio.sleep(every)

    # -- refunds ---------------------------------------------------------------------------

    async def refund(self, user_id: int, charge_id: str) -> RefundResult:
        """Take the credit off the available balance, then ask Telegram to refund it."""
        payment = await self._db.payments.get(charge_id)
        if payment is None:
            return RefundResult(RefundOutcome.NOT_FOUND)
        if payment.user_id != user_id:
            return RefundResult(RefundOutcome.OTHER_USER, payment)
        try:
            started = await self._db.payments.begin_refund(charge_id)
        except InsufficientFunds as exc:
            return RefundResult(RefundOutcome.SPENT, payment, exc.available)
        if started is None:
            current = await self._db.payments.get(charge_id) or payment
            outcome = (
                RefundOutcome.IN_PROGRESS
                if current.status is PaymentStatus.REFUNDING
                else RefundOutcome.ALREADY
            )
            return RefundResult(outcome, current)
        return await self._send_refund(started)

    async def _send_refund(self, payment: Payment) -> RefundResult:
        try:
            await self._bot.refund_star_payment(
                user_id=payment.user_id, telegram_payment_charge_id=payment.charge_id
            )
        except (TelegramNetworkError, TelegramServerError) as exc:
            # Maybe refunded, maybe not: stays "refunding" until the reconciler asks again
            # (Telegram refuses a second refund of one charge, so asking again is safe).
            log.warning("payment %s: refund outcome unknown (%s)", payment.charge_id, exc)
            return RefundResult(RefundOutcome.UNKNOWN, payment)
        except TelegramBadRequest as exc:
            if "ALREADY_REFUNDED" in exc.message.upper():
                await self._db.payments.finish_refund(payment.charge_id)
                return await self._refund_result(RefundOutcome.REFUNDED, payment)
            await self._db.payments.cancel_refund(payment.charge_id)
            log.warning("payment %s: Telegram refused the refund", payment.charge_id)
            return await self._refund_result(RefundOutcome.REFUSED, payment, exc.message)
        except TelegramAPIError as exc:
            await self._db.payments.cancel_refund(payment.charge_id)
            log.warning("payment %s: refund failed: %s", payment.charge_id, type(exc).__name__)
            return await self._refund_result(RefundOutcome.REFUSED, payment, exc.message)
        await self._db.payments.finish_refund(payment.charge_id)
        log.info("payment %s user %s: refunded", payment.charge_id, payment.user_id)
        return await self._refund_result(RefundOutcome.REFUNDED, payment)

    async def _refund_result(
        self, outcome: RefundOutcome, payment: Payment, error: str = ""
    ) -> RefundResult:
        available, _held = await self._db.wallet.balance(payment.user_id)
        current = await self._db.payments.get(payment.charge_id) or payment
        return RefundResult(outcome, current, available, error)

    async def refunded_by_telegram(self, charge_id: str) -> Payment | None:
        """Telegram says the Stars went back (a refunded_payment message, or a refund in
        getStarTransactions): record it; a refund we did not start takes the money off."""
        await self._db.payments.note_refund_seen(charge_id)
        payment = await self._db.payments.get(charge_id)
        if payment is None:
            log.warning("refund of unknown payment %s", charge_id)
            return None
        if payment.status is PaymentStatus.REFUNDING:
            await self._db.payments.finish_refund(charge_id)
        elif payment.status is PaymentStatus.CREDITED:
            await self._db.payments.refunded_elsewhere(charge_id)
            log.warning("payment %s user %s: refunded outside /refund", charge_id, payment.user_id)
        return await self._db.payments.get(charge_id)


def _partner_user(partner: object) -> TransactionPartnerUser | None:
    """A user paying an invoice of ours (source) or getting a refund (receiver)."""
    if isinstance(partner, TransactionPartnerUser) and partner.transaction_type in (
        "invoice_payment",
        None,
    ):
        return partner
    return None
