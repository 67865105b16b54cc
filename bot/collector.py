"""The garbage collector, set for a long-running bot process (`python -m bot` only).

What bench/menu.py found in the bot's process with CPython's defaults (700, 10, 10): a
click's garbage is freed by reference counting (a 35 s walk: 690 young collections freed
1,400 objects in all), yet the collector ran every 700 allocations, promoted whatever was
alive at that moment, and every tenth middle pass became a full one: after `gc.freeze()`
nothing counts as long-lived, so the "a quarter of the long-lived objects is new" rule
always held. Each full pass walks the catalogue and everything made since start (260-520 ms
on the shared 2-core machine): about 0.8 ms of CPU per click and the worst stalls. During
start-up the same passes walk aiogram's ~300k new objects again and again (0.5 s of CPU).

So: no collection while importing and starting, then everything there is gets frozen
(never walked again) and young collections come every 20,000 allocations instead of 700.
Cyclic garbage is still collected, just in larger batches. The ~2,000 objects of start-up
garbage are frozen with the rest: one full pass to free them cost 0.4-0.8 s at start.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000
# CPython's own ratios for the middle and oldest generations.
OLDER_THRESHOLDS = (10, 10)


def pause() -> None:
    """Before the heavy imports: nothing made during start-up is garbage worth a pass."""
    gc.disable()


def settle() -> None:
    """Once started: freeze what there is, then collect in larger batches."""
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
    gc.enable()
