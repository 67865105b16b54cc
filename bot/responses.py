"""aiogram's answer models, built once at start and kept for the life of the process.

aiogram validates every Bot API answer as `Response[T]`, T being the method's return type.
pydantic keeps such parametrised models only weakly (a WeakValueDictionary), so each time
the cyclic GC freed one, the next answer built it again: 1-3 ms of CPU for Message, and
4-7% of the bot's CPU under bench/menu.py (py-spy). A strong reference per return type
stops that.
"""

from __future__ import annotations

from aiogram import methods
from aiogram.methods.base import Response, TelegramMethod

_KEPT: dict[str, type[Response[object]]] = {}


def keep_response_models() -> int:
    """Build `Response[T]` for every Bot API method's return type once; returns how many
    distinct types are kept."""
    for name in methods.__all__:
        method = getattr(methods, name)
        if (
            isinstance(method, type)
            and issubclass(method, TelegramMethod)
            and method is not TelegramMethod
        ):
            returning = method.__returning__
            key = repr(returning)
            if key not in _KEPT:
                _KEPT[key] = Response[returning]  # type: ignore[valid-type]
    return len(_KEPT)
