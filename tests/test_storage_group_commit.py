"""SQLite group commit (storage/group_commit.py): write calls queued together share one
BEGIN IMMEDIATE ... COMMIT, each behind a SAVEPOINT of its own, and no caller hears of its
call before the COMMIT succeeded."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import exc, text
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import Database
from storage.inline import AwaitedInsideTransaction

_PUT = text("INSERT INTO kv (key, value) VALUES (:key, 'v')")


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(tmp_path / "bot.sqlite3")
    try:
        yield database
    finally:
        await database.close()


def committed_keys(path: Path) -> set[str]:
    """What another connection (another process) sees on disk."""
    with sqlite3.connect(path) as outside:
        return {row[0] for row in outside.execute("SELECT key FROM kv")}


def put(key: str) -> Callable[[AsyncConnection], object]:
    async def tx(conn: AsyncConnection) -> str:
        await conn.execute(_PUT, {"key": key})
        return key

    return tx


async def test_a_failing_call_undoes_only_its_own_writes(db: Database) -> None:
    seen_outside: list[set[str]] = []

    async def fails(conn: AsyncConnection) -> None:
        await conn.execute(_PUT, {"key": "b"})
        raise ValueError("refused after writing")

    async def last(conn: AsyncConnection) -> str:
        await conn.execute(_PUT, {"key": "c"})
        seen_outside.append(committed_keys(db.path))
        return "c"

    results = await asyncio.gather(
        db.write(put("a")), db.write(fails), db.write(last), return_exceptions=True
    )

    assert results[0] == "a" and results[2] == "c"
    assert isinstance(results[1], ValueError)
    # One batch: while its last call ran, nothing of it was on disk yet ...
    assert seen_outside == [set()]
    # ... and after the COMMIT the calls around the failed one are, the failed one is not.
    assert committed_keys(db.path) == {"a", "c"}
    assert await db.kv.get("b") is None


async def test_no_caller_hears_success_before_the_commit(db: Database) -> None:
    """A COMMIT that fails (a deferred foreign key of one call) fails every call of the
    batch: none of them was written, so none may be told it was."""

    async def orphan(conn: AsyncConnection) -> None:
        await conn.exec_driver_sql("PRAGMA defer_foreign_keys = ON")
        await conn.exec_driver_sql(
            "INSERT INTO ledger (user_id, amount, kind, created_at, idempotency_key)"
            " VALUES (424242, 1, 'credit', 0, 'orphan')"
        )

    results = await asyncio.gather(
        db.write(put("a")), db.write(orphan), db.write(put("c")), return_exceptions=True
    )

    assert all(isinstance(result, exc.IntegrityError) for result in results), results
    assert committed_keys(db.path) == set()
    # The writer goes on with a clean connection.
    assert await db.write(put("d")) == "d"
    assert committed_keys(db.path) == {"d"}
    assert await db.wallet.check_invariant() == []


async def test_a_lone_call_commits_before_its_caller_returns(db: Database) -> None:
    assert await db.write(put("alone")) == "alone"
    assert committed_keys(db.path) == {"alone"}


async def test_close_waits_for_queued_calls_of_cancelled_callers(tmp_path: Path) -> None:
    database = await Database.open(tmp_path / "bot.sqlite3")
    callers = [asyncio.ensure_future(database.write(put(f"k{i}"))) for i in range(40)]
    await asyncio.sleep(0)
    for caller in callers:
        caller.cancel()
    await database.close()
    assert committed_keys(tmp_path / "bot.sqlite3") == {f"k{i}" for i in range(40)}


async def test_reads_go_on_after_a_failing_and_a_cancelled_read(db: Database) -> None:
    """The one reader connection (storage/reader.py) survives its callers' troubles."""
    await db.write(put("a"))

    async def broken(conn: AsyncConnection) -> None:
        await conn.execute(text("SELECT no_such_column FROM kv"))

    with pytest.raises(exc.OperationalError):
        await db.read(broken)
    waiting = [asyncio.ensure_future(db.kv.get("a")) for _ in range(20)]
    await asyncio.sleep(0)
    for caller in waiting[::2]:
        caller.cancel()
    answers = await asyncio.gather(*waiting, return_exceptions=True)
    assert list(answers[1::2]) == ["v"] * 10
    assert await db.kv.get("a") == "v"


async def test_a_call_awaiting_anything_but_its_statements_fails_alone(db: Database) -> None:
    """A whole batch runs in one hop on the connection's thread (storage/inline.py), where a
    call may await only its statements: one that awaits something else fails, naming
    itself, and only its own writes are undone."""

    async def sleeps_after_writing(conn: AsyncConnection) -> None:
        await conn.execute(_PUT, {"key": "b"})
        await asyncio.sleep(0)

    async def waits_for_the_loop(conn: AsyncConnection) -> None:
        await conn.execute(_PUT, {"key": "c"})
        await asyncio.sleep(0.01)

    results = await asyncio.gather(
        db.write(put("a")),
        db.write(sleeps_after_writing),
        db.write(waits_for_the_loop),
        db.write(put("d")),
        return_exceptions=True,
    )

    assert results[0] == "a" and results[3] == "d"
    assert isinstance(results[1], AwaitedInsideTransaction)
    assert "sleeps_after_writing" in str(results[1])
    assert isinstance(results[2], RuntimeError)
    assert any("waits_for_the_loop" in note for note in getattr(results[2], "__notes__", []))
    assert committed_keys(db.path) == {"a", "d"}
    # A read may await only its statement too; the reader goes on.
    with pytest.raises(AwaitedInsideTransaction):
        await db.read(sleeps_after_writing)
    assert await db.kv.get("a") == "v"
