"""A strict in-process fake of the Telegram Bot API for end-to-end tests.

`FakeTelegram` is an aiohttp app on 127.0.0.1 (random port) that answers
`POST {url}/bot{token}/{method}` the way api.telegram.org does: the same JSON
envelopes, the same status codes and the same error descriptions for the rules
Telegram enforces (HTML entity parsing, 4096-character texts, 64-byte
callback_data, "message is not modified", blocked users, flood control...).

    async with FakeTelegram() as fake:
        bot = Bot(fake.token, session=AiohttpSession(api=TelegramAPIServer.from_base(fake.url)),
                  default=DefaultBotProperties(parse_mode="HTML"))
        ann = fake.user(42)
        await ann.send("/start")
        menu = await ann.wait_for("Choose a service")
        await ann.click("Telegram")
        ...
        assert fake.errors == []   # the bot never caused a 4xx on its own

Everything runs on the test's event loop, so state is inspected directly
(`user.messages`, `fake.calls`) without locks.

Flood limits, as Telegram applies them to the calls that put a message in a chat or change
one (COUNTED_METHODS; answerCallbackQuery, getUpdates and the like are free):

- per bot: at most `max_per_second` (30) in any sliding second;
- per chat: the bot's answers to what the user just did are free: every message or
  callback query from the user gives the bot `reply_allowance` (3) sends/edits in that
  chat over the next `reply_window` (10) seconds. Beyond that a chat tolerates a short
  burst, a token bucket of `chat_burst` (3) refilled at `chat_rate` (1) a second.

A call beyond either answers 429 "Too Many Requests: retry after N" with
`parameters.retry_after` = N (whole seconds until it would pass) and is recorded in
`fake.errors`: the bot caused it. `FakeTelegram(enforce_limits=False)` turns them off.
`fake.slow(methods, seconds)` makes those calls take that long before Telegram acts on
them (a call abandoned meanwhile is never acted on); the limits count a call on arrival.

Webhooks: after `setWebhook` the fake POSTs each update (JSON, with the
X-Telegram-Bot-Api-Secret-Token header) to the URL, like Telegram: again after a non-2xx
answer or `webhook_timeout`, one chat's updates in order, up to max_connections at once;
getUpdates answers 409 meanwhile. `fake.route_webhook([url1, url2])` spreads the posts
over several replicas as a load balancer would; `fake.webhook_posts` records each post.
Unlike Telegram (HTTPS on 443, 80, 88 or 8443 only), `http://` to a loopback host is
accepted so that tests need no TLS.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import re
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, Self

import aiohttp
import yarl
from aiohttp import web

from sandbox.telegram_html import EntityParseError, parse_html, trim_text, utf16_len
from sandbox.telegram_markup import MarkupError, inline_buttons, validate_reply_markup

__all__ = [
    "ApiError",
    "Call",
    "FakeMessage",
    "FakeTelegram",
    "FakeUser",
    "MessageSnapshot",
    "StarPayment",
    "WebhookPost",
]

log = logging.getLogger(__name__)

Params = dict[str, Any]
JSONDict = dict[str, Any]

MAX_TEXT_LENGTH = 4096
MAX_CALLBACK_ANSWER_LENGTH = 200

NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup "
    "are exactly the same as a current content and reply markup of the message"
)
QUERY_TOO_OLD = "Bad Request: query is too old and response timeout expired or query ID is invalid"
BLOCKED = "Forbidden: bot was blocked by the user"
CONFLICT = (
    "Conflict: terminated by other getUpdates request; "
    "make sure that only one bot instance is running"
)
WEBHOOK_ACTIVE = (
    "Conflict: can't use getUpdates method while webhook is active; "
    "use deleteWebhook to delete the webhook first"
)
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{1,256}")
WEBHOOK_PORTS = frozenset({443, 80, 88, 8443})  # the only ports Telegram posts to
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

# Fields whose form-encoded value is a JSON document.
JSON_FIELDS = frozenset(
    {
        "reply_markup",
        "allowed_updates",
        "commands",
        "scope",
        "entities",
        "caption_entities",
        "link_preview_options",
        "reply_parameters",
        "message_ids",
        "media",
        "results",
        "menu_button",
        "rights",
        "options",
        "prices",
        "reaction",
        "explanation_entities",
        "question_entities",
    }
)
INT_FIELDS = frozenset(
    {
        "message_id",
        "offset",
        "limit",
        "timeout",
        "cache_time",
        "message_thread_id",
        "user_id",
        "reply_to_message_id",
        "max_connections",
        "max_tip_amount",
    }
)
BOOL_FIELDS = frozenset(
    {
        "disable_notification",
        "protect_content",
        "show_alert",
        "drop_pending_updates",
        "disable_web_page_preview",
        "allow_sending_without_reply",
        "allow_paid_broadcast",
        "for_channels",
        "is_big",
        "ok",
        "is_flexible",
    }
)
CHAT_ACTIONS = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)
COMMAND_SCOPES = frozenset(
    {
        "default",
        "all_private_chats",
        "all_group_chats",
        "all_chat_administrators",
        "chat",
        "chat_administrators",
        "chat_member",
    }
)
_COMMAND_RE = re.compile(r"[a-z0-9_]{1,32}")
# Update types Telegram does not send unless asked for in allowed_updates.
OPT_IN_UPDATES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})
# Methods Telegram's flood limits count.
COUNTED_METHODS = frozenset(
    {
        "sendMessage",
        "editMessageText",
        "editMessageReplyMarkup",
        "editMessageCaption",
        "copyMessage",
        "forwardMessage",
        "sendPhoto",
        "sendDocument",
        "sendInvoice",
    }
)
# Methods that `fake.block()` and `fake.flood()` apply to.
WRITE_METHODS = frozenset(
    {"sendMessage", "sendChatAction", "editMessageText", "editMessageReplyMarkup", "sendInvoice"}
)
STARS = "XTR"
MAX_INVOICE_STARS = 10_000
PRE_CHECKOUT_TIMEOUT = 10.0  # seconds Telegram waits for answerPreCheckoutQuery


# --------------------------------------------------------------------------- records


@dataclass
class Call:
    """One request the fake answered."""

    method: str
    params: Params
    status: int
    response: JSONDict
    time: float  # time.monotonic() when the request arrived
    duration: float = 0.0
    injected: bool = False

    @property
    def ok(self) -> bool:
        return self.status == HTTPStatus.OK


@dataclass
class WebhookPost:
    """One POST of an update to a webhook target, and how it ended."""

    update_id: int
    target: str
    time: float  # time.monotonic() when it was sent
    status: int | None = None  # None: no HTTP answer (refused, reset, timed out)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass(frozen=True)
class ApiError:
    """A non-2xx answer: `fake.errors` (caused by the bot) or `fake.injected`."""

    method: str
    status: int
    description: str
    params: Params = field(compare=False)


@dataclass(frozen=True)
class MessageSnapshot:
    """A previous state of a message (see FakeMessage.history)."""

    text: str
    html: str
    entities: list[JSONDict]
    reply_markup: JSONDict | None
    date: int


@dataclass(eq=False)
class FakeMessage:
    """A message in a private chat; its fields always hold the current state."""

    message_id: int
    chat_id: int
    text: str  # plain text: tags stripped, entities unescaped, trimmed
    html: str  # the raw text the bot sent (HTML source when parse_mode=HTML)
    date: int
    reply_markup: JSONDict | None = None  # as sent (inline keyboard or a reply keyboard)
    entities: list[JSONDict] = field(default_factory=list)
    parse_mode: str | None = None
    from_bot: bool = True
    edits: list[str] = field(default_factory=list)  # previous texts, one per editMessageText
    history: list[MessageSnapshot] = field(default_factory=list)  # every previous state
    deleted: bool = False
    edit_date: int | None = None
    seq: int = 0  # the fake's change counter at the last send/edit/delete
    invoice: JSONDict | None = None  # sendInvoice: the Invoice object Telegram shows
    invoice_payload: str | None = None  # ... and its payload (never shown to the user)

    @property
    def inline_markup(self) -> JSONDict | None:
        """The inline keyboard (what Telegram echoes back), or None."""
        if self.reply_markup and "inline_keyboard" in self.reply_markup:
            return self.reply_markup
        return None

    @property
    def buttons(self) -> list[list[tuple[str, str | None]]]:
        """Inline keyboard rows of (label, callback_data or url)."""
        return inline_buttons(self.inline_markup)

    @property
    def labels(self) -> list[str]:
        return [label for row in self.buttons for label, _ in row]

    @property
    def has_keyboard(self) -> bool:
        return self.inline_markup is not None

    def snapshot(self) -> MessageSnapshot:
        return MessageSnapshot(self.text, self.html, self.entities, self.reply_markup, self.date)

    def describe(self) -> str:
        who = "bot " if self.from_bot else "user"
        flags = ""
        if self.edits or self.history:
            flags += f" [edited x{len(self.history)}]"
        if self.deleted:
            flags += " [deleted]"
        text = self.text.replace("\n", "\n          ")
        line = f"  #{self.message_id:<4} {who}{flags}: {text}"
        for row in self.buttons:
            line += "\n          [" + " | ".join(f"{lbl} -> {data}" for lbl, data in row) + "]"
        return line

    def __repr__(self) -> str:
        flags = " deleted" if self.deleted else ""
        return (
            f"FakeMessage(#{self.message_id} chat={self.chat_id}{flags} "
            f"text={self.text[:80]!r} labels={self.labels})"
        )


@dataclass
class _Callback:
    id: str
    user_id: int
    message_id: int
    data: str
    created: float
    answered: bool = False
    answer: Params | None = None


@dataclass
class _PreCheckout:
    id: str
    user_id: int
    created: float
    answered: bool = False
    answer: Params | None = None


@dataclass
class StarPayment:
    """One press of Pay: what pre-checkout said and, when approved, the charge."""

    query_id: str
    user_id: int
    amount: int
    payload: str
    ok: bool  # the bot answered ok=True in time
    error_message: str | None = None  # the bot's refusal, or "timeout"
    charge_id: str | None = None  # telegram_payment_charge_id once paid
    refunded: bool = False


@dataclass
class _FailRule:
    method: str
    chat_id: int | None
    status: int
    retry_after: int
    times: int
    description: str | None


class _ApiFail(Exception):
    def __init__(
        self,
        status: int,
        description: str,
        *,
        retry_after: int | None = None,
        injected: bool = False,
        record: bool = True,
    ) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.retry_after = retry_after
        self.injected = injected
        self.record = record

    def body(self) -> JSONDict:
        body: JSONDict = {"ok": False, "error_code": self.status, "description": self.description}
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return body


def _bad(description: str) -> _ApiFail:
    return _ApiFail(400, f"Bad Request: {description}")


class _Signal:
    """Wakes every current waiter on notify(); no lock needed on one event loop."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        event = self._event
        if timeout <= 0:
            return
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass


