"""bot/telegram_session.py: Bot API calls as one JSON body, the same parameters as the form."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiogram import Bot
from aiogram.client.default import DefaultBotProperties
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramBadRequest
from aiogram.methods import (
    AnswerCallbackQuery,
    EditMessageText,
    SendDocument,
    SendMessage,
    TelegramMethod,
)
from aiogram.types import (
    BufferedInputFile,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    LinkPreviewOptions,
    Message,
)

from bot import telegram_session
from bot.telegram_session import JsonSession, share
from sandbox.telegram import FakeTelegram
from tests.conftest import BOT_TOKEN


def _markup(*labels: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [InlineKeyboardButton(text=label, callback_data=f"m:{n}")]
            for n, label in enumerate(labels)
        ]
    )


def _form(session: JsonSession, bot: Bot, method: TelegramMethod[Any]) -> dict[str, Any]:
    """aiogram's multipart form, each field decoded as the Bot API reads it."""
    fields: dict[str, Any] = {}
    for options, _, value in session.build_form_data(bot, method)._fields:
        try:
            fields[options["name"]] = json.loads(value)
        except ValueError:
            fields[options["name"]] = value  # a plain string
    return fields


def _bot(session: JsonSession) -> Bot:
    return Bot(BOT_TOKEN, session=session, default=DefaultBotProperties(parse_mode="HTML"))


@pytest.mark.parametrize(
    "method",
    [
        SendMessage(chat_id=5, text="<b>hi</b> ₽ 🇷🇺", reply_markup=_markup("🏠 Menu", "‹ Back")),
        SendMessage(chat_id=5, text="x", link_preview_options=LinkPreviewOptions(is_disabled=True)),
        EditMessageText(chat_id=5, message_id=7, text="t", reply_markup=_markup("a")),
        AnswerCallbackQuery(callback_query_id="q"),
        AnswerCallbackQuery(callback_query_id="q", text="", show_alert=False, cache_time=0),
    ],
)
async def test_the_json_body_carries_what_the_form_did(method: TelegramMethod[Any]) -> None:
    session = JsonSession()
    bot = _bot(session)
    body = session.json_body(bot, method)
    assert body is not None
    assert json.loads(body) == _form(session, bot, method)
    await session.close()


async def test_a_shared_keyboard_is_encoded_once_and_sent_the_same() -> None:
    session = JsonSession()
    bot = _bot(session)
    markup = share(_markup("🇩🇪 Germany · from 12.50 ₽", "Next ›"))
    first = SendMessage(chat_id=5, text="countries", reply_markup=markup)
    expected = _form(session, bot, first)
    assert json.loads(session.json_body(bot, first) or b"") == expected
    assert telegram_session._shared[id(markup)][1] is not None, "encoded at its first send"
    again = EditMessageText(chat_id=5, message_id=3, text="countries", reply_markup=markup)
    assert json.loads(session.json_body(bot, again) or b"") == _form(session, bot, again)
    held = telegram_session.shared_count()
    del markup, first, again
    assert telegram_session.shared_count() == held - 1, "forgotten with the keyboard"
    await session.close()


async def test_an_upload_goes_as_aiogram_builds_it() -> None:
    session = JsonSession()
    method = SendDocument(chat_id=1, document=BufferedInputFile(b"x", "a.txt"))
    assert session.json_body(_bot(session), method) is None
    await session.close()


async def test_calls_reach_telegram_and_its_errors_map_as_before() -> None:
    telegram = FakeTelegram(token=BOT_TOKEN)
    await telegram.start()
    session = JsonSession(api=TelegramAPIServer.from_base(telegram.url))
    bot = _bot(session)
    try:
        user = telegram.user(42)
        await user.send("/start")
        sent = await bot.send_message(42, "<b>hello</b>", reply_markup=_markup("🏠 Menu"))
        assert isinstance(sent, Message) and sent.text == "hello"
        [call] = telegram.calls_to("sendMessage")
        assert call.params["chat_id"] == 42 and call.params["parse_mode"] == "HTML"
        assert call.params["reply_markup"] == _markup("🏠 Menu").model_dump(exclude_none=True)
        with pytest.raises(TelegramBadRequest, match="message to edit not found"):
            await bot.edit_message_text("x", chat_id=42, message_id=999_999)
        telegram.errors.clear()
    finally:
        await session.close()
        await telegram.stop()
