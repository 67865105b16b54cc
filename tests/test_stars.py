"""Stars top-ups end to end through the fake Telegram (real HTTP): invoice, pre-checkout,
credit exactly once, reconcile, refunds, and the books after a random mix."""

from __future__ import annotations

import random
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bot.app import App
from bot.services.stars import PayloadSigner, Quote, stars_credit
from bot.settings import Settings
from sandbox.smsman import FakeSmsMan
from sandbox.telegram import FakeMessage, FakeTelegram, FakeUser, StarPayment
from storage.models import LedgerKind
from storage.payments import PaymentSource, PaymentStatus
from tests.flows import reach_confirm, say
from tests.inprocess import running
from tests.test_shop import ADMIN, PRICE, SHOP

SettingsFactory = Callable[..., Settings]
# 100 Stars x 0.30 = 30.00 ₽: one number (29.00 ₽) fits, two do not.
STARS_SHOP: dict[str, Any] = {**SHOP, "stars_rate": "0.30", "topup_stars": "50,100,250"}
CREDIT_100 = 30_00


@pytest.fixture
def bot_settings(bot_settings_on_each_engine: SettingsFactory) -> SettingsFactory:
    """Every scenario here runs once on SQLite and once on PostgreSQL."""
    return bot_settings_on_each_engine


async def invoice_for(user: FakeUser, stars: int) -> FakeMessage:
    """/topup, then the amount's button: the invoice message."""
    menu = await say(user, "/topup", "Telegram Stars")
    before = len(user.invoices)
    await user.click(f"{stars} ⭐", message_id=menu.message_id)
    await user.wait_for(predicate=lambda m: m.invoice is not None and len(user.invoices) > before)
    return user.invoices[-1]


async def top_up(user: FakeUser, stars: int = 100) -> StarPayment:
    invoice = await invoice_for(user, stars)
    payment = await user.pay(invoice)
    assert payment.ok, payment
    await user.wait_for("Thank you", new_only=True)
    return payment


async def stars_rows(app: App, user_id: int) -> list[Any]:
    return [
        row
        for row in await app.db.wallet.history(user_id, limit=1000)
        if row.idempotency_key.startswith("stars")
    ]


def test_credit_is_rounded_down_to_a_minor_unit_without_float() -> None:
    assert stars_credit(100, Decimal("1.35")) == 135_00
    assert stars_credit(1, Decimal("0.015")) == 1  # 1.5 kopecks: never more than paid
    assert stars_credit(3, Decimal("0.333333")) == 99
    assert stars_credit(1, Decimal("0.001")) == 0  # such an amount is not offered


def test_payload_is_tamper_evident_and_fits_telegram() -> None:
    signer = PayloadSigner(b"k" * 32)
    quote = Quote(user_id=2**52 - 1, stars=10_000, amount=999_999_999_99, issued=2_000_000_000)
    payload = signer.sign(quote)
    assert len(payload.encode()) <= 128
    assert signer.verify(payload) == quote
    head, mac = payload.rsplit(".", 1)
    forged = head.replace(".99999999999.", ".99999999998.") + "." + mac
    assert signer.verify(forged) is None
    assert PayloadSigner(b"x" * 32).verify(payload) is None
    assert signer.verify("") is None and signer.verify(payload + "x") is None


async def test_top_up_end_to_end(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings(**STARS_SHOP)) as app:
        user = telegram.user(1)
        balance = await say(user, "/balance", "balance")
        assert any("Top up" in label for label in balance.labels)
        await user.click("Top up", message_id=balance.message_id)
        menu = await user.wait_for("Telegram Stars")
        assert menu.labels[:3] == ["50 ⭐ → 15.00 ₽", "100 ⭐ → 30.00 ₽", "250 ⭐ → 75.00 ₽"]

        invoice = await invoice_for(user, 100)
        [call] = telegram.calls_to("sendInvoice")
        assert call.params["currency"] == "XTR"
        assert [price["amount"] for price in call.params["prices"]] == [100]
        assert not call.params.get("provider_token")
        assert invoice.invoice is not None and invoice.invoice["total_amount"] == 100

        payment = await user.pay(invoice)
        assert payment.ok and payment.charge_id is not None
        thanks = await user.wait_for("Thank you")
        assert "30.00 ₽" in thanks.text
        assert await app.db.wallet.balance(1) == (CREDIT_100, 0)
        stored = await app.db.payments.get(payment.charge_id)
        assert stored is not None
        assert (stored.user_id, stored.stars, stored.amount) == (1, 100, CREDIT_100)
        assert stored.status is PaymentStatus.CREDITED and stored.source is PaymentSource.UPDATE
        [row] = await stars_rows(app, 1)
        assert row.kind is LedgerKind.CREDIT and row.idempotency_key == f"stars:{payment.charge_id}"

        # The money buys a number; a second one no longer fits, with a Top up button.
        confirm = await reach_confirm(user)
        await user.click("✅ Buy", message_id=confirm.message_id)
        await user.wait_for("Number: +")
        confirm = await reach_confirm(user)
        await user.click("✅ Buy", message_id=confirm.message_id)
        short = await user.wait_for("top up", new_only=True)
        assert any("Top up" in label for label in short.labels)
        assert await app.db.wallet.balance(1) == (CREDIT_100 - PRICE, PRICE)
        assert await app.db.wallet.check_invariant() == []


