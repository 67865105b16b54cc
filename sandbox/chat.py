"""The local Bot API server and the chat page beside it, on one aiohttp app.

    /bot{token}/{method}   the fake Telegram (FakeTelegram's own handler, unchanged)
    /                      the chat page (static/index.html, chat.css, chat.js)
    /api/identities        the sandbox users the page can switch between
    /api/updates           long poll: the messages of one chat changed since `since`
    /api/send, /api/click  what the person at the page types and clicks

The page renders a message from its plain text and Telegram's entities, building DOM nodes
with textContent, so nothing the bot (or the provider through it) sends can become markup.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from sandbox.telegram import FakeMessage, FakeTelegram, FakeUser

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
POLL_SECONDS = 25.0
CLICK_ANSWER_SECONDS = 5.0
KEEP_CALLS = 2000  # the fake's call log is for tests; a long demo keeps only the tail


@dataclass(frozen=True)
class Identity:
    """A person at the page: one Telegram account per (user, language), because the bot
    keeps the language it first saw for an account."""

    key: str  # e.g. "alice-en"
    user_id: int
    first_name: str
    language_code: str
    admin: bool


def identities(admin_id: int, user_id: int) -> list[Identity]:
    """Alice (admin) and Bob, each in English and in Russian."""
    return [
        Identity("alice-en", admin_id, "Alice", "en", True),
        Identity("alice-ru", admin_id + 1, "Алиса", "ru", True),
        Identity("bob-en", user_id, "Bob", "en", False),
        Identity("bob-ru", user_id + 1, "Борис", "ru", False),
    ]


def message_json(message: FakeMessage) -> dict[str, Any]:
    rows = (message.inline_markup or {}).get("inline_keyboard", [])
    return {
        "id": message.message_id,
        "seq": message.seq,
        "from_bot": message.from_bot,
        "text": message.text,
        "entities": message.entities,
        "date": message.date,
        "edited": bool(message.history),
        "deleted": message.deleted,
        "keyboard": [
            [
                {
                    "text": str(button.get("text", "")),
                    "data": button.get("callback_data"),
                    "url": button.get("url"),
                }
                for button in row
            ]
            for row in rows
        ],
    }


class ChatServer:
    """Serves the fake Bot API and the chat page on `host:port` (loopback only)."""

    def __init__(
        self, telegram: FakeTelegram, people: list[Identity], *, host: str, port: int
    ) -> None:
        self.telegram = telegram
        self.people = {person.key: person for person in people}
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        self._trimmer: asyncio.Task[None] | None = None
        for person in people:
            telegram.user(
                person.user_id, first_name=person.first_name, language_code=person.language_code
            )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self.telegram._handle)
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/api/identities", self._identities)
        app.router.add_get("/api/updates", self._updates)
        app.router.add_get("/api/commands", self._commands)
        app.router.add_post("/api/send", self._send)
        app.router.add_post("/api/click", self._click)
        app.middlewares.append(_security_headers)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(
            self.app(), access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        # FakeTelegram.url and its long poll read these
        self.telegram.host = self.host
        self.telegram._port = self.port
        self.telegram._closing = False
        self._trimmer = asyncio.create_task(self._trim_logs())

    async def stop(self) -> None:
        self.telegram._closing = True
        self.telegram._poll_signal.notify()
        if self._trimmer is not None:
            self._trimmer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._trimmer
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _trim_logs(self) -> None:
        reported = 0
        while True:
            await asyncio.sleep(5)
            errors = self.telegram.errors
            for error in errors[reported:]:
                log.warning(
                    "the bot caused %s %s: %s", error.method, error.status, error.description
                )
            reported = len(errors)
            if len(self.telegram.calls) > KEEP_CALLS:
                del self.telegram.calls[:-KEEP_CALLS]

    # ------------------------------------------------------------------ page

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = STATIC / name
        if name not in {"chat.css", "chat.js"} or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    async def _identities(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {
                    "key": p.key,
                    "user_id": p.user_id,
                    "first_name": p.first_name,
                    "language_code": p.language_code,
                    "admin": p.admin,
                }
                for p in self.people.values()
            ]
        )

    # ------------------------------------------------------------------ chat API

    def _user(self, key: Any) -> FakeUser:
        person = self.people.get(str(key))
        if person is None:
            raise web.HTTPBadRequest(text="unknown sandbox user")
        return self.telegram.user(person.user_id)

    async def _updates(self, request: web.Request) -> web.Response:
        user = self._user(request.query.get("user"))
        try:
            since = int(request.query.get("since", "0"))
            wait = request.query.get("wait", "1") != "0"
        except ValueError:
            raise web.HTTPBadRequest(text="since must be a number") from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (POLL_SECONDS if wait else 0)
        while True:
            changed = [m for m in user.all_messages if m.seq > since]
            remaining = deadline - loop.time()
            if changed or remaining <= 0 or self.telegram._closing:
                break
            await user._signal.wait(min(remaining, 1.0))
        return web.json_response(
            {
                "seq": max([since, *(m.seq for m in changed)]),
                "messages": [message_json(m) for m in changed],
            }
        )

    async def _commands(self, request: web.Request) -> web.Response:
        """The bot's command menu for this chat, looked up as Telegram's clients do: the
        narrowest scope first, the user's language before the default list."""
        user = self._user(request.query.get("user"))
        language = (user.language_code or "")[:2]
        scopes = [
            {"type": "chat", "chat_id": user.id},
            {"type": "all_private_chats"},
            {"type": "default"},
        ]
        for scope in scopes:
            key = json.dumps(scope, sort_keys=True)
            for lang in dict.fromkeys((language, "")):
                commands = self.telegram.commands.get((key, lang))
                if commands:
                    return web.json_response(commands)
        return web.json_response([])

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="JSON expected") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="JSON object expected")
        return body

    async def _send(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        user = self._user(body.get("user"))
        text = body.get("text")
        if not isinstance(text, str) or not text.strip() or len(text) > 4096:
            raise web.HTTPBadRequest(text="a message is 1-4096 characters")
        await user.send(text.strip())
        return web.json_response({"ok": True})

    async def _click(self, request: web.Request) -> web.Response:
        """Press a button: a callback query goes to the bot; the answer (a toast or an
        alert) is returned once the bot gave it, as a Telegram client would show it."""
        body = await self._body(request)
        user = self._user(body.get("user"))
        message_id, data = body.get("message_id"), body.get("data")
        if not isinstance(message_id, int) or not isinstance(data, str):
            raise web.HTTPBadRequest(text="message_id and data expected")
        message = user._messages.get(message_id)
        if message is None or not message.from_bot or message.deleted:
            raise web.HTTPBadRequest(text="no such message")
        if data not in {d for row in message.buttons for _, d in row}:
            raise web.HTTPBadRequest(text="no such button on that message")
        query_id = await user.click_data(data, message_id)
        try:
            answer = await user.wait_answered(query_id, timeout=CLICK_ANSWER_SECONDS)
        except AssertionError:  # the bot did not answer: Telegram's client gives up too
            return web.json_response({"answered": False})
        text = answer.get("text")
        return web.json_response(
            {
                "answered": True,
                "text": text if isinstance(text, str) else "",
                "alert": bool(answer.get("show_alert")),
            }
        )


@web.middleware
async def _security_headers(request: web.Request, handler: Any) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    if not request.path.startswith("/bot"):
        # belt and braces: even a rendering mistake could run no inline or foreign script
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
    return response
