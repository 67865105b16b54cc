"""The loop that keeps a replica's leases: one round every third of a lease, for ever.

Shared by the poller (order leases) and delivery (outbox leases). A round that fails (a
deadlock, the database away) is tried again at the next turn: a lease outlasts two missed
rounds. The failure is logged once a minute, not at every turn.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable

WARN_EVERY = 60.0  # seconds between two warnings while rounds keep failing


async def keep_leases(
    every: float, round_: Callable[[], Awaitable[None]], what: str, log: logging.Logger
) -> None:
    warned = -math.inf
    while True:
        await asyncio.sleep(every)
        try:
            await round_()
        except Exception:
            now = time.monotonic()
            if now - warned >= WARN_EVERY:
                warned = now
                log.warning("renewing the %s leases failed; trying again", what, exc_info=True)
