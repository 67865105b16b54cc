"""What a user pays: the provider cost in private mode, cost x markup in shop mode."""

from __future__ import annotations

import logging
from decimal import Decimal, InvalidOperation

from bot.services.money import shop_price, valid_percent
from bot.settings import Settings
from storage.db import Database

log = logging.getLogger(__name__)

MARKUP_KEY = "markup_percent"


class Pricing:
    def __init__(self, settings: Settings, db: Database) -> None:
        self._settings = settings
        self._db = db
        self.markup: Decimal = settings.markup_percent
        self.overridden = False  # True while a /markup stored in the database applies

    async def load(self) -> None:
        """A /markup set by an admin outlives restarts and overrides the setting."""
        stored = await self._db.kv.get(MARKUP_KEY)
        if stored is None:
            return
        try:
            value = Decimal(stored)
        except InvalidOperation:
            value = Decimal("NaN")
        if valid_percent(value):
            self.markup = value
            self.overridden = True
        else:
            log.warning("ignoring the stored markup %r: not a percent 0..1000", stored)

    async def set_markup(self, percent: Decimal) -> None:
        """Store an admin's markup; ValueError unless 0..1000 with at most two decimals."""
        if not valid_percent(percent):
            raise ValueError(f"markup must be 0..1000 with at most two decimals, got {percent}")
        await self._db.kv.set(MARKUP_KEY, str(percent))
        self.markup = percent
        self.overridden = True

    async def reset_markup(self) -> None:
        """Forget the stored markup: MARKUP_PERCENT applies again."""
        await self._db.kv.delete(MARKUP_KEY)
        self.markup = self._settings.markup_percent
        self.overridden = False

    def price(self, cost: int) -> int:
        if not self._settings.is_shop:
            return cost
        return shop_price(cost, self.markup, self._settings.price_step)
