"""Long polling does not fight: a second process polling the token exits 2 in one line."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from bot.polling import ANOTHER_POLLER, WEBHOOK_SET, PollConflict
from sandbox.smsman import FakeSmsMan
from sandbox.telegram import FakeTelegram
from tests.botproc import BotProcess, wait_until


@pytest.mark.telegram_errors_expected  # the 409s are the point
async def test_a_second_poller_exits_2_and_the_first_keeps_serving(
    telegram: FakeTelegram, smsman: FakeSmsMan, tmp_path: Path
) -> None:
    first = BotProcess.for_fakes(telegram, smsman, tmp_path / "first")
    second = BotProcess.for_fakes(telegram, smsman, tmp_path / "second")
    try:
        await first.start()
        await asyncio.sleep(5.5)  # the first one's polling is established (grace: 5 s)
        await second.start()
        await wait_until(lambda: not second.running, timeout=20)
        assert second.returncode == 2
        assert second.log_text().count(ANOTHER_POLLER) == 1
        assert first.running
        user = telegram.user(1)
        await user.send("/start")
        await user.wait_for("Hi", timeout=10)
        assert len(user.messages) == 1
        assert await first.terminate() == 0
    finally:
        await first.stop()
        await second.stop()
    assert ANOTHER_POLLER not in first.log_text()
    assert "Traceback" not in first.log_text() + second.log_text()


@pytest.mark.telegram_errors_expected
async def test_polling_while_a_webhook_is_set_exits_2(
    telegram: FakeTelegram, smsman: FakeSmsMan, tmp_path: Path
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{telegram.url}/bot{telegram.token}/setWebhook",
            json={"url": "https://bot.example.com/telegram", "secret_token": "abc"},
        ) as response,
    ):
        assert response.status == 200
    bot = BotProcess.for_fakes(telegram, smsman, tmp_path)
    try:
        await bot.start()
        await wait_until(lambda: not bot.running, timeout=20)
    finally:
        await bot.stop()
    assert bot.returncode == 2
    assert bot.log_text().count(WEBHOOK_SET) == 1
    assert len(telegram.calls_to("getUpdates")) == 1, "gave up at once"


class _Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_newcomer_gives_up_and_the_established_one_holds_on() -> None:
    clock = _Clock()
    reasons: list[str] = []
    established = PollConflict(reasons.append, grace=5, patience=60, clock=clock)
    established._polling_since = 0.0
    assert not established._give_up("Conflict: terminated by other getUpdates request")
    clock.now = 159.0
    assert not established._give_up("Conflict: terminated by other getUpdates request")
    clock.now = 161.0  # 61 s of nothing but 409
    assert established._give_up("Conflict: terminated by other getUpdates request")
    newcomer = PollConflict(reasons.append, grace=5, patience=60, clock=clock)
    newcomer._polling_since = 160.0
    assert newcomer._give_up("Conflict: terminated by other getUpdates request")
    assert reasons == [ANOTHER_POLLER, ANOTHER_POLLER]
