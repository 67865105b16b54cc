"""Admin commands end to end: /credit, /debit, /user, /stats, /markup and the balance alert."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal

import pytest

from bot.settings import Settings
from sandbox.smsman import FakeSmsMan
from sandbox.telegram import FakeTelegram, FakeUser
from storage.models import LedgerKind
from tests.inprocess import running
from tests.test_shop import ADMIN, SHOP, buy, credit, say

pytestmark = pytest.mark.asyncio

SettingsFactory = Callable[..., Settings]
NOBODY = 5555  # never wrote to the bot

MALFORMED = [
    "/credit",
    f"/credit {NOBODY}",
    f"/credit {NOBODY} abc",
    f"/credit {NOBODY} -5",
    f"/credit {NOBODY} 0",
    f"/credit {NOBODY} 0.00",
    f"/credit {NOBODY} 0.001",
    f"/credit {NOBODY} 1.234",
    f"/credit {NOBODY} 1e5",
    f"/credit {NOBODY} NaN",
    f"/credit {NOBODY} Infinity",
    f"/credit {NOBODY} 1000000.01",
    f"/credit {NOBODY} 99999999999",
    f"/credit {NOBODY} 1,000,000",
    f"/credit {NOBODY} 10.5.5",
    f"/credit {NOBODY} .5",
    f"/credit {NOBODY} 5.",
    f"/credit {NOBODY} ١٠",  # Arabic-Indic digits: Decimal would read them
    f"/credit {NOBODY} ５",  # a fullwidth digit
    f"/credit {NOBODY} +5",
    "/credit abc 10",
    "/credit -5 10",
    "/credit 0 10",
    "/credit ³ 10",  # int() refuses it, str.isdigit() does not
    "/credit 4503599627370496 10",  # 2**52: beyond any Telegram id
    f"/debit {NOBODY} abc",
    f"/debit {NOBODY} -1",
    f"/debit {NOBODY}",
    "/debit x 1",
]


async def replies(user: FakeUser, texts: list[str]) -> list[str]:
    """Send each text, waiting for one new reply to each; the replies' texts in order."""
    out = []
    for text in texts:
        out.append((await say(user, text)).text)
    return out


async def test_malformed_amounts_and_ids_are_refused_and_change_nothing(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings(**SHOP)) as app:
        admin = telegram.user(ADMIN)
        answers = await replies(admin, MALFORMED)
        for command, answer in zip(MALFORMED, answers, strict=True):
            assert "Credited" not in answer and "Took" not in answer, (command, answer)
            assert any(
                hint in answer for hint in ("Usage", "is not an amount", "is not a Telegram user")
            ), (command, answer)
        assert await app.db.users.get(NOBODY) is None
        assert await app.db.wallet.history(NOBODY) == []
        assert await app.db.wallet.check_invariant() == []

        # The bound itself is accepted: a million units, two decimals, either separator.
        ok = await say(admin, f"/credit {NOBODY} 1000000", "Credited")
        assert "1 000 000.00 ₽" in ok.text
        ok = await say(admin, f"/credit {NOBODY} 0,01 tip", "Credited")
        assert await app.db.wallet.balance(NOBODY) == (1_000_000_01, 0)
    assert telegram.errors == []


async def test_credit_and_debit_move_money_once_per_command_message(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings(**SHOP)) as app:
        admin = telegram.user(ADMIN)
        await admin.send("/credit 1 100 <b>bank</b> & co")
        reply = await admin.wait_for("Credited")
        assert "100.00 ₽" in reply.text and "not used the bot yet" in reply.text
        # Telegram hands the same update out again (a crash before the offset moved on).
        sent = await admin.send("/credit 1 100 again")
        await admin.wait_for("Credited", new_only=True)
        telegram.put_update({"message": sent})
        await admin.wait_for("carried out already")
        assert await app.db.wallet.balance(1) == (200_00, 0)

        took = await say(admin, "/debit 1 30.50 correction", "Took")
        assert "30.50 ₽" in took.text and "169.50 ₽" in took.text
        short = await say(admin, "/debit 1 169.51", "Nothing taken")
        assert "169.50 ₽" in short.text
        assert await app.db.wallet.balance(1) == (169_50, 0)

        # Money on hold for a waiting order cannot be debited.
        await buy(telegram.user(1))
        short = await say(admin, "/debit 1 169.50", "Nothing taken")
        assert "140.50 ₽" in short.text
        await say(admin, "/debit 1 140.50", "Took")
        assert await app.db.wallet.balance(1) == (0, 29_00)

        notes = [row.note for row in await app.db.wallet.history(1, limit=100)]
        assert "<b>bank</b> & co" in notes
        assert await app.db.wallet.check_invariant() == []
    assert telegram.errors == []


async def test_wallet_commands_in_private_mode_explain_and_change_nothing(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings()) as app:
        admin = telegram.user(ADMIN)
        for text in ("/credit 1 100", "/debit 1 5", "/markup 10"):
            reply = await say(admin, text)
            assert "only in shop mode" in reply.text
        assert await app.db.wallet.history(1) == []
        assert await app.db.kv.get("markup_percent") is None
    assert telegram.errors == []


async def test_markup_validation(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings(**SHOP)) as app:
        admin = telegram.user(ADMIN)
        for bad in ("-1", "1000.01", "1001", "12.345", "abc", "1e2", "NaN", "50%", "١٠"):
            reply = await say(admin, f"/markup {bad}", "is not a markup")
            assert "0 to 1000" in reply.text
        assert await app.db.kv.get("markup_percent") is None
        for good, stored, shown in (("0", "0", "100.00 ₽"), ("1000", "1000", "1 100.00 ₽")):
            reply = await say(admin, f"/markup {good}", "Markup")
            assert shown in reply.text
            assert await app.db.kv.get("markup_percent") == stored
        await say(admin, "/markup 7,25", "Markup: 7.25%")
        assert await app.db.kv.get("markup_percent") == "7.25"
    assert telegram.errors == []


