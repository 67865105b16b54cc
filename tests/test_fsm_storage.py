"""FSM data in the bot's database (no MemoryStorage): kept across restarts, nothing kept
for strangers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from aiogram.fsm.storage.base import StorageKey
from sqlalchemy import event

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


@contextmanager
def statements(db: Database, table: str = "fsm") -> Iterator[list[str]]:
    """The first word of each SQL statement on `table` run on `db` while the block runs."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if table in statement:
            seen.append(statement.split()[0].upper())

    event.listen(db.engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", record)


async def test_on_sqlite_a_write_that_changes_nothing_is_not_made_and_reads_are_remembered(
    db: Database,
) -> None:
    if not db.is_sqlite:
        pytest.skip("PostgreSQL replicas share the rows: every call goes to the database")
    storage = DatabaseFsmStorage(db)
    key = StorageKey(bot_id=1, chat_id=8, user_id=8)
    with statements(db) as seen:
        # What /start and Menu do to a conversation in no state: aiogram reads the state,
        # the handler clears it. One SELECT, no write.
        assert await storage.get_state(key) is None
        await storage.set_state(key, None)
        await storage.set_data(key, {})
        assert await storage.get_state(key) is None
    assert seen == ["SELECT"]
    with statements(db) as seen:
        await storage.set_state(key, "Choosing:country")
        await storage.set_state(key, "Choosing:country")  # the page it is already on
        await storage.update_data(key, {"country_query": None})
        await storage.update_data(key, {"country_query": None})
    assert seen.count("INSERT") == 2  # the state once, the data once
    assert "DELETE" not in seen  # the row is known to keep a state: nothing to drop
    # The data handed out is a copy: changing it changes nothing stored.
    data = await storage.get_data(key)
    data["country_query"] = "ru"
    assert await storage.get_data(key) == {"country_query": None}
    # Another handle (a restart) reads what was written.
    again = DatabaseFsmStorage(db)
    assert await again.get_state(key) == "Choosing:country"
    assert await again.get_data(key) == {"country_query": None}
    await storage.set_state(key, None)
    await storage.set_data(key, {})
    assert await db.fsm.count() == 0


async def test_on_sqlite_only_the_most_recent_conversations_are_remembered(db: Database) -> None:
    if not db.is_sqlite:
        pytest.skip("nothing is remembered on PostgreSQL")
    storage = DatabaseFsmStorage(db, capacity=2)
    keys = [StorageKey(bot_id=1, chat_id=n, user_id=n) for n in (1, 2, 3)]
    for key in keys:
        await storage.set_state(key, "Choosing:country")
    with statements(db) as seen:
        assert await storage.get_state(keys[2]) == "Choosing:country"
        assert await storage.get_state(keys[0]) == "Choosing:country"  # forgotten: read again
    assert seen == ["SELECT"]


async def test_state_and_data_set_together_are_one_statement_and_none_if_unchanged(
    db: Database,
) -> None:
    storage = DatabaseFsmStorage(db)
    key = StorageKey(bot_id=1, chat_id=9, user_id=9)
    with statements(db) as seen:
        await storage.set_row(key, "Choosing:service", {"country": 3, "service_query": None})
    assert [s for s in seen if s != "SELECT"] == ["INSERT"]
    with statements(db) as seen:
        await storage.set_row(key, "Choosing:service", {"service_query": None, "country": 3})
    if db.is_sqlite:  # the row is remembered: nothing changed, nothing written
        assert [s for s in seen if s != "SELECT"] == []
    again = DatabaseFsmStorage(db)  # a restart reads what was written
    assert await again.get_state(key) == "Choosing:service"
    assert await again.get_data(key) == {"country": 3, "service_query": None}
    with statements(db) as seen:
        await storage.set_row(key, None, {})  # what clear() does in two
    assert [s for s in seen if s != "SELECT"] == ["DELETE"]
    assert await db.fsm.count() == 0
    assert await DatabaseFsmStorage(db).get_state(key) is None
