"""Users.profile: what every update reads of its user. On SQLite it is remembered, so an
update costs no query, and every write of the language or a flag is seen at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from storage import Database
from storage.models import Profile, User
from tests.test_fsm_storage import statements


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = await Database.open(database_url)
    try:
        yield database
    finally:
        await database.close()


def _selects(seen: list[str]) -> int:
    return seen.count("SELECT")


async def test_every_write_of_the_language_or_a_flag_shows_in_the_next_profile(
    db: Database,
) -> None:
    assert await db.users.profile(5) is None
    await db.users.upsert(5, "ru")
    assert await db.users.profile(5) == Profile(5, "ru", blocked=False, banned=False)
    await db.users.set_language(5, "en")
    assert await db.users.profile(5) == Profile(5, "en", blocked=False, banned=False)
    await db.users.set_blocked(5, True)
    assert await db.users.profile(5) == Profile(5, "en", blocked=True, banned=False)
    await db.users.set_banned(5, True)
    assert await db.users.profile(5) == Profile(5, "en", blocked=True, banned=True)
    await db.users.set_blocked(5, False)
    await db.users.set_banned(5, False)
    assert await db.users.profile(5) == Profile(5, "en", blocked=False, banned=False)
    # A credit moves the balance (not in the profile) and creates no stale profile.
    await db.wallet.credit(6, 100, note=None, idempotency_key="credit:6")
    assert await db.users.profile(6) == Profile(6, None, blocked=False, banned=False)


async def test_on_sqlite_a_known_profile_costs_no_query(db: Database) -> None:
    if not db.is_sqlite:
        pytest.skip("PostgreSQL replicas share the rows: every profile is read")
    await db.users.upsert(5, "ru")
    with statements(db, table="users") as seen:
        for _ in range(5):
            await db.users.profile(5)
    assert _selects(seen) == 1
    with statements(db, table="users") as seen:
        await db.users.set_banned(5, True)
        assert (await db.users.profile(5) or Profile(0, None, False, False)).banned
    assert _selects(seen) == 1  # forgotten by the write, read once again


async def test_a_read_that_overlaps_a_write_is_not_remembered(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not db.is_sqlite:
        pytest.skip("nothing is remembered on PostgreSQL")
    await db.users.upsert(5, "ru")
    real_get = db.users.get
    fetched, resume = asyncio.Event(), asyncio.Event()

    async def slow_get(user_id: int) -> User | None:
        row = await real_get(user_id)  # read before the ban...
        fetched.set()
        await resume.wait()  # ...and handed back after it
        return row

    monkeypatch.setattr(db.users, "get", slow_get)
    read = asyncio.create_task(db.users.profile(5))
    await fetched.wait()
    monkeypatch.setattr(db.users, "get", real_get)
    await db.users.set_banned(5, True)
    resume.set()
    stale = await read
    assert stale is not None and not stale.banned  # what it read, before the ban
    profile = await db.users.profile(5)
    assert profile is not None and profile.banned  # the stale read was not remembered
