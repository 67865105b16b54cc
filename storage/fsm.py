"""aiogram FSM data in the bot's own database (used when REDIS_URL is empty).

One row per conversation that is in a state or holds data; a conversation back to no state
and no data has no row. aiogram only reads the FSM for every update, so someone refused
before any handler runs (a stranger in private mode) leaves nothing behind.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
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
_DROP_EMPTY = text("DELETE FROM fsm WHERE key = :key AND state IS NULL AND data = '{}'")
_COUNT = text("SELECT COUNT(*) FROM fsm")


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

    async def set_state(self, key: str, state: str | None) -> None:
        await self._set(_SET_STATE, key=key, state=state)

    async def set_data(self, key: str, data: Mapping[str, Any]) -> None:
        await self._set(_SET_DATA, key=key, data=json.dumps(dict(data), sort_keys=True))

    async def _set(self, stmt: Any, **params: Any) -> None:
        async def tx(conn: AsyncConnection) -> None:
            await conn.execute(stmt, params)
            await conn.execute(_DROP_EMPTY, {"key": params["key"]})

        await self._db.write(tx)

    async def count(self) -> int:
        async def q(conn: AsyncConnection) -> int:
            return int(await sql.scalar(conn, _COUNT))

        return await self._db.read(q)


class DatabaseFsmStorage(BaseStorage):
    """aiogram's storage interface over db.fsm (the database stays open: the app closes it)."""

    def __init__(self, db: Database) -> None:
        self._fsm = db.fsm

    async def set_state(self, key: StorageKey, state: str | State | None = None) -> None:
        value = state.state if isinstance(state, State) else state
        await self._fsm.set_state(storage_key(key), value)

    async def get_state(self, key: StorageKey) -> str | None:
        return (await self._fsm.get(storage_key(key)))[0]

    async def set_data(self, key: StorageKey, data: Mapping[str, Any]) -> None:
        await self._fsm.set_data(storage_key(key), data)

    async def get_data(self, key: StorageKey) -> dict[str, Any]:
        return (await self._fsm.get(storage_key(key)))[1]

    async def close(self) -> None:
        return None
