"""Handlers under any input: random callback data and text, huge and negative numbers,
unicode, other users' order ids. No unhandled exception, no change of anyone else's state,
every callback answered, and Telegram never refuses what the bot sends."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox.smsman import FakeSmsMan
from sandbox.telegram import FakeTelegram
from storage.models import OrderStatus
from tests.conftest import BOT_TOKEN, SMSMAN_TOKEN, make_settings
from tests.inprocess import running

OWNER, FUZZER = 1, 2

numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2**31, 2**63, -(2**63)]),
)
prefixes = st.sampled_from(["m", "cp", "c", "sp", "s", "b", "o", "l", "zz", ""])
fields = st.one_of(
    numbers.map(str),
    st.sampled_from(
        [
            "buy",
            "home",
            "orders",
            "bal",
            "help",
            "lang",
            "show",
            "cancel",
            "fin",
            "more",
            "ru",
            "en",
            "xx",
            "1",
            "0",
            "true",
            "false",
            "",
        ]
    ),
    st.text(max_size=8),
)
callback_data = st.one_of(
    st.builds(lambda p, f: ":".join([p, *f]), prefixes, st.lists(fields, max_size=5)),
    st.text(min_size=1, max_size=40),
).filter(lambda data: 0 < len(data.encode()) <= 64)
texts = st.one_of(
    st.text(min_size=1, max_size=300).filter(lambda t: t.strip() != ""),
    st.sampled_from(
        [
            "/credit 1 100",
            "/debit 2 5",
            "/ban 1",
            "/markup -5",
            "/stats",
            "/user 1",
            "/start",
            "/buy",
            "/orders",
            "/balance",
            "/help",
            "/language",
            "росс",
            "<b>bold</b> & <i>",
            "9" * 500,
            "-1",
            "/credit 2 1e9",
        ]
    ),
)
actions = st.lists(
    st.one_of(
        st.tuples(st.just("click"), callback_data),
        st.tuples(st.just("send"), texts),
        st.tuples(st.just("cancel_of_owner"), st.just("")),
    ),
    min_size=1,
    max_size=12,
)


async def _scenario(steps: list[tuple[str, str]], tmp: Path) -> None:
    async with FakeTelegram(token=BOT_TOKEN) as telegram, FakeSmsMan(token=SMSMAN_TOKEN) as sms:
        sms.default_catalogue()
        config = make_settings(tmp, telegram, sms)
        async with running(config) as app:
            owner, fuzzer = telegram.user(OWNER), telegram.user(FUZZER)
            await owner.send("/buy")
            await owner.wait_for(predicate=lambda m: "Russia" in " ".join(m.labels))
            await owner.click("Russia")
            await owner.wait_for(predicate=lambda m: "Telegram" in " ".join(m.labels))
            await owner.click("Telegram")
            await owner.wait_for("Check your order")
            await owner.click("Buy")
            card = await owner.wait_for("Number: +")
            (order,) = await app.db.orders.list_for_user(OWNER)
            await fuzzer.send("/start")
            menu = await fuzzer.wait_for("Hi")
            status_calls = len(sms.calls_to("set-status"))

            callback_ids = []
            for kind, value in steps:
                if kind == "click":
                    callback_ids.append(await fuzzer.click_data(value, menu.message_id))
                elif kind == "cancel_of_owner":
                    data = f"o:cancel:{order.id}"
                    callback_ids.append(await fuzzer.click_data(data, card.message_id))
                else:
                    await fuzzer.send(value)
            for callback_id in callback_ids:
                await fuzzer.wait_answered(callback_id, timeout=5)
            await telegram.wait_idle(2.0)

            after = await app.db.orders.get(order.id)
            assert after is not None and after.status is OrderStatus.WAITING
            assert len(sms.calls_to("set-status")) == status_calls
            assert await app.db.wallet.check_invariant() == []
            assert all(o.user_id == FUZZER for o in await app.db.orders.list_for_user(FUZZER))
        assert telegram.errors == []


@pytest.mark.slow
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(steps=actions)
def test_any_input_is_refused_cleanly(
    steps: list[tuple[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.clear()
    with caplog.at_level(logging.ERROR), tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_scenario(steps, Path(tmp)))
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