async def test_successful_payment_delivered_twice_credits_once(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings(**STARS_SHOP)) as app:
        user = telegram.user(1)
        invoice = await invoice_for(user, 100)
        payment = await user.pay(invoice, deliver=False)
        with telegram.hold_updates():  # both copies reach the bot in one batch
            telegram.deliver_payment(payment)
            telegram.deliver_payment(payment)
        await user.wait_for("Thank you")
        again = await user.wait_for("already in your wallet")
        assert "30.00 ₽" in again.text
        telegram.deliver_payment(payment)  # and once more, later
        await user.wait_for("already in your wallet", new_only=True)
        await telegram.wait_idle()
        assert await app.db.wallet.balance(1) == (CREDIT_100, 0)
        assert len(await stars_rows(app, 1)) == 1
        assert await app.db.wallet.check_invariant() == []


async def test_forged_payload_or_wrong_amount_is_refused_at_pre_checkout(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings(**STARS_SHOP)) as app:
        ann, bob = telegram.user(1), telegram.user(2)
        invoice = await invoice_for(ann, 100)
        payload = invoice.invoice_payload
        assert payload is not None
        head, mac = payload.rsplit(".", 1)
        parts = head.split(".")
        parts[3] = str(int(parts[3]) * 100)  # credit 100 times more
        forged = ".".join(parts) + "." + mac
        attempts = {
            "forged": await ann.pay(invoice, payload=forged),
            "garbage": await ann.pay(invoice, payload="topup:1:100:999999"),
            "amount": await ann.pay(invoice, total_amount=1),
            "currency": await ann.pay(invoice, currency="USD"),
        }
        # Bob pays Ann's invoice (forwarded to him): it is not his.
        bob_invoice = FakeMessage(
            bob._take_id(), bob.id, invoice.text, invoice.html, invoice.date,
            invoice=invoice.invoice, invoice_payload=payload,
        )  # fmt: skip
        bob._add(bob_invoice)
        attempts["other user"] = await bob.pay(bob_invoice)
        for name, attempt in attempts.items():
            assert not attempt.ok, name
            assert attempt.error_message and attempt.error_message != "timeout", name
            assert attempt.charge_id is None, name
        assert "not valid" in str(attempts["forged"].error_message)
        assert "does not match" in str(attempts["amount"].error_message)
        assert "another user" in str(attempts["other user"].error_message)

        # A banned user is refused at once, too.
        await say(telegram.user(ADMIN), "/ban 1", "banned")
        banned = await ann.pay(invoice)
        assert not banned.ok and "suspended" in str(banned.error_message)
        await telegram.wait_idle()
        assert telegram.star_transactions == []
        assert await app.db.wallet.balance(1) == (0, 0)
        assert await app.db.wallet.balance(2) == (0, 0)


async def test_pre_checkout_is_answered_fast(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings(**STARS_SHOP)):
        user = telegram.user(1)
        invoice = await invoice_for(user, 50)
        await user.pay(invoice)
        await user.wait_for("Thank you")
        [answer] = telegram.calls_to("answerPreCheckoutQuery")
        assert answer.ok and answer.params["ok"] is True
        query = telegram._pre_checkouts[str(answer.params["pre_checkout_query_id"])]
        # Well inside Telegram's 10 s: cheap checks, no provider call, no write.
        assert answer.time - query.created < 1.0


async def test_refund_of_spent_money_is_refused_with_a_clear_reply(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings(**STARS_SHOP)) as app:
        user, admin = telegram.user(1), telegram.user(ADMIN)
        payment = await top_up(user)
        confirm = await reach_confirm(user)
        await user.click("✅ Buy", message_id=confirm.message_id)
        await user.wait_for("Number: +")  # 29.00 of the 30.00 on hold
        reply = await say(admin, f"/refund 1 {payment.charge_id}", "Not refunded")
        assert "30.00 ₽" in reply.text and "1.00 ₽" in reply.text
        await telegram.wait_idle()
        assert telegram.calls_to("refundStarPayment") == []
        stored = await app.db.payments.get(str(payment.charge_id))
        assert stored is not None and stored.status is PaymentStatus.CREDITED
        assert await app.db.wallet.balance(1) == (CREDIT_100 - PRICE, PRICE)
        assert await app.db.wallet.check_invariant() == []


