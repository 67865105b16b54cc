"""A start time reserved from Redis is taken on time or not at all (both shared gates:
bot/delivery/shared_pacing.py for Telegram, bot/smsman/shared_gate.py for SMS-Man).

Reservations are spaced SHARED_SPACING_MARGIN / max_rps apart on Redis's clock. A replica
starved of CPU on a loaded machine may wake well after the start it reserved and then send
together with the other replicas' on-time starts: the fakes saw 28 calls in one second for
caps of 25. A caller that wakes more than `late_tolerance` past its start reserves again
instead (the start it missed is capacity lost, never a call sent late).

Why these figures: if every call starts within J seconds after its reserved start, any one
second holds at most floor((1 + J) / spacing) + 1 starts, which stays <= max_rps as long as
J < SHARED_SPACING_MARGIN - 1 (100 ms, at any rate). A quarter of that is the lateness
let through here; the rest is left to what follows the wake (the request's way to the
wire, the network, the receiver's own loop): the replica run at 5% (50 ms) still saw 26
sends in one second at the fake Telegram for a cap of 25.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

SHARED_SPACING_MARGIN = 1.1  # spacing over replicas: 1/max_rps, 10% wider
LATE = (SHARED_SPACING_MARGIN - 1) / 4  # seconds: later than this past the start, reserve again
MAX_MISSES = 5  # then start anyway: a replica stalled again and again still gets its turn

# Looked up at each call, so that a test can make a wake late.
_sleep = asyncio.sleep
_clock = time.monotonic


def shared_spacing_us(max_rps: float) -> int:
    return int(SHARED_SPACING_MARGIN / max_rps * 1_000_000)


def late_tolerance(spacing_us: int) -> float:
    """More than one spacing late (or LATE, at low rates) means the start was missed."""
    return min(spacing_us / 1_000_000, LATE)


async def start_on_time(reserve: Callable[[], Awaitable[int]], tolerance: float) -> int:
    """Reserve a start (`reserve()` answers the microseconds until it) and wait for it;
    reserve again while the wake comes more than `tolerance` seconds late. Returns the
    number of starts missed. Errors of `reserve` propagate."""
    missed = 0
    while True:
        wait = int(await reserve()) / 1_000_000
        # The start lies at or before this (Redis read its clock before answering).
        start = _clock() + wait
        if wait > 0:
            await _sleep(wait)
        late = _clock() - start
        if late <= tolerance:
            return missed
        if missed >= MAX_MISSES:
            log.info("started %.0f ms late after %d missed starts", late * 1000, missed)
            return missed
        missed += 1
