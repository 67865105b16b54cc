"""aiogram FSM data in the bot's own database (used when REDIS_URL is empty).

One row per conversation that is in a state or holds data; a conversation back to no state
and no data has no row. aiogram only reads the FSM for every update, so someone refused
before any handler runs (a stranger in private mode) leaves nothing behind.
"""

from __future__ import annotations

import json
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any

from aiogram.fsm.state import State
from aiogram.fsm.storage.base import BaseStorage, StorageKey
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import sql

if TYPE_CHECKING:
    from storage.db import Database

_GET = text("SELECT state, data FROM fsm WHERE key = :key")
_SET_STATE = text(
    "INSERT INTO fsm (key, state, data) VALUES (:key, :state, '{}')"
    " ON CONFLICT (key) DO UPDATE SET state = excluded.state"
)
_SET_DATA = text(
    "INSERT INTO fsm (key, state, data) VALUES (:key, NULL, :data)"
    " ON CONFLICT (key) DO UPDATE SET data = excluded.data"
)
_SET_ROW = text(
    "INSERT INTO fsm (key, state, data) VALUES (:key, :state, :data)"
    " ON CONFLICT (key) DO UPDATE SET state = excluded.state, data = excluded.data"
)
_DELETE = text("DELETE FROM fsm WHERE key = :key")
_DROP_EMPTY = text("DELETE FROM fsm WHERE key = :key AND state IS NULL AND data = '{}'")
_COUNT = text("SELECT COUNT(*) FROM fsm")
EMPTY = "{}"  # no data, canonical


def storage_key(key: StorageKey) -> str:
    return ":".join(
        str(part)
        for part in (
            key.bot_id,
            key.chat_id,
            key.user_id,
            key.thread_id or "",
            key.business_connection_id or "",
            key.destiny,
        )
    )


