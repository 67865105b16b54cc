"""Groups (issue 11, point 10): the bot is for private chats; it leaves any group it is
added to, answers nothing there, and a group's membership never says a user blocked it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bot.settings import Settings
from sandbox.smsman import FakeSmsMan
from sandbox.telegram import FakeTelegram
from tests.flows import say
from tests.inprocess import running

pytestmark = pytest.mark.asyncio

SettingsFactory = Callable[..., Settings]
GROUP = -100123


async def test_removed_from_a_group_is_not_blocked(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings()) as app:
        user = telegram.user(1)
        await say(user, "/start", "Hi")
        telegram.add_to_group(1, GROUP, notify=False)  # it was there before
        telegram.remove_from_group(1, GROUP)
        await telegram.wait_idle()
        row = await app.db.users.get(1)
        assert row is not None and not row.blocked, "a group's kick marked the user blocked"
        assert telegram.left_chats == []  # removed: nothing to leave
        # Blocking in the private chat still counts.
        telegram.block(1)
        await telegram.wait_idle()
        row = await app.db.users.get(1)
        assert row is not None and row.blocked


async def test_the_bot_leaves_a_group_it_is_added_to_and_answers_nothing_there(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    async with running(bot_settings()) as app:
        telegram.add_to_group(2, GROUP)
        await telegram.wait_idle()
        assert telegram.left_chats == [GROUP]
        assert GROUP not in telegram.bot_in_groups
        # A command written in a group (sent before the bot left): no answer, no user row.
        telegram.group_message(3, GROUP, "/start")
        telegram.group_message(3, GROUP, "/buy")
        await telegram.wait_idle()
        sent = [c for c in telegram.calls if c.params.get("chat_id") == GROUP]
        assert [c.method for c in sent] == ["leaveChat"]
        assert await app.db.users.get(3) is None
        adder = await app.db.users.get(2)
        assert adder is None or not adder.blocked
