"""FSM data in the bot's database (no MemoryStorage): kept across restarts, nothing kept
for strangers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from aiogram.fsm.storage.base import StorageKey

from bot.settings import Settings
from sandbox.smsman import FakeSmsMan
from sandbox.telegram import FakeTelegram
from storage import Database
from storage.fsm import DatabaseFsmStorage
from tests.inprocess import running
from tests.test_shop import say

STRANGER = 515151


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = await Database.open(database_url)
    try:
        yield database
    finally:
        await database.close()


async def test_state_and_data_round_trip_and_an_empty_conversation_leaves_no_row(
    db: Database,
) -> None:
    storage = DatabaseFsmStorage(db)
    key = StorageKey(bot_id=1, chat_id=7, user_id=7)
    other = StorageKey(bot_id=1, chat_id=7, user_id=7, thread_id=3)
    assert await storage.get_state(key) is None and await storage.get_data(key) == {}
    assert await db.fsm.count() == 0  # reads write nothing
    await storage.set_state(key, "Choosing:country")
    await storage.update_data(key, {"country_query": "ru", "page": 2})
    assert await storage.get_state(key) == "Choosing:country"
    assert await storage.get_data(key) == {"country_query": "ru", "page": 2}
    assert await storage.get_state(other) is None
    # A second handle on the same database (a restart, another replica) sees it.
    again = DatabaseFsmStorage(db)
    assert await again.get_data(key) == {"country_query": "ru", "page": 2}
    await storage.set_state(key, None)
    assert await db.fsm.count() == 1  # data still held
    await storage.set_data(key, {})
    assert await db.fsm.count() == 0


async def test_strangers_in_private_mode_leave_no_fsm_row(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: Callable[..., Settings]
) -> None:
    async with running(bot_settings()) as app:
        assert isinstance(app.dp.fsm.storage, DatabaseFsmStorage)
        stranger = telegram.user(STRANGER)
        for text in ("/start", "/buy", "Russia", "/orders"):
            await say(stranger, text)
        await telegram.wait_idle()
        assert await app.db.fsm.count() == 0
        friend = telegram.user(1)
        await say(friend, "/buy")
        await telegram.wait_idle()
        assert await app.db.fsm.count() == 1  # a user choosing a country is remembered