class FsmData:
    """db.fsm: the rows behind DatabaseFsmStorage."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, key: str) -> tuple[str | None, dict[str, Any]]:
        async def q(conn: AsyncConnection) -> tuple[str | None, dict[str, Any]]:
            row = await sql.first(conn, _GET, key=key)
            if row is None:
                return None, {}
            return row[0], dict(json.loads(row[1]))

        return await self._db.read(q)

    async def set_state(self, key: str, state: str | None, *, may_empty: bool = True) -> None:
        """`may_empty=False`: the caller knows the row keeps a state or data (no DELETE)."""
        await self._set(_SET_STATE, may_empty, key=key, state=state)

    async def set_data(self, key: str, data: Mapping[str, Any], *, may_empty: bool = True) -> None:
        await self._set(_SET_DATA, may_empty, key=key, data=_canonical(data))

    async def set_row(self, key: str, state: str | None, data: str) -> None:
        """State and data (canonical JSON) in one statement; no state and no data: no row."""
        empty = state is None and data == EMPTY

        async def tx(conn: AsyncConnection) -> None:
            if empty:
                await conn.execute(_DELETE, {"key": key})
            else:
                await conn.execute(_SET_ROW, {"key": key, "state": state, "data": data})

        await self._db.write(tx)

    async def _set(self, stmt: Any, may_empty: bool, **params: Any) -> None:
        async def tx(conn: AsyncConnection) -> None:
            await conn.execute(stmt, params)
            if may_empty:
                await conn.execute(_DROP_EMPTY, {"key": params["key"]})

        await self._db.write(tx)

    async def count(self) -> int:
        async def q(conn: AsyncConnection) -> int:
            return int(await sql.scalar(conn, _COUNT))

        return await self._db.read(q)


class DatabaseFsmStorage(BaseStorage):
    """aiogram's storage interface over db.fsm (the database stays open: the app closes it).

    On SQLite the bot is the only process on its database file, so this storage also
    remembers the rows it read and wrote (the most recent `capacity` conversations): aiogram
    reads the state for every update and the menus write the state they are already in
    (every /start and Menu clears a conversation that is usually empty), and each of those
    was a query, the writes one at a time behind SQLite's lock with an fsync each. Now an
    update costs no FSM query and a write that changes nothing is not made. The remembered
    row is updated before the write is queued, so it follows the order in which writes are
    made; a write that fails forgets it. On PostgreSQL several replicas may share the rows:
    every call goes to the database.
    """

    def __init__(self, db: Database, *, capacity: int = 10_000) -> None:
        self._fsm = db.fsm
        self._capacity = capacity
        # key -> (state, data as canonical JSON): a string, so no caller can mutate it.
        self._rows: OrderedDict[str, tuple[str | None, str]] | None = (
            OrderedDict() if db.is_sqlite else None
        )
        self._writing: Counter[str] = Counter()  # key -> writes in flight

    async def _row(self, key: str) -> tuple[str | None, str]:
        rows = self._rows
        assert rows is not None
        row = rows.get(key)
        if row is None:
            state, data = await self._fsm.get(key)
            # A write queued while this read ran is newer than what the read saw.
            row = rows.setdefault(key, (state, _canonical(data)))
        rows.move_to_end(key)
        self._evict(rows)
        return row

    def _evict(self, rows: OrderedDict[str, tuple[str | None, str]]) -> None:
        """Forget the least recent rows beyond `capacity`, never one being written (a read
        of it could still see the row before that write)."""
        for _ in range(len(rows) - self._capacity):
            oldest = next(iter(rows))
            if self._writing[oldest]:
                rows.move_to_end(oldest)
            else:
                del rows[oldest]

    async def _write(self, key: str, row: tuple[str | None, str], write: Awaitable[None]) -> None:
        assert self._rows is not None
        self._rows[key] = row
        self._writing[key] += 1
        try:
            await write
        except Exception:
            # Failed: what is stored is unknown, read it again. (A cancelled caller's write
            # goes on to COMMIT, see storage/db.py: the row stays.)
            self._rows.pop(key, None)
            raise
        finally:
            self._writing[key] -= 1
            if not self._writing[key]:
                del self._writing[key]

    async def set_state(self, key: StorageKey, state: str | State | None = None) -> None:
        value = state.state if isinstance(state, State) else state
        name = storage_key(key)
        if self._rows is None:
            await self._fsm.set_state(name, value)
            return
        old_state, data = await self._row(name)
        if old_state != value:
            empty = value is None and data == EMPTY
            write = self._fsm.set_state(name, value, may_empty=empty)
            await self._write(name, (value, data), write)

    async def get_state(self, key: StorageKey) -> str | None:
        name = storage_key(key)
        if self._rows is None:
            return (await self._fsm.get(name))[0]
        return (await self._row(name))[0]

    async def set_data(self, key: StorageKey, data: Mapping[str, Any]) -> None:
        name = storage_key(key)
        if self._rows is None:
            await self._fsm.set_data(name, data)
            return
        state, old_data = await self._row(name)
        new_data = _canonical(data)
        if old_data != new_data:
            empty = state is None and new_data == EMPTY
            write = self._fsm.set_data(name, data, may_empty=empty)
            await self._write(name, (state, new_data), write)

    async def set_row(
        self, key: StorageKey, state: str | State | None, data: Mapping[str, Any]
    ) -> None:
        """set_state and set_data as one write (aiogram's FSMContext makes them two)."""
        value = state.state if isinstance(state, State) else state
        name = storage_key(key)
        row = (value, _canonical(data))
        if self._rows is None:
            await self._fsm.set_row(name, *row)
        elif await self._row(name) != row:
            await self._write(name, row, self._fsm.set_row(name, *row))

    async def get_data(self, key: StorageKey) -> dict[str, Any]:
        name = storage_key(key)
        if self._rows is None:
            return (await self._fsm.get(name))[1]
        return dict(json.loads((await self._row(name))[1]))

    async def close(self) -> None:
        return None


def _canonical(data: Mapping[str, Any]) -> str:
    """The form FsmData stores (so equal data compares equal)."""
    return json.dumps(dict(data), sort_keys=True)