class _Hold:
    """Returned by hold_updates(): `with fake.hold_updates():` releases on exit."""

    def __init__(self, fake: FakeTelegram) -> None:
        self._fake = fake
        self._open = True

    def release(self) -> None:
        if self._open:
            self._open = False
            self._fake.release_updates()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


def _default_description(status: int, retry_after: int) -> str:
    if status == HTTPStatus.TOO_MANY_REQUESTS:
        return f"Too Many Requests: retry after {retry_after}"
    known = {
        400: "Bad Request: injected failure",
        401: "Unauthorized",
        403: BLOCKED,
        404: "Not Found",
        409: CONFLICT,
        500: "Internal Server Error",
        502: "Bad Gateway",
    }
    if status in known:
        return known[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"Error {status}"


def _update_chat(update: JSONDict) -> int:
    """The chat (or user) an update belongs to, for per-chat ordering; 0 if none."""
    payload = next(value for key, value in update.items() if key != "update_id")
    if isinstance(payload, dict):
        for path in (("chat", "id"), ("message", "chat", "id"), ("from", "id")):
            node: Any = payload
            for key in path:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, int):
                return node
    return 0


def _now() -> int:
    return int(time.time())


# --------------------------------------------------------------------------- users


class FakeUser:
    """A Telegram user talking to the bot in a private chat (chat id == user id)."""

    def __init__(
        self,
        fake: FakeTelegram,
        user_id: int,
        *,
        first_name: str,
        language_code: str | None,
        username: str | None,
        last_name: str | None,
        started: bool,
    ) -> None:
        self.fake = fake
        self.id = user_id
        self.first_name = first_name
        self.last_name = last_name
        self.username = username
        self.language_code = language_code
        self.started = started  # has talked to the bot (else the bot can't write first)
        self.blocked = False
        self.chat_actions: list[str] = []
        self._messages: dict[int, FakeMessage] = {}
        self._next_message_id = 1
        self._callbacks: list[_Callback] = []
        self._signal = _Signal()

    # ---- identity

    @property
    def chat_id(self) -> int:
        return self.id

    def to_json(self) -> JSONDict:
        user: JSONDict = {"id": self.id, "is_bot": False, "first_name": self.first_name}
        if self.last_name:
            user["last_name"] = self.last_name
        if self.username:
            user["username"] = self.username
        if self.language_code:
            user["language_code"] = self.language_code
        return user

    def chat_json(self) -> JSONDict:
        chat: JSONDict = {"id": self.id, "type": "private", "first_name": self.first_name}
        if self.last_name:
            chat["last_name"] = self.last_name
        if self.username:
            chat["username"] = self.username
        return chat

    # ---- what the user sees

    @property
    def messages(self) -> list[FakeMessage]:
        """The bot's messages in this chat, oldest first, current state, deleted excluded."""
        return [m for m in self._messages.values() if m.from_bot and not m.deleted]

    @property
    def all_messages(self) -> list[FakeMessage]:
        """Every message in the chat (the user's too, deleted ones too), oldest first."""
        return list(self._messages.values())

    @property
    def last(self) -> FakeMessage:
        """The bot's newest (non-deleted) message; AssertionError if there is none."""
        messages = self.messages
        if not messages:
            raise AssertionError(f"the bot sent nothing to {self.id}\n{self.transcript()}")
        return messages[-1]

    def message(self, message_id: int) -> FakeMessage:
        """Any message of this chat by id (deleted ones too)."""
        try:
            return self._messages[message_id]
        except KeyError:
            raise AssertionError(
                f"no message #{message_id} in chat {self.id}\n{self.transcript()}"
            ) from None

    def keyboard_message(self) -> FakeMessage | None:
        """The newest bot message that has an inline keyboard."""
        for message in reversed(self.messages):
            if message.has_keyboard:
                return message
        return None

    def buttons(self, message: FakeMessage | int | None = None) -> list[str]:
        """Labels of the given message's inline keyboard, or of the newest keyboard."""
        if isinstance(message, int):
            message = self.message(message)
        if message is None:
            message = self.keyboard_message()
        return message.labels if message is not None else []

    def transcript(self) -> str:
        lines = [f"chat {self.id} ({self.first_name}):"]
        lines += [m.describe() for m in self._messages.values()]
        for cb in self._callbacks:
            state = f"answered {cb.answer}" if cb.answered else "NOT answered"
            lines.append(f"  click on #{cb.message_id} data={cb.data!r} id={cb.id}: {state}")
        if self.chat_actions:
            lines.append(f"  chat actions: {self.chat_actions}")
        return "\n".join(lines)

    # ---- what the user does

    async def send(self, text: str) -> JSONDict:
        """Send a text message to the bot; returns the Message dict put in the update."""
        if not text:
            raise ValueError("a user can't send an empty message")
        if self.blocked:
            self.fake.unblock(self.id)
        self.started = True
        message = FakeMessage(self._take_id(), self.id, text, text, _now(), from_bot=False)
        self._add(message)
        payload: JSONDict = {
            "message_id": message.message_id,
            "from": self.to_json(),
            "chat": self.chat_json(),
            "date": message.date,
            "text": text,
        }
        if text.startswith("/"):
            command = text.split(maxsplit=1)[0]
            message.entities = [{"type": "bot_command", "offset": 0, "length": utf16_len(command)}]
            payload["entities"] = message.entities
        self.fake._put("message", payload)
        return payload

    async def click(self, label: str, *, message_id: int | None = None) -> str:
        """Press the first inline button whose label contains `label`; returns the query id."""
        if message_id is not None:
            message: FakeMessage | None = self.message(message_id)
            assert message is not None
            if message.deleted or not message.from_bot:
                raise AssertionError(
                    f"can't click on message #{message_id}: deleted or not the bot's\n"
                    f"{self.transcript()}"
                )
        else:
            message = self.keyboard_message()
            if message is None:
                raise AssertionError(
                    f"no bot message with an inline keyboard in chat {self.id} to click "
                    f"{label!r}\n{self.transcript()}"
                )
        for row in message.inline_markup["inline_keyboard"] if message.inline_markup else []:
            for button in row:
                if label in button.get("text", ""):
                    data = button.get("callback_data")
                    if data is None:
                        raise AssertionError(
                            f"button {button['text']!r} on #{message.message_id} has no "
                            f"callback_data: {button}"
                        )
                    return self._callback(message, str(data))
        raise AssertionError(
            f"no button containing {label!r} on message #{message.message_id}; "
            f"available: {message.labels}\n{self.transcript()}"
        )

    @property
    def invoices(self) -> list[FakeMessage]:
        """The bot's invoice messages in this chat, oldest first."""
        return [m for m in self.messages if m.invoice is not None]

    async def pay(
        self,
        invoice: FakeMessage | int,
        *,
        total_amount: int | None = None,
        payload: str | None = None,
        currency: str | None = None,
        deliver: bool = True,
    ) -> StarPayment:
        """Press Pay on an invoice: a pre_checkout_query goes to the bot; if it answers
        ok=True within the deadline, the Stars are taken (a transaction is recorded) and,
        with `deliver`, the successful_payment message follows. `total_amount`, `payload`
        and `currency` forge what the query carries (tests of the bot's checks)."""
        message = self.message(invoice) if isinstance(invoice, int) else invoice
        if message.invoice is None or message.invoice_payload is None:
            raise AssertionError(f"message #{message.message_id} is not an invoice")
        fake = self.fake
        amount = message.invoice["total_amount"] if total_amount is None else total_amount
        sent_payload = message.invoice_payload if payload is None else payload
        fake._callback_counter += 1
        query = _PreCheckout(
            id=str(5_550_000_000_000_000_000 + fake._callback_counter),
            user_id=self.id,
            created=time.monotonic(),
        )
        fake._pre_checkouts[query.id] = query
        fake._put(
            "pre_checkout_query",
            {
                "id": query.id,
                "from": self.to_json(),
                "currency": message.invoice["currency"] if currency is None else currency,
                "total_amount": amount,
                "invoice_payload": sent_payload,
            },
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + fake.pre_checkout_timeout
        while not query.answered and loop.time() < deadline:
            await self._signal.wait(deadline - loop.time())
        payment = StarPayment(query.id, self.id, amount, sent_payload, ok=False)
        if not query.answered or query.answer is None:
            payment.error_message = "timeout"
            return payment
        if not query.answer.get("ok"):
            payment.error_message = str(query.answer.get("error_message"))
            return payment
        payment.ok = True
        fake._charge(self, payment)
        if deliver:
            fake.deliver_payment(payment)
        return payment

    async def click_data(self, data: str, message_id: int) -> str:
        """Send a callback_query with arbitrary (possibly forged) data on a message."""
        return self._callback(self.message(message_id), data)

    # ---- waiting

    async def wait_for(
        self,
        text_contains: str | None = None,
        *,
        predicate: Callable[[FakeMessage], bool] | None = None,
        timeout: float = 5.0,
        new_only: bool = False,
    ) -> FakeMessage:
        """Wait for a bot message in this chat (sent or edited) that matches.

        With new_only, only messages sent or edited after the call count. If several
        match, the most recently changed one is returned.
        """
        since = self.fake._seq if new_only else -1

        def find() -> FakeMessage | None:
            best: FakeMessage | None = None
            for message in self.messages:
                if message.seq <= since:
                    continue
                if text_contains is not None and text_contains not in message.text:
                    continue
                if predicate is not None and not predicate(message):
                    continue
                if best is None or message.seq > best.seq:
                    best = message
            return best

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = find()
            if found is not None:
                return found
            remaining = deadline - loop.time()
            if remaining <= 0:
                what = []
                if text_contains is not None:
                    what.append(f"containing {text_contains!r}")
                if predicate is not None:
                    what.append(f"matching {getattr(predicate, '__name__', predicate)}")
                if new_only:
                    what.append("new or edited")
                raise AssertionError(
                    f"no bot message {' '.join(what) or '(any)'} in chat {self.id} "
                    f"within {timeout}s\n{self.transcript()}"
                )
            await self._signal.wait(remaining)

    def answered(self, callback_id: str) -> bool:
        cb = self.fake._callbacks.get(callback_id)
        return cb is not None and cb.answered

    def callback_answer(self, callback_id: str) -> Params | None:
        """The answerCallbackQuery params (text, show_alert...) or None if unanswered."""
        cb = self.fake._callbacks.get(callback_id)
        return cb.answer if cb is not None else None

    async def wait_answered(self, callback_id: str, timeout: float = 5.0) -> Params:
        """Wait until the bot answered the query; returns the answer params."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            cb = self.fake._callbacks.get(callback_id)
            if cb is not None and cb.answered and cb.answer is not None:
                return cb.answer
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"callback query {callback_id} not answered within {timeout}s\n"
                    f"{self.transcript()}"
                )
            await self._signal.wait(remaining)

    # ---- internals

    def _take_id(self) -> int:
        message_id = self._next_message_id
        self._next_message_id += 1
        return message_id

    def _add(self, message: FakeMessage) -> FakeMessage:
        self._messages[message.message_id] = message
        self._changed(message)
        return message

    def _changed(self, message: FakeMessage | None = None) -> None:
        self.fake._seq += 1
        if message is not None:
            message.seq = self.fake._seq
        self._signal.notify()

    def _callback(self, message: FakeMessage, data: str) -> str:
        self.started = True
        fake = self.fake
        fake._callback_counter += 1
        cb = _Callback(
            id=str(4_470_000_000_000_000_000 + fake._callback_counter),
            user_id=self.id,
            message_id=message.message_id,
            data=data,
            created=time.monotonic(),
        )
        fake._callbacks[cb.id] = cb
        self._callbacks.append(cb)
        fake._put(
            "callback_query",
            {
                "id": cb.id,
                "from": self.to_json(),
                "message": fake._message_json(message)
                if not message.deleted
                # what Telegram sends for a deleted message (aiogram: InaccessibleMessage)
                else {"chat": self.chat_json(), "message_id": message.message_id, "date": 0},
                "chat_instance": str(-(self.id * 7919 + 17)),
                "data": data,
            },
        )
        return cb.id

    def __repr__(self) -> str:
        return f"FakeUser({self.id}, {self.first_name!r}, messages={len(self.messages)})"


# --------------------------------------------------------------------------- server


class FakeTelegram:
    """A strict fake Telegram Bot API server (see the module docstring)."""

    def __init__(
        self,
        token: str = "123456:TEST-TOKEN",
        *,
        bot_username: str = "fake_test_bot",
        bot_first_name: str = "Fake Test Bot",
        host: str = "127.0.0.1",
        strict_ampersand: bool = True,
        callback_ttl: float | None = None,
        enforce_limits: bool = True,
        max_per_second: int = 30,
        chat_burst: float = 3,
        chat_rate: float = 1.0,
        reply_allowance: int = 3,
        reply_window: float = 10.0,
    ) -> None:
        """
        :param strict_ampersand: reject a bare `&` in HTML text (real Telegram keeps it).
        :param callback_ttl: seconds after which answerCallbackQuery says the query is
            too old (Telegram: ~15 s); None never expires.
        """
        self.token = token
        self.bot_id = int(token.split(":", 1)[0]) if token.split(":", 1)[0].isdigit() else 1
        self.bot_username = bot_username
        self.bot_first_name = bot_first_name
        self.host = host
        self.strict_ampersand = strict_ampersand
        self.callback_ttl = callback_ttl
        self.enforce_limits = enforce_limits
        self.max_per_second = max_per_second
        self.chat_burst = chat_burst
        self.chat_rate = chat_rate
        self.reply_allowance = reply_allowance
        self.reply_window = reply_window
        self.counted: list[float] = []  # monotonic arrival times of every counted call
        self._recent: deque[float] = deque()  # counted calls of the last second
        self._buckets: dict[int, tuple[float, float]] = {}  # chat -> (tokens, at)
        self._credits: dict[int, deque[float]] = {}  # chat -> expiries of reply credits
        self._delays: dict[str, float] = {}

        self.calls: list[Call] = []
        self.errors: list[ApiError] = []
        self.injected: list[ApiError] = []
        self.dropped_updates: list[JSONDict] = []  # filtered out by allowed_updates
        self.commands: dict[tuple[str, str], list[JSONDict]] = {}  # (scope json, lang)
        self.descriptions: dict[tuple[str, str], str] = {}  # (kind, lang) -> text

        self._users: dict[int, FakeUser] = {}
        self._groups: dict[int, JSONDict] = {}  # group chats, by (negative) id
        self._next_group_message_id = 1
        self.bot_in_groups: set[int] = set()  # groups the bot is a member of
        self.left_chats: list[int] = []  # leaveChat calls, in order
        self._callbacks: dict[str, _Callback] = {}
        self._pre_checkouts: dict[str, _PreCheckout] = {}
        self.pre_checkout_timeout = PRE_CHECKOUT_TIMEOUT
        self.payments: dict[str, StarPayment] = {}  # charge id -> the payment
        self.star_transactions: list[JSONDict] = []  # chronological, as Telegram lists them
        self._callback_counter = 0
        self._charge_counter = 0
        self._seq = 0

        self._updates: list[JSONDict] = []
        self._history: dict[int, JSONDict] = {}  # every update ever put, by update_id
        self._held: list[JSONDict] = []
        self._hold_depth = 0
        self._next_update_id = 100_000_001
        self._allowed: frozenset[str] | None = None
        self._poll_signal = _Signal()
        self._active_poll: object | None = None

        self._fail_rules: list[_FailRule] = []
        self._flood_rate = 0.0
        self._flood_retry_after = 1
        self._flood_methods: frozenset[str] = WRITE_METHODS
        self._flood_rng = random.Random(0)

        self._inflight = 0
        self._last_activity = time.monotonic()
        self._closing = False
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

        # Webhook: while set, updates are POSTed (see setWebhook below) and getUpdates is 409.
        self.webhook: JSONDict | None = None  # url, secret_token, max_connections, ...
        self.webhook_targets: list[str] = []  # route_webhook(): the load balancer's replicas
        self.webhook_timeout = 5.0  # seconds Telegram waits for the answer to one POST
        self.webhook_retry_delay = 0.2  # seconds before a failed update is posted again
        self.webhook_posts: list[WebhookPost] = []
        self._webhook_task: asyncio.Task[None] | None = None
        self._webhook_inflight: dict[int, int] = {}  # update_id -> chat id
        self._webhook_next_try: dict[int, float] = {}  # update_id -> loop time
        self._webhook_rr = 0
        self._webhook_error: tuple[int, str] | None = None
        self._webhook_session: Any = None

        handlers: dict[str, Callable[[Params, web.Request], Any]] = {
            "getMe": self._get_me,
            "getUpdates": self._get_updates,
            "setWebhook": self._set_webhook,
            "deleteWebhook": self._delete_webhook,
            "getWebhookInfo": self._get_webhook_info,
            "setMyCommands": self._set_my_commands,
            "getMyCommands": self._get_my_commands,
            "deleteMyCommands": self._delete_my_commands,
            "setMyDescription": self._set_description("description", 512),
            "getMyDescription": self._get_description("description"),
            "setMyShortDescription": self._set_description("short_description", 120),
            "getMyShortDescription": self._get_description("short_description"),
            "setMyName": self._set_description("name", 64),
            "getMyName": self._get_description("name"),
            "sendMessage": self._send_message,
            "editMessageText": self._edit_message_text,
            "editMessageReplyMarkup": self._edit_message_reply_markup,
            "deleteMessage": self._delete_message,
            "deleteMessages": self._delete_messages,
            "answerCallbackQuery": self._answer_callback_query,
            "sendChatAction": self._send_chat_action,
            "getChat": self._get_chat,
            "sendInvoice": self._send_invoice,
            "answerPreCheckoutQuery": self._answer_pre_checkout_query,
            "refundStarPayment": self._refund_star_payment,
            "getStarTransactions": self._get_star_transactions,
            "leaveChat": self._leave_chat,
            "close": self._ok,
            "logOut": self._ok,
        }
        self._methods = {name.lower(): (name, handler) for name, handler in handlers.items()}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        app = web.Application(client_max_size=50 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=2.0
        )
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self._port = sock.getsockname()[1]
        site = web.SockSite(self._runner, sock, backlog=1024)
        await site.start()
        self._closing = False

    async def stop(self) -> None:
        self._closing = True
        self._poll_signal.notify()
        await self._stop_webhook()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """Base URL for TelegramAPIServer.from_base(), e.g. http://127.0.0.1:43121."""
        if self._port is None:
            raise RuntimeError("FakeTelegram is not started")
        return f"http://{self.host}:{self._port}"

    @property
    def bot_user(self) -> JSONDict:
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": self.bot_first_name,
            "username": self.bot_username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    # ------------------------------------------------------------------ test-facing API

    def user(
        self,
        user_id: int,
        *,
        first_name: str = "Ann",
        language_code: str | None = "en",
        username: str | None = None,
        last_name: str | None = None,
        started: bool = False,
    ) -> FakeUser:
        """The user (created on first use). `started=True`: as if they had /started the
        bot before, so the bot may write first."""
        existing = self._users.get(user_id)
        if existing is not None:
            existing.started = existing.started or started
            return existing
        user = FakeUser(
            self,
            user_id,
            first_name=first_name,
            language_code=language_code,
            username=username,
            last_name=last_name,
            started=started,
        )
        self._users[user_id] = user
        return user

    @property
    def users(self) -> dict[int, FakeUser]:
        return dict(self._users)

    # ------------------------------------------------------------------ groups

    def add_to_group(
        self, user_id: int, group_id: int, title: str = "A group", *, notify: bool = True
    ) -> int | None:
        """`user_id` adds the bot to the group `group_id` (negative, as Telegram's are):
        the bot gets my_chat_member from the group (unless `notify` is False: it was added
        long ago). Returns the update id."""
        if group_id >= 0:
            raise ValueError("group chat ids are negative")
        self._groups[group_id] = {"id": group_id, "type": "group", "title": title}
        self.bot_in_groups.add(group_id)
        if not notify:
            return None
        return self._group_member_update(user_id, group_id, "left", "member")

    def remove_from_group(self, user_id: int, group_id: int) -> int:
        """`user_id` removes (bans) the bot from the group: my_chat_member, status kicked."""
        self.bot_in_groups.discard(group_id)
        return self._group_member_update(user_id, group_id, "member", "kicked")

    def group_message(self, user_id: int, group_id: int, text: str) -> int:
        """`user_id` writes `text` in the group (a command reaches a bot in privacy mode)."""
        user = self.user(user_id)
        payload: JSONDict = {
            "message_id": self._next_group_message_id,
            "from": user.to_json(),
            "chat": self._groups[group_id],
            "date": _now(),
            "text": text,
        }
        self._next_group_message_id += 1
        if text.startswith("/"):
            command = text.split(maxsplit=1)[0]
            payload["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
        return self._put("message", payload)

    def _group_member_update(self, user_id: int, group_id: int, old: str, new: str) -> int:
        update = self._member_update(self.user(user_id), old, new)
        update["chat"] = self._groups[group_id]
        return self._put("my_chat_member", update)

    def calls_to(self, method: str) -> list[Call]:
        name = self._canonical(method)
        return [call for call in self.calls if call.method == name]

    def clear_log(self) -> None:
        """Forget calls, errors and injected errors (e.g. after a warm-up)."""
        self.calls.clear()
        self.errors.clear()
        self.injected.clear()

    def block(self, user_id: int, *, notify: bool = True) -> None:
        """The user blocks the bot: sends/edits to the chat answer 403 (injected)."""
        user = self.user(user_id)
        if user.blocked:
            return
        user.blocked = True
        if notify:
            self._put("my_chat_member", self._member_update(user, "member", "kicked"))

    def unblock(self, user_id: int, *, notify: bool = True) -> None:
        user = self.user(user_id)
        if not user.blocked:
            return
        user.blocked = False
        if notify:
            self._put("my_chat_member", self._member_update(user, "kicked", "member"))

    def fail_next(
        self,
        method: str,
        *,
        chat_id: int | None = None,
        status: int = 429,
        retry_after: int = 1,
        times: int = 1,
        description: str | None = None,
    ) -> None:
        """Answer the next `times` calls of `method` (to `chat_id`, if given) with an error.

        429 carries `parameters.retry_after`; other statuses get a fitting description.
        The call is not executed. Recorded in `fake.injected`, not in `fake.errors`.
        """
        if times < 1:
            raise ValueError("times must be >= 1")
        self._fail_rules.append(
            _FailRule(self._canonical(method), chat_id, status, retry_after, times, description)
        )

    def flood(
        self,
        rate: float,
        retry_after: int = 1,
        *,
        seed: int = 0,
        methods: Iterable[str] | None = None,
    ) -> None:
        """Answer a random share `rate` (0..1) of send/edit calls with 429; 0 turns it off."""
        if not 0 <= rate <= 1:
            raise ValueError("rate must be within 0..1")
        self._flood_rate = rate
        self._flood_retry_after = retry_after
        self._flood_rng = random.Random(seed)
        self._flood_methods = (
            WRITE_METHODS if methods is None else frozenset(self._canonical(m) for m in methods)
        )

    def slow(self, methods: Iterable[str], seconds: float) -> None:
        """Those calls take `seconds` before Telegram acts on them (0: back to normal)."""
        for method in methods:
            if seconds > 0:
                self._delays[self._canonical(method)] = seconds
            else:
                self._delays.pop(self._canonical(method), None)

    @property
    def rate_limited(self) -> list[ApiError]:
        """The 429s the limits answered (injected ones not included)."""
        return [e for e in self.errors if e.status == HTTPStatus.TOO_MANY_REQUESTS]

    def injected_calls(self) -> list[Call]:
        return [call for call in self.calls if call.injected]

    def max_in_a_second(self) -> int:
        """The most counted calls that arrived in any sliding second so far."""
        times, best, start = self.counted, 0, 0
        for end, at in enumerate(times):
            while at - times[start] >= 1.0:
                start += 1
            best = max(best, end - start + 1)
        return best

    def deliver_payment(self, payment: StarPayment) -> int:
        """The successful_payment message of a paid invoice (again, if called again: a
        redelivery). Returns the update id."""
        if not payment.ok or payment.charge_id is None:
            raise ValueError("only a paid invoice has a successful_payment")
        user = self._users[payment.user_id]
        return self._service_message(
            user,
            "successful_payment",
            {
                "currency": STARS,
                "total_amount": payment.amount,
                "invoice_payload": payment.payload,
                "telegram_payment_charge_id": payment.charge_id,
                "provider_payment_charge_id": "",
            },
        )

    @property
    def stars_balance(self) -> int:
        """Stars the bot holds: payments in, refunds out."""
        return sum(
            tx["amount"] if "source" in tx else -tx["amount"] for tx in self.star_transactions
        )

    def route_webhook(self, targets: Iterable[str]) -> None:
        """Post webhook updates to these URLs in turn (a load balancer in front of several
        replicas) instead of the URL given to setWebhook; an empty list undoes it."""
        self.webhook_targets = list(targets)
        self._poll_signal.notify()

    def put_update(self, update: JSONDict) -> int:
        """Queue a raw update ({"message": {...}} etc.); update_id is assigned if missing."""
        kinds = [key for key in update if key != "update_id"]
        if len(kinds) != 1:
            raise ValueError(f"an update has exactly one payload field, got {kinds}")
        return self._put(kinds[0], update[kinds[0]])

    def redeliver(self, update_id: int) -> None:
        """Hand an update out again, update_id and all (as Telegram does after a crash
        before the confirming getUpdates, or a webhook retry)."""
        self._updates.append(self._history[update_id])
        self._poll_signal.notify()

    def hold_updates(self) -> _Hold:
        """Keep new updates back until released; they then arrive as one batch.

        Use as `fake.hold_updates(); ...; fake.release_updates()` or as a context
        manager: `with fake.hold_updates(): ...` (also `async with`). Holds nest.
        """
        self._hold_depth += 1
        return _Hold(self)

    def release_updates(self) -> None:
        if self._hold_depth == 0:
            return
        self._hold_depth -= 1
        if self._hold_depth == 0 and self._held:
            self._updates.extend(self._held)
            self._held.clear()
            self._poll_signal.notify()

    def batch(self) -> _Hold:
        """Alias of hold_updates(), reads better as `with fake.batch(): ...`."""
        return self.hold_updates()

    @property
    def pending_updates(self) -> list[JSONDict]:
        """Updates not yet confirmed by the bot (held ones included)."""
        return [*self._updates, *self._held]

    async def wait_idle(self, timeout: float = 5.0, *, quiet: float = 0.05) -> None:
        """Wait until every update was fetched and confirmed and no bot call (other than the
        long poll) arrived or ran for `quiet` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            now = time.monotonic()
            busy = self._updates or self._held or self._inflight
            if not busy and now - self._last_activity >= quiet:
                return
            if loop.time() >= deadline:
                raise AssertionError(
                    f"FakeTelegram not idle after {timeout}s: {len(self._updates)} unconfirmed "
                    f"updates, {len(self._held)} held, {self._inflight} calls in flight"
                )
            wait = quiet - (now - self._last_activity) if not busy else 0.005
            await asyncio.sleep(max(0.002, min(wait, deadline - loop.time())))

    # ------------------------------------------------------------------ HTTP plumbing

    def _canonical(self, method: str) -> str:
        entry = self._methods.get(method.lower())
        return entry[0] if entry else method

    async def _handle(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        entry = self._methods.get(request.match_info["method"].lower())
        method = entry[0] if entry else request.match_info["method"]
        is_poll = method == "getUpdates"
        if not is_poll:
            self._inflight += 1
            self._last_activity = arrived
        params: Params = {}
        injected = False
        record = True
        try:
            if request.match_info["token"] != self.token:
                raise _ApiFail(401, "Unauthorized")
            if entry is None:
                log.warning("FakeTelegram: unsupported method %s", method)
                raise _ApiFail(404, "Not Found")
            params = await self._read_params(request)
            self._maybe_inject(method, params)  # an injected failure is not counted
            self._check_limits(method, params, arrived)  # on arrival, as Telegram's front
            delay = self._delays.get(method)
            if delay:
                await asyncio.sleep(delay)  # cancelled with the request if the bot gives up
            result = entry[1](params, request)
            if asyncio.iscoroutine(result):
                result = await result
            status, body = 200, {"ok": True, "result": result}
        except _ApiFail as fail:
            status, body, injected, record = fail.status, fail.body(), fail.injected, fail.record
            if record:
                error = ApiError(method, fail.status, fail.description, params)
                (self.injected if injected else self.errors).append(error)
        except Exception as exc:  # a bug in the fake: make it loud, not a hang
            log.exception("FakeTelegram crashed on %s", method)
            description = f"Internal Server Error: FakeTelegram bug: {exc!r}"
            status, body = 500, {"ok": False, "error_code": 500, "description": description}
            self.errors.append(ApiError(method, 500, description, params))
        finally:
            if not is_poll:
                self._inflight -= 1
        done = time.monotonic()
        if not is_poll or body.get("result"):
            self._last_activity = done
        if record:
            self.calls.append(Call(method, params, status, body, arrived, done - arrived, injected))
        return web.json_response(body, status=status)

    async def _read_params(self, request: web.Request) -> Params:
        raw: Params = dict(request.query)
        if request.can_read_body:
            if request.content_type == "application/json":
                try:
                    body = await request.json()
                except ValueError:
                    raise _bad("can't parse JSON object") from None
                if not isinstance(body, dict):
                    raise _bad("JSON object expected")
                raw.update(body)
            else:
                form = await request.post()
                for key, value in form.items():
                    if isinstance(value, bytes | bytearray):
                        raw[key] = bytes(value).decode("utf-8", "replace")
                    elif isinstance(value, str):
                        raw[key] = value
                    else:  # an uploaded file
                        raw[key] = {"attached_file": value.filename}
        return {key: self._coerce(key, value) for key, value in raw.items()}

    @staticmethod
    def _coerce(key: str, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if key in JSON_FIELDS:
            try:
                return json.loads(value)
            except ValueError:
                if key == "reply_markup":
                    raise _bad("can't parse reply keyboard markup JSON object") from None
                raise _bad(f"can't parse {key} JSON object") from None
        if key in INT_FIELDS or key == "chat_id":
            try:
                return int(value)
            except ValueError:
                if key == "chat_id":
                    return value  # @username
                raise _bad(f"invalid {key} specified") from None
        if key in BOOL_FIELDS:
            lowered = value.lower()
            if lowered in ("true", "1"):
                return True
            if lowered in ("false", "0", ""):
                return False
            raise _bad(f"invalid {key} specified")
        return value

    def _maybe_inject(self, method: str, params: Params) -> None:
        for rule in self._fail_rules:
            if rule.method != method:
                continue
            if rule.chat_id is not None and params.get("chat_id") != rule.chat_id:
                continue
            rule.times -= 1
            if rule.times <= 0:
                self._fail_rules.remove(rule)
            description = rule.description or _default_description(rule.status, rule.retry_after)
            retry = rule.retry_after if rule.status == HTTPStatus.TOO_MANY_REQUESTS else None
            raise _ApiFail(rule.status, description, retry_after=retry, injected=True)
        if (
            self._flood_rate
            and method in self._flood_methods
            and self._flood_rng.random() < self._flood_rate
        ):
            raise _ApiFail(
                429,
                f"Too Many Requests: retry after {self._flood_retry_after}",
                retry_after=self._flood_retry_after,
                injected=True,
            )

    def _check_limits(self, method: str, params: Params, now: float) -> None:
        """`now`: when the request arrived (before its body was read)."""
        if method not in COUNTED_METHODS or not self.enforce_limits:
            return
        while self._recent and now - self._recent[0] >= 1.0:
            self._recent.popleft()
        if len(self._recent) >= self.max_per_second:
            wait = 1.0 - (now - self._recent[0])
            raise self._too_many(wait)
        chat = params.get("chat_id")
        if isinstance(chat, int):
            credits = self._credits.get(chat)
            while credits and credits[0] <= now:
                credits.popleft()
            if credits:
                credits.popleft()  # an answer to what the user just did
            else:
                tokens, at = self._buckets.get(chat, (self.chat_burst, now))
                tokens = min(self.chat_burst, tokens + (now - at) * self.chat_rate)
                if tokens < 1:
                    raise self._too_many((1 - tokens) / self.chat_rate)
                self._buckets[chat] = (tokens - 1, now)
        self._recent.append(now)
        self.counted.append(now)

    @staticmethod
    def _too_many(wait: float) -> _ApiFail:
        retry_after = max(1, math.ceil(wait))
        return _ApiFail(
            429, f"Too Many Requests: retry after {retry_after}", retry_after=retry_after
        )

    def _grant_replies(self, kind: str, payload: JSONDict) -> None:
        chat = None
        if kind == "message":
            chat = payload.get("chat", {}).get("id")
        elif kind == "callback_query":
            chat = payload.get("message", {}).get("chat", {}).get("id")
        if isinstance(chat, int):
            expires = time.monotonic() + self.reply_window
            credits = self._credits.setdefault(chat, deque())
            credits.extend([expires] * self.reply_allowance)

    # ------------------------------------------------------------------ updates

    def _put(self, kind: str, payload: JSONDict) -> int:
        self._grant_replies(kind, payload)
        update_id = self._next_update_id
        self._next_update_id += 1
        update = {"update_id": update_id, kind: payload}
        self._history[update_id] = update
        if self._hold_depth:
            self._held.append(update)
        else:
            self._updates.append(update)
            self._poll_signal.notify()
        return update_id

    def _member_update(self, user: FakeUser, old: str, new: str) -> JSONDict:
        def member(status: str) -> JSONDict:
            data: JSONDict = {"status": status, "user": self.bot_user}
            if status == "kicked":
                data["until_date"] = 0
            return data

        return {
            "chat": user.chat_json(),
            "from": user.to_json(),
            "date": _now(),
            "old_chat_member": member(old),
            "new_chat_member": member(new),
        }

    def _is_allowed(self, update: JSONDict) -> bool:
        kind = next(key for key in update if key != "update_id")
        if self._allowed is None:
            return kind not in OPT_IN_UPDATES
        return kind in self._allowed

    def _confirm(self, offset: int | None) -> None:
        if offset is None or not self._updates:
            return
        before = len(self._updates)
        if offset < 0:
            del self._updates[: max(0, len(self._updates) + offset)]
        else:
            index = 0
            while index < len(self._updates) and self._updates[index]["update_id"] < offset:
                index += 1
            del self._updates[:index]
        if len(self._updates) != before:
            self._last_activity = time.monotonic()

    def _available(self, limit: int) -> list[JSONDict]:
        batch: list[JSONDict] = []
        kept: list[JSONDict] = []
        for update in self._updates:
            if not self._is_allowed(update):
                self.dropped_updates.append(update)
                continue
            kept.append(update)
            if len(batch) < limit:
                batch.append(update)
        if len(kept) != len(self._updates):
            self._updates[:] = kept
        return batch

    async def _get_updates(self, p: Params, request: web.Request) -> list[JSONDict]:
        limit = p.get("limit") or 100
        limit = min(max(int(limit), 1), 100)
        timeout = max(0, int(p.get("timeout") or 0))
        if "allowed_updates" in p:
            allowed = p["allowed_updates"]
            if not isinstance(allowed, list) or not all(isinstance(a, str) for a in allowed):
                raise _bad("can't parse allowed_updates JSON object")
            self._allowed = frozenset(allowed) if allowed else None
        if self.webhook is not None:
            raise _ApiFail(409, WEBHOOK_ACTIVE)
        self._confirm(p.get("offset"))

        ticket = object()
        if self._active_poll is not None:
            self._poll_signal.notify()  # terminates the older long poll with 409
        self._active_poll = ticket
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                if self.webhook is not None:
                    raise _ApiFail(409, WEBHOOK_ACTIVE)
                if self._active_poll is not ticket:
                    transport = request.transport
                    gone = transport is None or transport.is_closing()
                    raise _ApiFail(409, CONFLICT, record=not gone)
                batch = self._available(limit)
                remaining = deadline - loop.time()
                if batch or self._closing or remaining <= 0:
                    return batch
                await self._poll_signal.wait(remaining)
        finally:
            if self._active_poll is ticket:
                self._active_poll = None

    # ------------------------------------------------------------------ helpers

    def _chat(self, p: Params) -> FakeUser:
        chat_id = p.get("chat_id")
        if chat_id is None or chat_id == "":
            raise _bad("chat_id is empty")
        user = self._users.get(chat_id) if isinstance(chat_id, int) else None
        if user is None:
            raise _bad("chat not found")
        return user

    @staticmethod
    def _check_writable(user: FakeUser) -> None:
        if user.blocked:
            raise _ApiFail(403, BLOCKED, injected=True)
        if not user.started:
            raise _ApiFail(403, "Forbidden: bot can't initiate conversation with a user")

    @staticmethod
    def _message_id(p: Params) -> int:
        if p.get("inline_message_id"):
            raise _bad("MESSAGE_ID_INVALID")
        message_id = p.get("message_id")
        if not isinstance(message_id, int):
            raise _bad("message identifier is not specified")
        return message_id

    def _text(self, p: Params) -> tuple[str, str, list[JSONDict]]:
        """(plain text, raw text, entities) after Telegram's parsing and checks."""
        raw = p.get("text")
        if raw is None or raw == "":
            raise _bad("message text is empty")
        raw = raw if isinstance(raw, str) else json.dumps(raw)
        entities = p.get("entities")
        parse_mode = p.get("parse_mode") or ""
        if entities:
            if not isinstance(entities, list) or not all(
                isinstance(e, dict)
                and isinstance(e.get("type"), str)
                and isinstance(e.get("offset"), int)
                and isinstance(e.get("length"), int)
                for e in entities
            ):
                raise _bad("can't parse entities JSON object")
            plain, parsed = raw, [dict(e) for e in entities]
        elif not parse_mode:
            plain, parsed = raw, []
        elif parse_mode.lower() == "html":
            try:
                plain, parsed = parse_html(raw, strict_ampersand=self.strict_ampersand)
            except EntityParseError as exc:
                raise _bad(f"can't parse entities: {exc}") from None
        elif parse_mode.lower() in ("markdown", "markdownv2"):
            plain, parsed = raw, []  # not modelled: kept verbatim
        else:
            raise _bad("unsupported parse_mode")
        plain, parsed = trim_text(plain, parsed)
        if not plain:
            raise _bad("message text is empty")
        if len(plain) > MAX_TEXT_LENGTH:
            raise _bad("message is too long")
        return plain, raw, parsed

    @staticmethod
    def _markup(value: Any, *, inline_only: bool) -> JSONDict | None:
        try:
            return validate_reply_markup(value, inline_only=inline_only)
        except MarkupError as exc:
            raise _ApiFail(400, str(exc)) from None

    def _message_json(self, message: FakeMessage) -> JSONDict:
        user = self._users[message.chat_id]
        data: JSONDict = {
            "message_id": message.message_id,
            "from": self.bot_user if message.from_bot else user.to_json(),
            "chat": user.chat_json(),
            "date": message.date,
        }
        if message.edit_date is not None:
            data["edit_date"] = message.edit_date
        if message.invoice is not None:
            data["invoice"] = message.invoice
            if message.inline_markup is not None:
                data["reply_markup"] = message.inline_markup
            return data
        data["text"] = message.text
        if message.entities:
            data["entities"] = message.entities
        if message.inline_markup is not None:
            data["reply_markup"] = message.inline_markup
        return data

    def _find_message(self, user: FakeUser, message_id: int) -> FakeMessage | None:
        message = user._messages.get(message_id)
        return None if message is None or message.deleted else message

    # ------------------------------------------------------------------ methods

    def _ok(self, p: Params, request: web.Request) -> bool:
        return True

    def _get_me(self, p: Params, request: web.Request) -> JSONDict:
        return self.bot_user

    async def _delete_webhook(self, p: Params, request: web.Request) -> bool:
        if p.get("drop_pending_updates"):
            self._updates.clear()
            self._held.clear()
        self.webhook = None
        await self._stop_webhook()
        return True

    def _get_webhook_info(self, p: Params, request: web.Request) -> JSONDict:
        pending = len(self._updates)
        if self.webhook is None:
            return {"url": "", "has_custom_certificate": False, "pending_update_count": pending}
        info: JSONDict = {
            "url": self.webhook["url"],
            "has_custom_certificate": False,
            "pending_update_count": pending,
            "max_connections": self.webhook["max_connections"],
        }
        if self.webhook.get("allowed_updates") is not None:
            info["allowed_updates"] = self.webhook["allowed_updates"]
        if self._webhook_error is not None:
            info["last_error_date"], info["last_error_message"] = self._webhook_error
        return info

    async def _set_webhook(self, p: Params, request: web.Request) -> bool:
        """Like Telegram: an HTTPS URL on port 443, 80, 88 or 8443; an empty URL removes the
        webhook. Unlike Telegram (the one leniency of this fake, for tests on one machine):
        `http://` is accepted for a loopback host (127.0.0.1, localhost, ::1) on any port,
        as a local Bot API server (`telegram-bot-api --local`) accepts it."""
        url = str(p.get("url") or "")
        if not url:
            return await self._delete_webhook(p, request)
        try:
            parsed = yarl.URL(url)
            host, port = parsed.host, parsed.port
        except ValueError:
            raise _bad("invalid webhook URL specified") from None
        if not host or not parsed.is_absolute():
            raise _bad("invalid webhook URL specified")
        if parsed.scheme == "https":
            if port not in WEBHOOK_PORTS:
                raise _bad("bad webhook: Webhook can be set up only on ports 80, 88, 443 or 8443")
        elif not (parsed.scheme == "http" and host in LOOPBACK_HOSTS):
            raise _bad("bad webhook: An HTTPS URL must be provided for webhook")
        secret = p.get("secret_token")
        if secret is not None and secret != "" and not _SECRET_RE.fullmatch(str(secret)):
            raise _bad("secret token contains unallowed characters")
        max_connections = p.get("max_connections") or 40
        if not 1 <= int(max_connections) <= 100:
            raise _bad("invalid max_connections specified")
        allowed = p.get("allowed_updates")
        if allowed is not None:
            if not isinstance(allowed, list) or not all(isinstance(a, str) for a in allowed):
                raise _bad("can't parse allowed_updates JSON object")
            self._allowed = frozenset(allowed) if allowed else None
        if p.get("drop_pending_updates"):
            self._updates.clear()
            self._held.clear()
        self.webhook = {
            "url": url,
            "secret_token": str(secret or ""),
            "max_connections": int(max_connections),
            "allowed_updates": allowed,
        }
        self._webhook_error = None
        if self._active_poll is not None:
            self._poll_signal.notify()  # a running long poll ends with 409
        if self._webhook_task is None or self._webhook_task.done():
            self._webhook_task = asyncio.create_task(self._deliver_webhook())
        self._poll_signal.notify()
        return True

    # ------------------------------------------------------------------ webhook delivery

    async def _stop_webhook(self) -> None:
        task, self._webhook_task = self._webhook_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._webhook_session is not None:
            await self._webhook_session.close()
            self._webhook_session = None
        self._webhook_inflight.clear()

    async def _deliver_webhook(self) -> None:
        """Post pending updates like Telegram: in order per chat (one in flight per chat),
        up to max_connections at once, each again after a non-2xx answer or a timeout."""
        self._webhook_session = aiohttp.ClientSession()
        posts: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        try:
            while self.webhook is not None and not self._closing:
                busy_chats = set(self._webhook_inflight.values())
                soonest: float | None = None
                for update in self._available(100):
                    update_id = update["update_id"]
                    if update_id in self._webhook_inflight:
                        continue
                    chat = _update_chat(update)
                    if chat in busy_chats:
                        continue
                    busy_chats.add(chat)  # later updates of this chat wait for this one
                    not_before = self._webhook_next_try.get(update_id, 0.0)
                    if not_before > loop.time():
                        soonest = min(soonest or not_before, not_before)
                        continue
                    if len(self._webhook_inflight) >= self.webhook["max_connections"]:
                        break
                    self._webhook_inflight[update_id] = chat
                    task = asyncio.create_task(self._post_update(update))
                    posts.add(task)
                    task.add_done_callback(posts.discard)
                wait = 1.0 if soonest is None else max(0.005, soonest - loop.time())
                await self._poll_signal.wait(wait)
        finally:
            for task in posts:
                task.cancel()
            await asyncio.gather(*posts, return_exceptions=True)

    async def _post_update(self, update: JSONDict) -> None:
        assert self.webhook is not None
        update_id = update["update_id"]
        if self.webhook_targets:
            target = self.webhook_targets[self._webhook_rr % len(self.webhook_targets)]
            self._webhook_rr += 1
        else:
            target = self.webhook["url"]
        headers = {"Content-Type": "application/json"}
        if self.webhook["secret_token"]:
            headers[SECRET_HEADER] = self.webhook["secret_token"]
        post = WebhookPost(update_id, target, time.monotonic())
        self.webhook_posts.append(post)
        self._last_activity = post.time
        try:
            async with self._webhook_session.post(
                target,
                data=json.dumps(update),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.webhook_timeout),
            ) as response:
                await response.read()
                post.status = response.status
                if not post.ok:
                    post.error = f"Wrong response from the webhook: {response.status}"
        except TimeoutError:
            post.error = "Read timeout expired"
        except (aiohttp.ClientError, OSError) as exc:
            post.error = f"Connection failed: {type(exc).__name__}"
        finally:
            self._webhook_inflight.pop(update_id, None)
            self._last_activity = time.monotonic()
        if post.ok:
            self._webhook_next_try.pop(update_id, None)
            self._updates[:] = [u for u in self._updates if u["update_id"] != update_id]
        else:
            self._webhook_error = (_now(), post.error)
            loop = asyncio.get_running_loop()
            self._webhook_next_try[update_id] = loop.time() + self.webhook_retry_delay
        self._poll_signal.notify()

    def _scope_key(self, p: Params) -> tuple[str, str]:
        scope = p.get("scope") or {"type": "default"}
        if not isinstance(scope, dict) or scope.get("type") not in COMMAND_SCOPES:
            raise _bad("can't parse BotCommandScope JSON object")
        if scope["type"] in ("chat", "chat_administrators", "chat_member"):
            self._chat({"chat_id": scope.get("chat_id")})
        language = p.get("language_code") or ""
        if language and not (len(language) == 2 and language.isascii() and language.isalpha()):
            raise _bad("invalid language code specified")
        return json.dumps(scope, sort_keys=True), language

    def _set_my_commands(self, p: Params, request: web.Request) -> bool:
        commands = p.get("commands")
        if commands is None:
            raise _bad('parameter "commands" is required')
        if not isinstance(commands, list) or not all(isinstance(c, dict) for c in commands):
            raise _bad("can't parse commands JSON object")
        if len(commands) > 100:
            raise _bad("too many commands specified")
        fixed: list[JSONDict] = []
        for command in commands:
            name = command.get("command")
            description = command.get("description")
            if not isinstance(name, str) or not _COMMAND_RE.fullmatch(name):
                raise _bad("BOT_COMMAND_INVALID")
            if not isinstance(description, str) or not 1 <= len(description.strip()) <= 256:
                raise _bad("BOT_COMMAND_DESCRIPTION_INVALID")
            fixed.append({"command": name, "description": description})
        key = self._scope_key(p)
        if fixed:
            self.commands[key] = fixed
        else:
            self.commands.pop(key, None)
        return True

    def _get_my_commands(self, p: Params, request: web.Request) -> list[JSONDict]:
        return self.commands.get(self._scope_key(p), [])

    def _delete_my_commands(self, p: Params, request: web.Request) -> bool:
        self.commands.pop(self._scope_key(p), None)
        return True

    def _set_description(self, kind: str, max_length: int) -> Callable[[Params, web.Request], bool]:
        def handler(p: Params, request: web.Request) -> bool:
            value = p.get(kind) or ""
            if not isinstance(value, str):
                raise _bad(f"can't parse {kind}")
            if len(value) > max_length:
                raise _bad(f"{kind.replace('_', ' ')} is too long")
            language = p.get("language_code") or ""
            self.descriptions[(kind, language)] = value
            return True

        return handler

    def _get_description(self, kind: str) -> Callable[[Params, web.Request], JSONDict]:
        def handler(p: Params, request: web.Request) -> JSONDict:
            language = p.get("language_code") or ""
            value = self.descriptions.get((kind, language), self.descriptions.get((kind, ""), ""))
            if kind == "name" and not value:
                value = self.bot_first_name
            return {kind: value}

        return handler

    def _send_message(self, p: Params, request: web.Request) -> JSONDict:
        user = self._chat(p)
        plain, raw, entities = self._text(p)
        markup = self._markup(p.get("reply_markup"), inline_only=False)
        reply = p.get("reply_parameters")
        reply_to = reply.get("message_id") if isinstance(reply, dict) else None
        reply_to = reply_to if reply_to is not None else p.get("reply_to_message_id")
        if reply_to is not None:
            lenient = p.get("allow_sending_without_reply") or (
                isinstance(reply, dict) and reply.get("allow_sending_without_reply")
            )
            if self._find_message(user, int(reply_to)) is None and not lenient:
                raise _bad("message to be replied not found")
        self._check_writable(user)
        message = FakeMessage(
            message_id=user._take_id(),
            chat_id=user.id,
            text=plain,
            html=raw,
            date=_now(),
            reply_markup=markup,
            entities=entities,
            parse_mode=p.get("parse_mode"),
        )
        user._add(message)
        return self._message_json(message)

    def _editable(self, p: Params) -> tuple[FakeUser, FakeMessage]:
        user = self._chat(p)
        message = self._find_message(user, self._message_id(p))
        if message is None:
            raise _bad("message to edit not found")
        if not message.from_bot:
            raise _bad("message can't be edited")
        return user, message

    def _edit_message_text(self, p: Params, request: web.Request) -> JSONDict:
        user, message = self._editable(p)
        plain, raw, entities = self._text(p)
        markup = self._markup(p.get("reply_markup"), inline_only=True)
        self._check_writable(user)
        if (
            plain == message.text
            and entities == message.entities
            and markup == message.inline_markup
        ):
            raise _ApiFail(400, NOT_MODIFIED)
        message.history.append(message.snapshot())
        message.edits.append(message.text)
        message.text, message.html, message.entities = plain, raw, entities
        message.parse_mode = p.get("parse_mode")
        message.reply_markup = markup
        message.edit_date = _now()
        user._changed(message)
        return self._message_json(message)

    def _edit_message_reply_markup(self, p: Params, request: web.Request) -> JSONDict:
        user, message = self._editable(p)
        markup = self._markup(p.get("reply_markup"), inline_only=True)
        self._check_writable(user)
        if markup == message.inline_markup:
            raise _ApiFail(400, NOT_MODIFIED)
        message.history.append(message.snapshot())
        message.reply_markup = markup
        message.edit_date = _now()
        user._changed(message)
        return self._message_json(message)

    def _delete_message(self, p: Params, request: web.Request) -> bool:
        user = self._chat(p)
        message = self._find_message(user, self._message_id(p))
        if message is None:
            raise _bad("message to delete not found")
        message.deleted = True
        user._changed(message)
        return True

    def _delete_messages(self, p: Params, request: web.Request) -> bool:
        user = self._chat(p)
        ids = p.get("message_ids")
        if not isinstance(ids, list) or not 1 <= len(ids) <= 100:
            raise _bad("message_ids must be a non-empty array of at most 100 elements")
        found = [m for m in (self._find_message(user, int(i)) for i in ids) if m is not None]
        if not found:
            raise _bad("message to delete not found")
        for message in found:
            message.deleted = True
            user._changed(message)
        return True

    def _answer_callback_query(self, p: Params, request: web.Request) -> bool:
        callback_id = p.get("callback_query_id")
        if callback_id is None or callback_id == "":
            raise _bad('parameter "callback_query_id" is required')
        cb = self._callbacks.get(str(callback_id))
        expired = (
            cb is not None
            and self.callback_ttl is not None
            and time.monotonic() - cb.created > self.callback_ttl
        )
        if cb is None or cb.answered or expired:
            raise _bad(QUERY_TOO_OLD.removeprefix("Bad Request: "))
        text = p.get("text")
        if isinstance(text, str) and len(text) > MAX_CALLBACK_ANSWER_LENGTH:
            raise _bad("MESSAGE_TOO_LONG")
        cb.answered = True
        cb.answer = {k: v for k, v in p.items() if k != "callback_query_id"}
        self._users[cb.user_id]._changed()
        return True

    def _send_chat_action(self, p: Params, request: web.Request) -> bool:
        user = self._chat(p)
        action = p.get("action")
        if action not in CHAT_ACTIONS:
            raise _bad("wrong parameter action in request")
        self._check_writable(user)
        user.chat_actions.append(str(action))
        return True

    # ---- payments (Telegram Stars only: currency XTR, no provider)

    def _service_message(self, user: FakeUser, kind: str, data: JSONDict) -> int:
        message = FakeMessage(
            user._take_id(), user.id, f"[{kind}]", f"[{kind}]", _now(), from_bot=False
        )
        user._add(message)
        return self._put(
            "message",
            {
                "message_id": message.message_id,
                "from": user.to_json(),
                "chat": user.chat_json(),
                "date": message.date,
                kind: data,
            },
        )

    def _charge(self, user: FakeUser, payment: StarPayment) -> None:
        self._charge_counter += 1
        payment.charge_id = f"stxF{self._charge_counter:08d}{self.bot_id % 1000:03d}Tq"
        self.payments[payment.charge_id] = payment
        self.star_transactions.append(
            {
                "id": payment.charge_id,
                "amount": payment.amount,
                "date": _now(),
                "source": {
                    "type": "user",
                    "transaction_type": "invoice_payment",
                    "user": user.to_json(),
                    "invoice_payload": payment.payload,
                },
            }
        )

    def _send_invoice(self, p: Params, request: web.Request) -> JSONDict:
        user = self._chat(p)
        title, description, payload = p.get("title"), p.get("description"), p.get("payload")
        if not isinstance(title, str) or not 1 <= len(title) <= 32:
            raise _bad("INVOICE_TITLE_INVALID" if title else 'parameter "title" is required')
        if not isinstance(description, str) or not 1 <= len(description) <= 255:
            raise _bad("INVOICE_DESCRIPTION_INVALID")
        if not isinstance(payload, str) or not 1 <= len(payload.encode()) <= 128:
            raise _bad("INVOICE_PAYLOAD_INVALID")
        if p.get("currency") != STARS:
            raise _bad("CURRENCY_INVALID")  # the fake knows only Stars
        if p.get("provider_token"):
            raise _bad("PAYMENT_PROVIDER_INVALID")  # Stars take no provider token
        prices = p.get("prices")
        if not isinstance(prices, list) or len(prices) != 1:
            raise _bad("STARS_INVOICE_INVALID")  # exactly one price in Stars
        price = prices[0]
        if (
            not isinstance(price, dict)
            or not isinstance(price.get("label"), str)
            or not price["label"]
            or not isinstance(price.get("amount"), int)
            or isinstance(price.get("amount"), bool)
        ):
            raise _bad("can't parse prices JSON object")
        if not 1 <= price["amount"] <= MAX_INVOICE_STARS:
            raise _bad("STARS_INVOICE_INVALID")
        if p.get("max_tip_amount") or p.get("suggested_tip_amounts") or p.get("is_flexible"):
            raise _bad("STARS_INVOICE_INVALID")  # no tips or shipping in Stars
        markup = self._markup(p.get("reply_markup"), inline_only=True)
        if markup is not None:
            first = markup["inline_keyboard"][0][0] if markup["inline_keyboard"] else {}
            if not first.get("pay"):
                raise _bad("REPLY_MARKUP_BUY_EMPTY")
        self._check_writable(user)
        invoice = {
            "title": title,
            "description": description,
            "start_parameter": p.get("start_parameter") or "",
            "currency": STARS,
            "total_amount": price["amount"],
        }
        text = f"{title}\n{description}\n{price['amount']} {STARS}"
        message = FakeMessage(
            message_id=user._take_id(),
            chat_id=user.id,
            text=text,
            html=text,
            date=_now(),
            reply_markup=markup,
            invoice=invoice,
            invoice_payload=payload,
        )
        user._add(message)
        return self._message_json(message)

    def _answer_pre_checkout_query(self, p: Params, request: web.Request) -> bool:
        query_id = p.get("pre_checkout_query_id")
        if not query_id:
            raise _bad('parameter "pre_checkout_query_id" is required')
        if "ok" not in p:
            raise _bad('parameter "ok" is required')
        query = self._pre_checkouts.get(str(query_id))
        late = query is not None and time.monotonic() - query.created > self.pre_checkout_timeout
        if query is None or query.answered or late:
            raise _bad(QUERY_TOO_OLD.removeprefix("Bad Request: "))
        if not p["ok"]:
            error = p.get("error_message")
            if not isinstance(error, str) or not error.strip():
                raise _bad("ERROR_MESSAGE_EMPTY")  # a refusal must say why
        query.answered = True
        query.answer = {k: v for k, v in p.items() if k != "pre_checkout_query_id"}
        self._users[query.user_id]._changed()
        return True

    def _refund_star_payment(self, p: Params, request: web.Request) -> bool:
        user_id, charge_id = p.get("user_id"), p.get("telegram_payment_charge_id")
        if not isinstance(user_id, int):
            raise _bad('parameter "user_id" is required')
        if not charge_id:
            raise _bad('parameter "telegram_payment_charge_id" is required')
        payment = self.payments.get(str(charge_id))
        if payment is None or payment.user_id != user_id:
            raise _bad("CHARGE_NOT_FOUND")
        if payment.refunded:
            raise _bad("CHARGE_ALREADY_REFUNDED")
        payment.refunded = True
        user = self._users[user_id]
        self.star_transactions.append(
            {
                "id": payment.charge_id,  # a refund has the id of the payment it returns
                "amount": payment.amount,
                "date": _now(),
                "receiver": {
                    "type": "user",
                    "transaction_type": "invoice_payment",
                    "user": user.to_json(),
                    "invoice_payload": payment.payload,
                },
            }
        )
        self._service_message(
            user,
            "refunded_payment",
            {
                "currency": STARS,
                "total_amount": payment.amount,
                "invoice_payload": payment.payload,
                "telegram_payment_charge_id": payment.charge_id,
            },
        )
        return True

    def _get_star_transactions(self, p: Params, request: web.Request) -> JSONDict:
        offset = int(p.get("offset") or 0)
        limit = 100 if p.get("limit") is None else int(p["limit"])
        if offset < 0:
            raise _bad("invalid offset specified")
        if not 1 <= limit <= 100:
            raise _bad("invalid limit specified")
        return {"transactions": self.star_transactions[offset : offset + limit]}

    def _leave_chat(self, p: Params, request: web.Request) -> bool:
        chat_id = p.get("chat_id")
        if not isinstance(chat_id, int) or chat_id not in self._groups:
            raise _bad("chat not found")
        if chat_id not in self.bot_in_groups:
            raise _ApiFail(403, "Forbidden: bot is not a member of the group chat")
        self.bot_in_groups.discard(chat_id)
        self.left_chats.append(chat_id)
        return True

    def _get_chat(self, p: Params, request: web.Request) -> JSONDict:
        user = self._chat(p)
        return {
            **user.chat_json(),
            "accent_color_id": 0,
            "max_reaction_count": 11,
            "accepted_gift_types": {
                "unlimited_gifts": False,
                "limited_gifts": False,
                "unique_gifts": False,
                "premium_subscription": False,
                "gifts_from_channels": False,
            },
        }
