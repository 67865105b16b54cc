"""handlers/middlewares.py OnceOnly: long polling remembers handled update ids in memory
(no database row per update); the webhook records them (see tests/test_webhook.py and
tests/test_delivery.py for redeliveries acted on once)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiogram.types import Update
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.settings import Settings
from handlers.middlewares import OnceOnly
from sandbox.telegram import FakeTelegram
from tests.inprocess import running


async def _rows(conn: AsyncConnection) -> int:
    return int((await conn.execute(text("SELECT COUNT(*) FROM handled_updates"))).scalar_one())


async def test_long_polling_writes_no_row_per_update(
    telegram: FakeTelegram, bot_settings: Callable[..., Settings]
) -> None:
    async with running(bot_settings()) as app:
        user = telegram.user(1)
        await user.send("/start")
        await user.wait_for(predicate=lambda m: any("Buy" in label for label in m.labels))
        await user.click("Buy")
        await user.wait_for("country", new_only=True)
        await telegram.wait_idle()
        assert await app.db.read(_rows) == 0


class _NoDatabase:
    async def first_time(self, update_id: int) -> bool:
        raise AssertionError("long polling must not touch the database")


async def test_polling_memory_is_bounded_and_ignores_a_repeat() -> None:
    once = OnceOnly(_NoDatabase(), durable=False, remember=2)  # type: ignore[arg-type]
    handled: list[int] = []

    async def handler(event: Any, data: dict[str, Any]) -> None:
        handled.append(event.update_id)

    for update_id in (1, 2, 2, 3, 3, 1):
        await once(handler, Update(update_id=update_id), {})
    assert handled == [1, 2, 3, 1], "a repeat is ignored; the oldest id is forgotten"
