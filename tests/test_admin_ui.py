"""The admin replies are rendered in bot/ui/admin.py, escaped; bot/services builds no HTML."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from bot.services.admin import (
    AdminReply,
    BanOutcome,
    MarkupReport,
    Moved,
    Period,
    Refusal,
    Refused,
    StatsReport,
    UserFlag,
    UserReport,
)
from bot.ui import admin as admin_ui
from bot.ui.i18n import make_i18n
from sandbox.telegram_html import parse_html
from storage.models import LedgerKind, LedgerRow, Money, Order, OrderStatus, User
from storage.payments import Payment, PaymentSource, PaymentStatus, PaymentSummary
from storage.stats import Summary

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = '<script>alert("x")</script> & <b>bold</b> &amp;'
# Telegram's HTML tags (https://core.telegram.org/bots/api#html-style), opening or closing.
TAG = re.compile(
    r"</?(b|strong|i|em|u|ins|s|strike|del|code|pre|a|span|tg-spoiler|tg-emoji|"
    r"blockquote)\b[^<>]*>",
    re.IGNORECASE,
)
RENDERING_MODULES = {"html", "markupsafe", "bot.ui"}


# -- bot/services neither imports html nor builds HTML ------------------------------------


def html_in(path: Path) -> list[str]:
    """What in a module renders HTML: an import of html (or bot.ui), a string with a tag."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module]
        else:
            modules = []
        found += [
            f"{path.name}:{node.lineno} imports {m}"
            for m in modules
            if m.split(".")[0] in RENDERING_MODULES or m.startswith("bot.ui")
        ]
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and TAG.search(node.value)
        ):
            found.append(f"{path.name}:{node.lineno} builds HTML: {node.value[:40]!r}")
    return found


def test_services_never_import_html_nor_build_html() -> None:
    paths = sorted((ROOT / "bot" / "services").rglob("*.py"))
    assert len(paths) > 5
    assert [line for path in paths for line in html_in(path)] == []


def test_the_html_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import html\nfrom html import escape\nimport bot.ui.texts\n"
        'X = "<b>{user}</b>"\nY = f"<code>{1}</code>"\nZ = "a < b > c"\n',
        encoding="utf-8",
    )
    lines = {int(line.split(":")[1].split()[0]) for line in html_in(bad)}
    assert lines == {1, 2, 3, 4, 5}  # "a < b > c" is no tag


# -- the replies escape whatever came from outside -----------------------------------------


@pytest.fixture(autouse=True)
def english() -> Iterator[None]:
    with make_i18n().use_locale("en"):
        yield


def plain(text: str) -> str:
    """The text as Telegram shows it; raises if Telegram would refuse the HTML."""
    return parse_html(text)[0]


def order(title: str) -> Order:
    return Order(
        id=7, user_id=1, chat_id=1, request_id=99, country_id=0, country_title=title,
        service_id=1, service_title=title, number="79001234567", price=6_00, cost=5_00,
        currency="RUB", status=OrderStatus.RECEIVED, money=Money.CAPTURED, created_at=0.0,
        expires_at=None, next_poll_at=None, message_id=None, card_text=None,
        multiple_sms=False, want_more=False, poll_failures=0, idempotency_key="k",
    )  # fmt: skip


def test_user_report_escapes_titles_notes_and_charge_ids() -> None:
    report = UserReport(
        user=User(id=1, language="en", first_seen=0.0, blocked=True, banned=True, balance=0),
        flags=(UserFlag.BANNED, UserFlag.BLOCKED),
        wallet=(44_00, 0),
        orders=[order(HOSTILE)],
        payments=[
            Payment(
                id=1, charge_id=HOSTILE, user_id=1, stars=50, amount=50_00, currency="RUB",
                payload="p", source=PaymentSource.UPDATE, status=PaymentStatus.REFUNDING,
                refund_attempts=0, created_at=0.0, updated_at=0.0, refund_seen_at=None,
            )
        ],
        ledger=[
            LedgerRow(
                id=1, user_id=1, amount=50_00, kind=LedgerKind.CREDIT, order_id=None,
                note=HOSTILE, created_at=0.0, idempotency_key="k",
            )
        ],
    )  # fmt: skip
    text = plain(admin_ui.reply(report, "RUB"))
    assert f"#7 1970-01-01 00:00 {HOSTILE}, {HOSTILE}: code received" in text
    assert f"50 ⭐ → 50.00 ₽: refund in progress — {HOSTILE}" in text
    assert f"credit +50.00 ₽ — {HOSTILE}" in text
    assert "Balance: 44.00 ₽; on hold: 0.00 ₽" in text
    assert "— banned, blocked the bot" in text


def test_refusals_quote_what_was_typed_escaped_and_short() -> None:
    for reason in (Refusal.BAD_USER_ID, Refusal.BAD_AMOUNT, Refusal.BAD_PERCENT):
        text = plain(admin_ui.reply(Refused("credit", reason, typed=HOSTILE), "RUB"))
        assert f"“{HOSTILE[:32]}”" in text, text
        assert HOSTILE[:33] not in text


def test_every_reply_is_html_telegram_accepts() -> None:
    summary = Summary(0.0, 3, 1, 1, 1, 0, 0, 1, 6_00, 1, 29_00, 25_00, 4_00)
    period = Period(summary, PaymentSummary(1, 50_00, 50, 0, 0, 0))
    results: list[AdminReply] = [
        *(Refused(c, r, typed=HOSTILE) for c in ("credit", "markup", "ban") for r in Refusal),
        Moved("credit", 1, 100_00, 200_00, newcomer=True),
        Moved("debit", 1, 30_50, 169_50, newcomer=False),
        StatsReport(period, period, Decimal("12.5"), Decimal("12.5"), shop=True),
        StatsReport(period, period, None, None, shop=False),
        BanOutcome(1, banned=True, changed=False),
        MarkupReport(Decimal("7.25"), changed=False, overridden=True, example_cost=100_00,
                     example_price=107_25),
    ]  # fmt: skip
    for result in results:
        assert plain(admin_ui.reply(result, "RUB")), result
