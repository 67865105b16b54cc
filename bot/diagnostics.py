"""`kill -USR1 <pid>`: every asyncio task's stack into the log, for a bot that seems stuck.

A hung update shows as a task parked on some await; py-spy and faulthandler see threads
only, not parked coroutines, so this is the way to learn what it waits for.
"""

from __future__ import annotations

import asyncio
import io
import logging
import signal

log = logging.getLogger(__name__)


def dump_tasks() -> str:
    out = io.StringIO()
    tasks = asyncio.all_tasks()
    out.write(f"{len(tasks)} tasks\n")
    for task in sorted(tasks, key=lambda t: t.get_name()):
        out.write(f"--- {task.get_name()}: {task.get_coro()!r}\n")
        task.print_stack(limit=12, file=out)
    return out.getvalue()


def dump_tasks_on_sigusr1() -> None:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, lambda: log.warning("%s", dump_tasks()))
