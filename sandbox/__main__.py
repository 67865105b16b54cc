"""`python -m sandbox` (`make demo`): the bot with no tokens, on this machine only.

Prints one line with the address of the chat page; Ctrl-C (or SIGTERM) stops everything.
Exits 2 with one line per problem when the sandbox's own settings are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from pydantic import ValidationError

from sandbox.demo import Demo, DemoError
from sandbox.settings import SandboxSettings


async def main() -> int:
    try:
        settings = SandboxSettings()
    except ValidationError as exc:
        for error in exc.errors():
            name = "SANDBOX_" + str(error["loc"][0]).upper() if error["loc"] else "SANDBOX"
            print(f"{name}: {error['msg']}", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    demo = Demo(settings)
    try:
        await demo.start()
    except (DemoError, OSError) as exc:
        await demo.stop()
        print(f"sandbox: {exc}", file=sys.stderr)
        return 1
    print(f"Sandbox ready: open {demo.url} (Ctrl-C stops it)", flush=True)
    bot_exit = asyncio.ensure_future(demo.wait())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({bot_exit, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    code = 0
    # Ctrl-C in a terminal reaches the bot too, which then stops cleanly (exit 0) by itself
    if bot_exit.done() and not stop.is_set() and bot_exit.result() != 0:
        print("sandbox: the bot exited:\n" + demo.bot_log()[-2000:], file=sys.stderr)
        code = 1
    await demo.stop()
    with contextlib.suppress(asyncio.CancelledError):
        await bot_exit
    return code


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(main()))
