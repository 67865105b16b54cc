"""The wallets' currency: recorded at first start, and never changed under money.

Balances and holds are integers in minor units of CURRENCY; nothing converts them. A
different CURRENCY on a database whose wallets or orders hold money would re-label that
money (100 RUB read as 100 USD), so the start is refused instead.
"""

from __future__ import annotations

import logging

from storage.db import Database

log = logging.getLogger(__name__)

CURRENCY_KEY = "wallet_currency"


class CurrencyChanged(Exception):
    """CURRENCY differs from the recorded one while money is held; str() is one line."""


async def record_currency(db: Database, currency: str) -> None:
    """Record `currency` on first start; accept a change only while no money is held."""
    recorded = await db.kv.get(CURRENCY_KEY)
    if recorded is None:
        # A database from before this record: its orders still say what the money was in.
        recorded = await db.wallet.last_order_currency()
    if recorded == currency:
        await db.kv.set_if_absent(CURRENCY_KEY, currency)
        return
    if recorded is not None and await db.wallet.holds_money():
        raise CurrencyChanged(
            f"CURRENCY is invalid: wallets and orders hold money in {recorded}; set "
            f"CURRENCY={recorded} (a change needs every wallet empty and no money on hold)"
        )
    await db.kv.set(CURRENCY_KEY, currency)
    if recorded is not None:
        log.warning("wallet currency changed from %s to %s (no money was held)", recorded, currency)
