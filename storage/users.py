"""Users: Telegram id, language, flags and the available balance (moved only by the ledger)."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import rows, sql
from storage.models import Profile, User
from storage.rows import USER_COLUMNS

if TYPE_CHECKING:
    from storage.db import Database, Tx

T = TypeVar("T")

_UPSERT = text(
    "INSERT INTO users (id, language, first_seen) VALUES (:user_id, :language, :now)"
    " ON CONFLICT (id) DO UPDATE SET language = COALESCE(users.language, excluded.language)"
    f" RETURNING {USER_COLUMNS}"
)
_GET = text(f"SELECT {USER_COLUMNS} FROM users WHERE id = :user_id")
_SET_LANGUAGE = text(
    "INSERT INTO users (id, language, first_seen) VALUES (:user_id, :language, :now)"
    " ON CONFLICT (id) DO UPDATE SET language = excluded.language"
)
_CREATE = text(
    "INSERT INTO users (id, first_seen) VALUES (:user_id, :now) ON CONFLICT (id) DO NOTHING"
)
_SET_FLAG = {
    column: text(f"UPDATE users SET {column} = :value WHERE id = :user_id AND {column} != :value")
    for column in ("blocked", "banned")
}


class Users:
    def __init__(self, db: Database, *, capacity: int = 10_000) -> None:
        self._db = db
        # Users.profile's memory (SQLite only): user id -> profile, most recent last.
        self._profiles: OrderedDict[int, Profile] | None = OrderedDict() if db.is_sqlite else None
        self._capacity = capacity
        self._writes = 0  # bumped around every write: a read older than one is not kept

    async def profile(self, user_id: int) -> Profile | None:
        """Language and flags, read for every update (handlers/middlewares.py).

        On SQLite the bot is the only process on its database file and every write of
        these columns goes through this class, so the profile is remembered (the most recent
        `capacity` users) and each write below forgets it: an update then costs no query.
        A read that overlapped a write is not remembered. On PostgreSQL several replicas
        share the rows: always read.
        """
        profiles = self._profiles
        if profiles is not None and (known := profiles.get(user_id)) is not None:
            profiles.move_to_end(user_id)
            return known
        writes = self._writes
        user = await self.get(user_id)
        if user is None:
            return None
        found = Profile.of(user)
        if profiles is not None and writes == self._writes:
            profiles[user_id] = found
            while len(profiles) > self._capacity:
                profiles.popitem(last=False)
        return found

    async def _write(self, user_id: int, tx: Tx[T]) -> T:
        """A write of the profile's columns: forgets the user's profile before and after."""
        self._forget(user_id)
        try:
            return await self._db.write(tx)
        finally:
            self._forget(user_id)

    def _forget(self, user_id: int) -> None:
        self._writes += 1
        if self._profiles is not None:
            self._profiles.pop(user_id, None)

    async def upsert(self, user_id: int, language: str | None, *, now: float | None = None) -> User:
        """The user, created on first sight (first_seen=now). A stored language (the first
        one seen, or the one chosen with set_language) is kept; `language` only fills a gap."""
        found = await self.get(user_id)
        if found is not None and (found.language is not None or language is None):
            return found  # the common case: no write at all
        ts = time.time() if now is None else now

        async def tx(conn: AsyncConnection) -> User:
            row = await sql.first(conn, _UPSERT, user_id=user_id, language=language, now=ts)
            assert row is not None
            return rows.user(row)

        return await self._write(user_id, tx)

    async def get(self, user_id: int) -> User | None:
        async def q(conn: AsyncConnection) -> User | None:
            row = await sql.first(conn, _GET, user_id=user_id)
            return rows.user(row) if row else None

        return await self._db.read(q)

    async def set_language(self, user_id: int, language: str, *, now: float | None = None) -> None:
        """The user's explicit choice (creates the user if needed)."""
        ts = time.time() if now is None else now

        async def tx(conn: AsyncConnection) -> None:
            await conn.execute(_SET_LANGUAGE, {"user_id": user_id, "language": language, "now": ts})

        await self._write(user_id, tx)

    async def set_blocked(self, user_id: int, blocked: bool) -> bool:
        """The user blocked (or unblocked) the bot. True if the flag changed."""
        return await self._set_flag("blocked", user_id, blocked, create=False)

    async def set_banned(self, user_id: int, banned: bool, *, now: float | None = None) -> bool:
        """Ban or unban (a ban may come before the user ever wrote: the row is created).
        True if the flag changed."""
        return await self._set_flag("banned", user_id, banned, create=True, now=now)

    async def _set_flag(
        self, column: str, user_id: int, value: bool, *, create: bool, now: float | None = None
    ) -> bool:
        stmt = _SET_FLAG[column]
        ts = time.time() if now is None else now

        async def tx(conn: AsyncConnection) -> bool:
            if create:
                await conn.execute(_CREATE, {"user_id": user_id, "now": ts})
            return await sql.count(conn, stmt, value=int(value), user_id=user_id) == 1

        return await self._write(user_id, tx)
