"""What a user pays: the provider cost in private mode, cost x markup in shop mode."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from bot.services.money import shop_price
from bot.settings import Settings
from storage.db import Database

MARKUP_KEY = "markup_percent"
MAX_MARKUP = Decimal(1000)


class Pricing:
    def __init__(self, settings: Settings, db: Database) -> None:
        self._settings = settings
        self._db = db
        self.markup: Decimal = settings.markup_percent

    async def load(self) -> None:
        """A /markup set by an admin outlives restarts and overrides the setting."""
        stored = await self._db.kv.get(MARKUP_KEY)
        if stored is not None:
            try:
                self.markup = Decimal(stored)
            except InvalidOperation:
                self.markup = self._settings.markup_percent

    async def set_markup(self, percent: Decimal) -> None:
        await self._db.kv.set(MARKUP_KEY, str(percent))
        self.markup = percent

    def price(self, cost: int) -> int:
        if not self._settings.is_shop:
            return cost
        return shop_price(cost, self.markup, self._settings.price_step)
