"""aiogram's aiohttp session, sending each Bot API call as one JSON body.

aiogram's AiohttpSession sends every call as multipart/form-data: each field serialised on
its own (a keyboard to a JSON string inside the form), an aiohttp FormData and a
MultipartWriter built per call, ~0.4 ms for an edit with a page of buttons, about a tenth
of the bot's CPU per click under bench/menu.py (py-spy). The Bot API takes the same
parameters as one application/json object, built here with aiogram's own value
preparation (defaults such as parse_mode resolved, None dropped at every depth, as in the
form). Calls that upload a file still go as aiogram builds them (multipart).

Keyboards that bot/ui builds once and reuses (`share`) are encoded once: they are never
modified after they are built, so their JSON is kept beside them for as long as they live.
"""

from __future__ import annotations

import json
import weakref
from typing import TYPE_CHECKING, Any, cast

from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.exceptions import TelegramNetworkError
from aiogram.methods.base import TelegramType
from aiogram.types import InlineKeyboardMarkup
from aiohttp import ClientError, ClientTimeout

if TYPE_CHECKING:
    from aiogram import Bot
    from aiogram.methods import TelegramMethod

JSON_HEADERS = {"Content-Type": "application/json"}
MARKUP = "reply_markup"

# id(markup) -> (the markup, weakly; its JSON once a call needed it)
_shared: dict[int, tuple[weakref.ref[InlineKeyboardMarkup], bytes | None]] = {}


def share(markup: InlineKeyboardMarkup) -> InlineKeyboardMarkup:
    """Mark a keyboard as built once and never modified (bot/ui's memoised keyboards): its
    JSON is made at its first send and reused until the keyboard is garbage."""
    key = id(markup)
    if key not in _shared:
        _shared[key] = (weakref.ref(markup), None)
        weakref.finalize(markup, _shared.pop, key, None)
    return markup


def shared_count() -> int:
    return len(_shared)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


class JsonSession(AiohttpSession):
    def json_body(self, bot: Bot, method: TelegramMethod[Any]) -> bytes | None:
        """The call's parameters as one JSON object; None when it uploads a file."""
        markup_json = self._shared_markup(bot, getattr(method, MARKUP, None))
        exclude = {MARKUP} if markup_json is not None else None
        files: dict[str, Any] = {}
        payload: dict[str, Any] = {}
        for key, value in method.model_dump(warnings=False, exclude=exclude).items():
            value = self.prepare_value(value, bot=bot, files=files, _dumps_json=False)
            # What the form leaves out: None, and an empty string (`if not value`).
            if value is None or value == "":
                continue
            payload[key] = value
        if files:
            return None
        body = _dumps(payload)
        if markup_json is None:
            return body
        # The shared keyboard's JSON as the last member of the object.
        glue = b"," if payload else b""
        return b"".join((body[:-1], glue, b'"', MARKUP.encode(), b'":', markup_json, b"}"))

    def _shared_markup(self, bot: Bot, markup: object) -> bytes | None:
        if not isinstance(markup, InlineKeyboardMarkup):
            return None
        entry = _shared.get(id(markup))
        if entry is None or entry[0]() is not markup:
            return None
        encoded = entry[1]
        if encoded is None:
            encoded = _dumps(self.prepare_value(markup, bot=bot, files={}, _dumps_json=False))
            _shared[id(markup)] = (entry[0], encoded)
        return encoded

    async def make_request(
        self,
        bot: Bot,
        method: TelegramMethod[TelegramType],
        timeout: int | None = None,
    ) -> TelegramType:
        body = self.json_body(bot, method)
        if body is None:
            return await super().make_request(bot, method, timeout)
        session = await self.create_session()
        url = self.api.api_url(token=bot.token, method=method.__api_method__)
        # The same error mapping as AiohttpSession.make_request.
        try:
            async with session.post(
                url,
                data=body,
                headers=JSON_HEADERS,
                timeout=ClientTimeout(total=self.timeout if timeout is None else timeout),
            ) as resp:
                raw_result = await resp.text()
        except TimeoutError as e:
            raise TelegramNetworkError(method=method, message="Request timeout error") from e
        except ClientError as e:
            raise TelegramNetworkError(method=method, message=f"{type(e).__name__}: {e}") from e
        response = self.check_response(
            bot=bot, method=method, status_code=resp.status, content=raw_result
        )
        return cast(TelegramType, response.result)
