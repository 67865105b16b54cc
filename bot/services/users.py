"""Users: first sight, language, blocked flag, and what /balance shows."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot.locale import SUPPORTED_LOCALES, pick_locale
from bot.settings import Settings
from bot.smsman.client import SmsManClient
from storage.db import Database
from storage.models import Profile


@dataclass(frozen=True, slots=True)
class WalletView:
    available: int
    held: int


class UserService:
    def __init__(self, settings: Settings, db: Database, client: SmsManClient) -> None:
        self._settings = settings
        self._db = db
        self._client = client
        self.on_returned: Callable[[int], Awaitable[None]] | None = None

    async def touch(self, user_id: int, language_code: str | None) -> Profile:
        """The user's language and flags, for every update (on SQLite from memory: no
        query); first sight stores their language, a message unblocks them."""
        profile = await self._db.users.profile(user_id)
        if profile is None:
            user = await self._db.users.upsert(user_id, pick_locale(None, language_code))
            profile = Profile.of(user)
        if profile.blocked:
            await self.set_blocked(user_id, False)
            profile = await self._db.users.profile(user_id) or profile
        return profile

    async def first_time(self, update_id: int) -> bool:
        """Record a Telegram update as handled; False if it was before (a redelivery)."""
        return await self._db.updates.claim(update_id)

    async def set_blocked(self, user_id: int, blocked: bool) -> None:
        """Telegram's my_chat_member (or a message) says whether they blocked the bot; on
        their return, codes held back while they were away go out."""
        changed = await self._db.users.set_blocked(user_id, blocked)
        if changed and not blocked and self.on_returned is not None:
            await self.on_returned(user_id)

    async def set_language(self, user_id: int, locale: str) -> bool:
        if locale not in SUPPORTED_LOCALES:
            return False
        await self._db.users.set_language(user_id, locale)
        return True

    async def wallet(self, user_id: int) -> WalletView:
        available, held = await self._db.wallet.balance(user_id)
        return WalletView(available, held)

    async def provider_balance(self) -> str:
        balance = await self._client.get_balance()
        return f"{balance.balance:.2f}"
