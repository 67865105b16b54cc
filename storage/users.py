"""Users: Telegram id, language, flags and the available balance (moved only by the ledger)."""

from __future__ import annotations

import sqlite3
import time
from typing import TYPE_CHECKING

from storage import rows
from storage.models import User
from storage.rows import USER_COLUMNS

if TYPE_CHECKING:
    from storage.db import Database


class Users:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def upsert(self, user_id: int, language: str | None, *, now: float | None = None) -> User:
        """The user, created on first sight (first_seen=now). A stored language (the first
        one seen, or the one chosen with set_language) is kept; `language` only fills a gap."""
        found = await self.get(user_id)
        if found is not None and (found.language is not None or language is None):
            return found  # the common case: no write at all
        ts = time.time() if now is None else now

        def tx(conn: sqlite3.Connection) -> User:
            row = conn.execute(
                "INSERT INTO users (id, language, first_seen) VALUES (?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET language = COALESCE(language, excluded.language)"
                f" RETURNING {USER_COLUMNS}",
                (user_id, language, ts),
            ).fetchall()[0]
            return rows.user(row)

        return await self._db.write(tx)

    async def get(self, user_id: int) -> User | None:
        def q(conn: sqlite3.Connection) -> User | None:
            row = conn.execute(
                f"SELECT {USER_COLUMNS} FROM users WHERE id = ?", (user_id,)
            ).fetchone()
            return rows.user(row) if row else None

        return await self._db.read(q)

    async def set_language(self, user_id: int, language: str, *, now: float | None = None) -> None:
        """The user's explicit choice (creates the user if needed)."""
        ts = time.time() if now is None else now

        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO users (id, language, first_seen) VALUES (?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET language = excluded.language",
                (user_id, language, ts),
            )

        await self._db.write(tx)

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
        assert column in ("blocked", "banned")
        ts = time.time() if now is None else now

        def tx(conn: sqlite3.Connection) -> bool:
            if create:
                conn.execute(
                    "INSERT INTO users (id, first_seen) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
                    (user_id, ts),
                )
            cursor = conn.execute(
                f"UPDATE users SET {column} = ? WHERE id = ? AND {column} != ?",
                (int(value), user_id, int(value)),
            )
            return cursor.rowcount == 1

        return await self._db.write(tx)
