"""The bot in this process, long polling the fake Telegram: for tests and benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from bot.app import App, build_app
from bot.settings import Settings


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[App]:
    """Start the whole app (startup hooks, poller, polling) and stop it when the block ends."""
    app = await build_app(settings)
    task = asyncio.create_task(
        app.dp.start_polling(
            app.bot, handle_signals=False, close_bot_session=False, polling_timeout=1
        )
    )
    try:
        for _ in range(500):  # wait until startup is done and polling began
            if app.dp._running_lock.locked() and app.poller._main is not None:
                break
            if task.done():
                task.result()  # startup failed: raise its error
            await asyncio.sleep(0.01)
        else:
            raise RuntimeError("the bot did not start polling within 5 s")
        yield app
    finally:
        with contextlib.suppress(RuntimeError):
            await app.dp.stop_polling()
        await asyncio.wait_for(task, 10)
        await app.close()
