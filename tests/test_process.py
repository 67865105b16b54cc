"""`python -m bot` as a real process against both fakes: it answers, and stops cleanly."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from sandbox.smsman import FakeSmsMan
from sandbox.telegram import FakeTelegram
from tests.botproc import BotProcess, wait_until


async def test_process_answers_start_and_stops_cleanly_on_sigterm(
    telegram: FakeTelegram, smsman: FakeSmsMan, tmp_path: Path
) -> None:
    bot = BotProcess.for_fakes(telegram, smsman, tmp_path, log_level="DEBUG")
    await bot.start()
    user = telegram.user(1)
    await user.send("/start")
    menu = await user.wait_for(predicate=lambda m: any("Buy" in label for label in m.labels))
    assert "Hi" in menu.text
    assert await bot.terminate() == 0
    log = bot.log_text()
    assert "stopped cleanly" in log
    assert telegram.token not in log and smsman.token not in log
    assert telegram.token.split(":")[1] not in log


async def test_sigusr1_logs_every_tasks_stack_and_the_bot_goes_on(
    telegram: FakeTelegram, smsman: FakeSmsMan, tmp_path: Path
) -> None:
    """What an operator (or the replica run) does when updates seem stuck."""
    bot = BotProcess.for_fakes(telegram, smsman, tmp_path)
    await bot.start()
    assert bot.pid is not None
    os.kill(bot.pid, signal.SIGUSR1)
    await wait_until(lambda: "tasks\n" in bot.log_text(), timeout=10)
    log = bot.log_text()
    assert "--- " in log and "Stack for <Task" in log
    user = telegram.user(1)
    await user.send("/start")
    await user.wait_for("Hi")
    assert await bot.terminate() == 0