async def test_refund_telegram_refuses_changes_nothing_and_none_is_refunded_twice(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings(**STARS_SHOP)) as app:
        user, admin = telegram.user(1), telegram.user(ADMIN)
        payment = await top_up(user)
        charge = str(payment.charge_id)
        telegram.fail_next(
            "refundStarPayment", status=400, description="Bad Request: BALANCE_TOO_LOW"
        )
        reply = await say(admin, f"/refund 1 {charge}", "refused")
        assert "BALANCE_TOO_LOW" in reply.text
        stored = await app.db.payments.get(charge)
        assert stored is not None and stored.status is PaymentStatus.CREDITED
        assert await app.db.wallet.balance(1) == (CREDIT_100, 0)
        assert telegram.stars_balance == 100 and not payment.refunded
        assert await app.db.wallet.check_invariant() == []

        # Mistyped: another user's id, an unknown charge, no charge at all.
        assert "was not paid by" in (await say(admin, f"/refund 2 {charge}")).text
        assert "No top-up" in (await say(admin, "/refund 1 nosuchcharge")).text
        assert "Usage" in (await say(admin, "/refund 1")).text

        reply = await say(admin, f"/refund 1 {charge}", "Refunded")
        assert "100 Stars" in reply.text and "30.00 ₽" in reply.text
        notice = await user.wait_for("refunded to you")
        assert "0.00 ₽" in notice.text
        again = await say(admin, f"/refund 1 {charge}", "refunded already")
        assert "nothing changed" in again.text
        await telegram.wait_idle()
        assert len([c for c in telegram.calls_to("refundStarPayment") if c.ok]) == 1
        assert telegram.stars_balance == 0
        stored = await app.db.payments.get(charge)
        assert stored is not None and stored.status is PaymentStatus.REFUNDED
        assert stored.refund_seen_at is not None  # the refunded_payment message was recorded
        assert await app.db.wallet.balance(1) == (0, 0)
        assert await app.db.wallet.check_invariant() == []

        user_card = await say(admin, "/user 1", "Stars top-ups")
        assert charge in user_card.text and "refunded" in user_card.text
        stats = await say(admin, "/stats", "Stars top-ups")
        assert "Stars top-ups: 1 (100 Stars, 30.00 ₽); refunded: 1 (30.00 ₽)" in stats.text


async def test_reconciler_credits_a_payment_whose_update_never_came(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings(**STARS_SHOP)) as app:
        user = telegram.user(1)
        invoice = await invoice_for(user, 250)
        lost = await user.pay(invoice, deliver=False)  # Telegram took the Stars, no update
        assert lost.ok
        assert await app.stars.reconcile() == 1
        assert await app.stars.reconcile() == 0  # once
        assert await app.db.wallet.balance(1) == (75_00, 0)
        stored = await app.db.payments.get(str(lost.charge_id))
        assert stored is not None and stored.source is PaymentSource.RECONCILED
        telegram.deliver_payment(lost)  # the update after all: kind, and nothing moves
        await user.wait_for("already in your wallet")
        assert await app.db.wallet.balance(1) == (75_00, 0)
        assert await app.db.wallet.check_invariant() == []


async def test_topup_without_stars_rate_or_forged_amount(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings(**SHOP)):
        user = telegram.user(1)
        await say(user, "/topup", "not available")
        balance = await say(user, "/balance", "balance")
        assert not any("Top up" in label for label in balance.labels)
    telegram.clear_log()
    async with running(bot_settings(**STARS_SHOP)):
        menu = await say(user, "/topup", "Telegram Stars")
        callback = await user.click_data("t:7", message_id=menu.message_id)  # not offered
        answer = await user.wait_answered(callback)
        assert "outdated" in str(answer.get("text"))
        await telegram.wait_idle()
        assert telegram.calls_to("sendInvoice") == []
        support = await say(user, "/paysupport", "Payments and refunds")
        assert str(user.id) in support.text


