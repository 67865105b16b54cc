"""A conversation's FSM state and data set together."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State
from aiogram.fsm.storage.base import StorageKey


@runtime_checkable
class RowStorage(Protocol):
    """A storage that sets both in one write (storage/fsm.py DatabaseFsmStorage)."""

    async def set_row(
        self, key: StorageKey, state: str | State | None, data: Mapping[str, Any]
    ) -> None: ...


async def put(context: FSMContext, state: str | State | None, data: Mapping[str, Any]) -> None:
    """State and data at once: one write where the storage can (aiogram's FSMContext makes
    two transactions of it, most of a menu click's database work), the two calls elsewhere
    (Redis). `put(context, None, {})` is FSMContext.clear()."""
    if isinstance(context.storage, RowStorage):
        await context.storage.set_row(context.key, state, data)
    else:
        await context.set_state(state)
        await context.set_data(data)
