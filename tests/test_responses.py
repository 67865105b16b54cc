"""aiogram's Response[T] models outlive the cyclic GC (bot/responses.py), so an answer from
the Bot API never rebuilds one: the bot keeps them from start."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable

import pytest
from aiogram import methods
from aiogram.methods.base import Response, TelegramMethod

import bot.app
from bot.responses import keep_response_models
from bot.settings import Settings
from sandbox.smsman import FakeSmsMan
from sandbox.telegram import FakeTelegram
from tests.inprocess import running


def _return_types() -> list[object]:
    found = []
    for name in methods.__all__:
        method = getattr(methods, name)
        is_method = isinstance(method, type) and issubclass(method, TelegramMethod)
        if is_method and method is not TelegramMethod:
            found.append(method.__returning__)
    return found


def test_every_answer_model_outlives_a_full_collection() -> None:
    assert keep_response_models() >= 30
    models = [weakref.ref(Response[returning]) for returning in _return_types()]  # type: ignore[valid-type]
    gc.collect()
    assert all(model() is not None for model in models)
    # The same class every time: nothing is built per answer.
    returning = methods.SendMessage.__returning__
    assert Response[returning] is Response[returning]  # type: ignore[valid-type]


async def test_the_bot_keeps_them_when_it_starts(
    telegram: FakeTelegram,
    smsman: FakeSmsMan,
    bot_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(bot.app, "keep_response_models", lambda: calls.append(1) or 0)
    async with running(bot_settings()):
        pass
    assert calls == [1]