async def test_invariant_holds_after_a_random_mix_with_restarts(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory, tmp_path: Path
) -> None:
    """Top-ups (some updates lost, some redelivered), purchases, refunds (some refused by
    Telegram) and restarts, at random; the books and Telegram's Stars agree after each."""
    rng = random.Random(15)
    users = [telegram.user(n) for n in (1, 2, 3)]
    admin = telegram.user(ADMIN)
    paid: list[StarPayment] = []
    counts: dict[str, int] = {}
    for _restart in range(4):
        async with running(bot_settings(**STARS_SHOP)) as app:
            await app.stars.reconcile()  # whatever was lost before the restart
            for _step in range(6):
                user = rng.choice(users)
                action = rng.choice(["topup", "topup", "lost", "twice", "buy", "refund"])
                counts[action] = counts.get(action, 0) + 1
                if action in ("topup", "lost", "twice"):
                    invoice = await invoice_for(user, rng.choice([50, 100, 250]))
                    payment = await user.pay(invoice, deliver=action != "lost")
                    paid.append(payment)
                    if action == "twice":
                        telegram.deliver_payment(payment)
                elif action == "buy":
                    confirm = await reach_confirm(user)
                    await user.click("✅ Buy", message_id=confirm.message_id)
                    await user.wait_for(
                        predicate=lambda m: "Number: +" in m.text or "top up" in m.text,
                        new_only=True,
                    )
                elif paid:
                    payment = rng.choice(paid)
                    if rng.random() < 0.3:
                        telegram.fail_next(
                            "refundStarPayment", status=400, description="Bad Request: REFUSED"
                        )
                    await say(admin, f"/refund {payment.user_id} {payment.charge_id}")
                await telegram.wait_idle()
                assert await app.db.wallet.check_invariant() == []
        # after the stop, on the next start the reconciler catches the lost ones
    async with running(bot_settings(**STARS_SHOP)) as app:
        await app.stars.reconcile()
        await telegram.wait_idle()
        assert await app.db.wallet.check_invariant() == []
        topped, refunded = 0, 0
        for payment in paid:
            stored = await app.db.payments.get(str(payment.charge_id))
            assert stored is not None, payment
            expected = PaymentStatus.REFUNDED if payment.refunded else PaymentStatus.CREDITED
            assert stored.status is expected, (payment, stored)
            topped += stored.stars
            refunded += stored.stars if payment.refunded else 0
        assert telegram.stars_balance == topped - refunded
    assert counts.get("lost", 0) and counts.get("refund", 0), counts


async def test_russian_user_sees_the_top_up_in_russian(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings(**STARS_SHOP)) as app:
        user = telegram.user(3, language_code="ru")
        menu = await say(user, "/topup", "звёздами Telegram")
        await user.click("100 ⭐", message_id=menu.message_id)
        await user.wait_for(predicate=lambda m: m.invoice is not None)
        [invoice] = user.invoices
        assert invoice.invoice is not None and "Пополнение" in invoice.invoice["title"]
        refused = await user.pay(invoice, total_amount=99)
        assert refused.error_message == (
            "Сумма не совпадает со счётом. Получите новый счёт через /topup."
        )
        await user.pay(invoice)
        thanks = await user.wait_for("Спасибо")
        assert "30.00 ₽" in thanks.text
        support = await say(user, "/paysupport", "Оплата и возвраты")
        assert "<" not in support.text
        assert await app.db.wallet.balance(3) == (CREDIT_100, 0)


async def test_refund_with_no_answer_is_settled_by_the_reconciler_once(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    """Telegram fails (5xx) on the first refund, and the second one's answer is lost after
    Telegram did it: both stay "refunding" (money off the wallet) until the reconciler asks
    again, and no charge is refunded twice."""
    async with running(bot_settings(**STARS_SHOP)) as app:
        app.stars.stuck_after = 0.0
        ann, bob, admin = telegram.user(1), telegram.user(2), telegram.user(ADMIN)
        first, second = await top_up(ann), await top_up(bob)
        telegram.fail_next("refundStarPayment", status=500)
        reply = await say(admin, f"/refund 1 {first.charge_id}", "did not answer")
        assert "/user 1" in reply.text
        stored = await app.db.payments.get(str(first.charge_id))
        assert stored is not None and stored.status is PaymentStatus.REFUNDING
        assert await app.db.wallet.balance(1) == (0, 0)
        assert await app.db.wallet.check_invariant() == []
        assert telegram.stars_balance == 200

        # Bob's refund goes through at Telegram, but the bot never hears it (a lost answer
        # and a lost refunded_payment update), as after a crash.
        assert await app.db.payments.begin_refund(str(second.charge_id)) is not None
        await app.bot.refund_star_payment(2, str(second.charge_id))
        telegram._updates[:] = [u for u in telegram._updates if "refunded_payment" not in str(u)]

        await app.stars.reconcile()
        await telegram.wait_idle()
        for payment in (first, second):
            stored = await app.db.payments.get(str(payment.charge_id))
            assert stored is not None and stored.status is PaymentStatus.REFUNDED, stored
        assert telegram.stars_balance == 0
        refunds = [c for c in telegram.calls_to("refundStarPayment") if c.ok]
        assert len(refunds) == 2  # Ann's asked again; Bob's seen in the transactions
        assert await app.db.wallet.balance(1) == (0, 0)
        assert await app.db.wallet.balance(2) == (0, 0)
        assert await app.db.wallet.check_invariant() == []
        await app.stars.reconcile()  # nothing more
        assert len([c for c in telegram.calls_to("refundStarPayment") if c.ok]) == 2
