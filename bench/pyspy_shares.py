"""Where the CPU went, from a py-spy raw profile: `python bench/pyspy_shares.py FILE [TOP]`.

FILE is what `bench/menu.py --py-spy FILE` wrote (py-spy's collapsed stacks, one
"frame;frame;... count" per line). Stacks ending in a wait (the event loop's select, a
database thread waiting for work) and import-time stacks are dropped; the rest is printed
as inclusive shares per function (a function counts once per stack), then self shares.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

WAITS = (
    "_connection_worker_thread",
    "EpollSelector.select",
    "_read_from_self",
    "Condition.wait",
    "Event.wait",
    "_worker (concurrent",
)


def _function(frame: str) -> str:
    """`name (path:line)` -> `name (path)`."""
    return frame.split(":")[0] + ")" if "(" in frame else frame


def shares(path: Path) -> tuple[int, Counter[str], Counter[str]]:
    total, inclusive, own = 0, Counter[str](), Counter[str]()
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if any("_find_and_load" in frame for frame in frames):
            continue
        if frames[-1].startswith(WAITS):
            continue
        samples = int(count)
        total += samples
        for function in {_function(frame) for frame in frames}:
            inclusive[function] += samples
        own[_function(frames[-1])] += samples
    return total, inclusive, own


def main() -> None:
    path = Path(sys.argv[1])
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    total, inclusive, own = shares(path)
    print(f"{total} samples outside waits and imports")
    for title, counter in (("inclusive", inclusive), ("self", own)):
        print(f"\n{title}:")
        for function, samples in counter.most_common(top):
            print(f"{100 * samples / max(1, total):5.1f}%  {function}")


if __name__ == "__main__":
    main()