async def test_user_command_shows_wallet_orders_and_ledger(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    smsman.add_application(777, "Tom & Jerry <VIP>")
    smsman.set_price(1, 777, "5.00", 3)
    async with running(bot_settings(**SHOP)) as app:
        admin, user = telegram.user(ADMIN), telegram.user(1)
        await say(admin, "/credit 1 50 welcome <gift>", "Credited")
        await buy(user, service="Tom & Jerry")
        order = (await app.db.orders.list_for_user(1))[0]
        assert order.request_id is not None
        code = smsman.deliver_code(order.request_id)
        await user.wait_for(code)

        card = await say(admin, "/user 1", "User")
        text = card.text
        assert "Balance: 44.00 ₽; on hold: 0.00 ₽" in text  # 5.00 x 1.125 -> 6.00
        assert f"#{order.id}" in text and "Tom & Jerry <VIP>" in text and "code received" in text
        for kind in ("credit +50.00 ₽", "hold -6.00 ₽", "capture 0.00 ₽", "welcome <gift>"):
            assert kind in text, text

        missing = await say(admin, f"/user {NOBODY}", "never used the bot")
        assert str(NOBODY) in missing.text
        usage = await say(admin, "/user me", "Usage")
        assert "/user USER_ID" in usage.text
    assert telegram.errors == []


async def test_stats_counts_codes_refunds_revenue_and_margin(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings(**SHOP)) as app:
        user = telegram.user(1)
        await credit(telegram, 1, "100")
        await buy(user)  # Russia/Telegram: price 29.00, cost 25.00
        first = (await app.db.orders.list_for_user(1))[0]
        assert first.request_id is not None
        code = smsman.deliver_code(first.request_id)
        await user.wait_for(code)
        card = await buy(user, "India")  # cost 8.90, price 10.02 -> 11.00; cancelled
        await user.click("Cancel", message_id=card.message_id)
        await user.wait_for("cancelled")

        stats = (await say(telegram.user(ADMIN), "/stats", "Today")).text
        today, week = stats.split("Last 7 days")
        for period in (today, week):
            assert "2 orders; 1 got a code (50%)" in period, stats
            assert "cancelled: 1" in period
            assert "Refunds: 1 (11.00 ₽)" in period
            assert "Sales: 1; revenue 29.00 ₽; cost 25.00 ₽; margin 4.00 ₽" in period
        assert f"SMS-Man balance: {smsman.balance:.2f}" in stats
        assert "Markup: 12.5%" in stats

        # Yesterday's orders count in the week only.
        summary_week = await app.db.stats.summary(0)
        assert summary_week.created == 2
        later = await app.admin.stats_command(now=first.created_at + 86400)
        assert later.today.orders.created == 0 and later.week.orders.created == 2
    assert telegram.errors == []


async def test_stats_in_private_mode_without_money_and_with_provider_down(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings()):
        smsman.override("get-balance", {"error_code": "server_error", "error_msg": "Try later"})
        stats = (await say(telegram.user(ADMIN), "/stats", "Today")).text
        assert "0 orders; 0 got a code (0%)" in stats
        assert "Revenue" not in stats and "Refunds" not in stats
        assert "SMS-Man balance: unavailable" in stats
    assert telegram.errors == []


async def test_low_provider_balance_is_reported_once_per_crossing(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    settings = bot_settings(low_balance_alert="50")
    admin = telegram.user(ADMIN, started=True)
    never_wrote = telegram.user(2000)  # an admin the bot may not write to first

    def alerts() -> int:
        return sum("balance is low" in m.text for m in admin.messages)

    async with running(settings.model_copy(update={"admin_ids": [ADMIN, 2000]})) as app:
        await app.db.users.upsert(ADMIN, "en")  # as if the admin had written before
        smsman.balance = Decimal("10.00")
        # The watch and an admin's /stats notice it at the same time: one alert.
        await asyncio.gather(
            app.admin.check_balance(), app.admin.check_balance(), app.admin.stats_command()
        )
        alert = await admin.wait_for("balance is low")
        assert "10.00" in alert.text and "50.00" in alert.text
        await app.admin.check_balance()
        await app.delivery.drained()
        assert alerts() == 1

        smsman.balance = Decimal("80.00")  # topped up: the alert re-arms
        await app.admin.check_balance()
        smsman.balance = Decimal("49.99")
        await app.admin.check_balance()
        await app.delivery.drained()
        assert alerts() == 2
    async with running(settings.model_copy(update={"admin_ids": [ADMIN, 2000]})) as app:
        await app.admin.check_balance()  # still low after a restart: no repeat
        await app.delivery.drained()
        assert alerts() == 2
    assert never_wrote.messages == []
    assert telegram.errors == []


async def test_admin_ledger_rows_are_credits_and_debits(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings(**SHOP)) as app:
        admin = telegram.user(ADMIN)
        await say(admin, "/credit 7 12.30", "Credited")
        await say(admin, "/debit 7 2.30", "Took")
        rows = await app.db.wallet.history(7)
        assert [(r.kind, r.amount) for r in rows] == [
            (LedgerKind.DEBIT, -2_30),
            (LedgerKind.CREDIT, 12_30),
        ]
        assert all(str(ADMIN) in r.idempotency_key for r in rows)
    assert telegram.errors == []
