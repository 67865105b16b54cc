"""FakeTelegram against a real aiogram Bot: each Telegram rule the fake enforces."""

from __future__ import annotations

import asyncio
import contextlib
import html
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiogram import Bot, Dispatcher, F
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramConflictError,
    TelegramForbiddenError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.filters import CommandStart
from aiogram.types import (
    BotCommand,
    BotCommandScopeChat,
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    LabeledPrice,
    Message,
    TransactionPartnerUser,
)

from sandbox.telegram import NOT_MODIFIED, QUERY_TOO_OLD, ApiError, FakeTelegram, FakeUser
from sandbox.telegram_html import parse_html

TOKEN = "123456:TEST-TOKEN"


class FastSession(AiohttpSession):
    """AiohttpSession whose close() skips aiogram's 250 ms grace sleep (tests stay fast)."""

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


def make_bot(fake: FakeTelegram) -> Bot:
    session = FastSession(api=TelegramAPIServer.from_base(fake.url))
    return Bot(fake.token, session=session, default=DefaultBotProperties(parse_mode="HTML"))


def kb(*rows: list[tuple[str, str]]) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [InlineKeyboardButton(text=label, callback_data=data) for label, data in row]
            for row in rows
        ]
    )


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    """The rules of formatting and state; the flood limits have tests of their own below."""
    async with FakeTelegram(token=TOKEN, enforce_limits=False) as server:
        yield server


@pytest.fixture
async def bot(fake: FakeTelegram) -> AsyncIterator[Bot]:
    bot = make_bot(fake)
    yield bot
    await bot.session.close()


@pytest.fixture
async def ann(fake: FakeTelegram) -> FakeUser:
    user = fake.user(42, first_name="Ann")
    await user.send("/start")
    return user


def demo_dispatcher() -> Dispatcher:
    dp = Dispatcher()

    @dp.message(CommandStart())
    async def start(message: Message) -> None:
        await message.answer(
            "<b>Menu</b> for you", reply_markup=kb([("🛒 Buy", "buy"), ("Help", "help")])
        )

    @dp.callback_query(F.data == "buy")
    async def buy(query: CallbackQuery) -> None:
        assert isinstance(query.message, Message)
        await query.message.edit_text("Bought!", reply_markup=kb([("Again", "buy")]))
        await query.answer("done")

    @dp.callback_query()
    async def other(query: CallbackQuery) -> None:
        await query.answer(f"got {query.data}")

    return dp


@contextlib.asynccontextmanager
async def polling(fake: FakeTelegram, dp: Dispatcher | None = None) -> AsyncIterator[Bot]:
    """A bot long polling the fake (polling timeout 10 s: any quick answer is a wake-up)."""
    bot = make_bot(fake)
    dp = dp or demo_dispatcher()
    task = asyncio.create_task(dp.start_polling(bot, handle_signals=False, polling_timeout=10))
    try:
        for _ in range(200):
            if fake.calls_to("getMe") and fake._active_poll is not None:
                break
            await asyncio.sleep(0.005)
        yield bot
    finally:
        with contextlib.suppress(RuntimeError):  # RuntimeError: polling never started
            await dp.stop_polling()
        await asyncio.wait_for(task, 5)
        await bot.session.close()


# ------------------------------------------------------------------ envelopes & plumbing


async def test_get_me_and_raw_envelopes(fake: FakeTelegram, bot: Bot) -> None:
    me = await bot.get_me()
    assert me.id == 123456 and me.is_bot and me.username == fake.bot_username

    async with aiohttp.ClientSession() as http:
        async with http.post(f"{fake.url}/bot999:WRONG/getMe") as resp:
            assert resp.status == 401
            assert await resp.json() == {
                "ok": False,
                "error_code": 401,
                "description": "Unauthorized",
            }
        async with http.post(f"{fake.url}/bot{TOKEN}/sendSticker") as resp:
            assert resp.status == 404
            assert (await resp.json())["description"] == "Not Found"
        async with http.get(f"{fake.url}/bot{TOKEN}/getme") as resp:  # case-insensitive
            assert (await resp.json())["result"]["id"] == 123456

    assert [(e.method, e.status) for e in fake.errors] == [("getMe", 401), ("sendSticker", 404)]


async def test_json_multipart_and_query_bodies(fake: FakeTelegram, ann: FakeUser) -> None:
    markup = {"inline_keyboard": [[{"text": "A", "callback_data": "a"}]]}
    url = f"{fake.url}/bot{TOKEN}/sendMessage"
    async with aiohttp.ClientSession() as http:
        payload = {"chat_id": 42, "text": "json", "reply_markup": markup}
        async with http.post(url, json=payload) as resp:
            body = await resp.json()
            assert body["ok"] and body["result"]["reply_markup"] == markup
        form = aiohttp.FormData()
        form.add_field("chat_id", "42")
        form.add_field("text", "multipart")
        form.add_field("reply_markup", '{"inline_keyboard": [[{"text": "B", "url": "t.me/x"}]]}')
        form.add_field("thumbnail", b"\x89PNG", filename="x.png")  # forces multipart
        async with http.post(url, data=form) as resp:
            assert (await resp.json())["result"]["text"] == "multipart"
        async with http.get(url, params={"chat_id": "42", "text": "<i>query</i>"}) as resp:
            result = (await resp.json())["result"]
            assert result["text"] == "<i>query</i>"  # no parse_mode: verbatim
        async with http.post(url, data={"chat_id": "42", "text": "x", "reply_markup": "{"}) as r:
            assert r.status == 400
            assert (await r.json())["description"] == (
                "Bad Request: can't parse reply keyboard markup JSON object"
            )
    assert [m.text for m in ann.messages] == ["json", "multipart", "<i>query</i>"]
    assert ann.messages[1].buttons == [[("B", "t.me/x")]]
    assert fake.calls_to("sendMessage")[0].params["reply_markup"] == markup


# ------------------------------------------------------------------ sendMessage rules


async def test_html_is_parsed_into_text_entities_and_kept_raw(
    fake: FakeTelegram, bot: Bot, ann: FakeUser
) -> None:
    source = (
        '<b>Bold</b> <a href="https://example.com/?a=1&amp;b=2">link</a> '
        '<pre><code class="language-python">x = 1</code></pre> '
        '<span class="tg-spoiler">s</span> <blockquote expandable>q</blockquote> '
        "😀 <i>it</i> &lt;tag&gt; &quot;q&quot; &#8381; &#x27;"
    )
    sent = await bot.send_message(42, source)
    plain = 'Bold link x = 1 s q 😀 it <tag> "q" ₽ \''
    assert sent.text == plain
    types = [(e.type, e.offset, e.length) for e in sent.entities or []]
    assert types == [
        ("bold", 0, 4),
        ("text_link", 5, 4),
        ("pre", 10, 5),
        ("spoiler", 16, 1),
        ("expandable_blockquote", 18, 1),
        ("italic", 23, 2),  # 😀 is two UTF-16 units
    ]
    assert sent.entities is not None
    assert sent.entities[1].url == "https://example.com/?a=1&b=2"
    assert sent.entities[2].language == "python"
    message = ann.last
    assert message.text == plain and message.html == source
    assert fake.errors == []


@pytest.mark.parametrize(
    ("source", "description"),
    [
        ("Tom &amp; Jerry <VIP>", 'Unsupported start tag "vip" at byte offset 16'),
        ("<b>bold", 'Can\'t find end tag corresponding to start tag "b"'),
        ("<b><i>x</b></i>", 'Unmatched end tag at byte offset 7, expected "</i>", found "</b>"'),
        ("1 < 2", 'Unsupported start tag "" at byte offset 2'),
        ("x</b>", "Unexpected end tag at byte offset 1"),
        ("<span>x</span>", 'Tag "span" must have class "tg-spoiler" at byte offset 0'),
        ("<b", "Unclosed start tag at byte offset 0"),
        ("Tom & Jerry", 'Unescaped "&" at byte offset 4'),
        ("&#xD800; surrogate", 'Unescaped "&" at byte offset 0'),
    ],
)
async def test_bad_html_is_rejected(
    fake: FakeTelegram, bot: Bot, ann: FakeUser, source: str, description: str
) -> None:
    with pytest.raises(TelegramBadRequest) as info:
        await bot.send_message(42, source)
    assert info.value.message.startswith("Bad Request: can't parse entities: " + description)
    assert ann.messages == []
    assert [e.status for e in fake.errors] == [400]


async def test_tom_and_jerry_unescaped_rejected_escaped_accepted(bot: Bot, ann: FakeUser) -> None:
    title = "Tom & Jerry <VIP>"
    with pytest.raises(TelegramBadRequest, match="can't parse entities"):
        await bot.send_message(42, f"Service: {title}")
    sent = await bot.send_message(42, f"Service: <b>{html.escape(title)}</b>")
    assert sent.text == f"Service: {title}"
    assert ann.last.text == f"Service: {title}"


def test_lenient_ampersand_matches_real_telegram_offsets() -> None:
    # Real Telegram keeps a bare "&": the first error is then the <VIP> tag at byte 12.
    with pytest.raises(ValueError, match='Unsupported start tag "vip" at byte offset 12'):
        parse_html("Tom & Jerry <VIP>", strict_ampersand=False)
    assert parse_html("a & b &lt c", strict_ampersand=False) == ("a & b < c", [])


async def test_empty_and_too_long_texts(fake: FakeTelegram, bot: Bot, ann: FakeUser) -> None:
    for text in ("", "   \n ", "<b></b>", "<b> </b>"):
        with pytest.raises(TelegramBadRequest, match="Bad Request: message text is empty"):
            await bot.send_message(42, text)
    with pytest.raises(TelegramBadRequest, match="Bad Request: message is too long"):
        await bot.send_message(42, "a" * 4097)
    with pytest.raises(TelegramBadRequest, match="Bad Request: message is too long"):
        await bot.send_message(42, "<b>" + "&amp;" * 4097 + "</b>")
    # the limit applies after entity parsing: 4096 characters of text, far more of HTML
    await bot.send_message(42, "<b>" + "&amp;" * 4096 + "</b>")
    await bot.send_message(42, "😀" * 4096)
    await bot.send_message(42, "  padded  ")
    assert [len(m.text) for m in ann.messages] == [4096, 4096, 6]
    assert len(fake.errors) == 6


async def test_unknown_chat_and_user_who_never_started(fake: FakeTelegram, bot: Bot) -> None:
    with pytest.raises(TelegramBadRequest, match="Bad Request: chat not found"):
        await bot.send_message(777, "hi")
    fake.user(5)
    with pytest.raises(TelegramForbiddenError, match="bot can't initiate conversation"):
        await bot.send_message(5, "hi")
    fake.user(6, started=True)
    await bot.send_message(6, "hi")
    assert [e.status for e in fake.errors] == [400, 403]


async def test_inline_keyboard_rules(fake: FakeTelegram, bot: Bot, ann: FakeUser) -> None:
    with pytest.raises(TelegramBadRequest, match="Bad Request: BUTTON_DATA_INVALID"):
        await bot.send_message(42, "x", reply_markup=kb([("A", "a" * 65)]))
    with pytest.raises(TelegramBadRequest, match="Bad Request: BUTTON_DATA_INVALID"):
        await bot.send_message(42, "x", reply_markup=kb([("A", "я" * 33)]))  # 66 bytes
    await bot.send_message(42, "ok", reply_markup=kb([("A", "я" * 32)]))  # 64 bytes
    with pytest.raises(TelegramBadRequest, match="Text buttons are unallowed"):
        await bot.send_message(
            42,
            "x",
            reply_markup=InlineKeyboardMarkup(inline_keyboard=[[InlineKeyboardButton(text="A")]]),
        )
    two_actions = InlineKeyboardButton(text="A", callback_data="a", url="https://example.com")
    with pytest.raises(TelegramBadRequest, match="exactly one"):
        await bot.send_message(
            42, "x", reply_markup=InlineKeyboardMarkup(inline_keyboard=[[two_actions]])
        )
    with pytest.raises(TelegramBadRequest, match="Bad Request: REPLY_MARKUP_TOO_LONG"):
        await bot.send_message(42, "x", reply_markup=kb([(str(n), str(n)) for n in range(101)]))
    with pytest.raises(TelegramBadRequest, match="BUTTON_URL_INVALID"):
        await bot.send_message(
            42,
            "x",
            reply_markup=InlineKeyboardMarkup(
                inline_keyboard=[[InlineKeyboardButton(text="A", url="javascript:alert(1)")]]
            ),
        )
    assert [m.text for m in ann.messages] == ["ok"]
    assert len(fake.errors) == 6


# ------------------------------------------------------------------ edits and deletes


async def test_edits_not_modified_history_and_deletes(
    fake: FakeTelegram, bot: Bot, ann: FakeUser
) -> None:
    markup = kb([("A", "a")])
    sent = await bot.send_message(42, "<b>Hello</b>", reply_markup=markup)
    mid = sent.message_id

    with pytest.raises(TelegramBadRequest) as info:
        await bot.edit_message_text("<b>Hello</b>", chat_id=42, message_id=mid, reply_markup=markup)
    assert info.value.message == NOT_MODIFIED
    with pytest.raises(TelegramBadRequest, match="message is not modified"):
        await bot.edit_message_reply_markup(chat_id=42, message_id=mid, reply_markup=markup)

    # same plain text, different formatting: modified
    await bot.edit_message_text("<i>Hello</i>", chat_id=42, message_id=mid, reply_markup=markup)
    # no reply_markup in editMessageText removes the keyboard, as in Telegram
    edited = await bot.edit_message_text("Bye", chat_id=42, message_id=mid)
    assert isinstance(edited, Message) and edited.reply_markup is None
    assert edited.edit_date is not None
    await bot.edit_message_reply_markup(chat_id=42, message_id=mid, reply_markup=markup)

    message = ann.message(mid)
    assert message.text == "Bye" and message.buttons == [[("A", "a")]]
    assert message.edits == ["Hello", "Hello"]
    assert [s.html for s in message.history] == ["<b>Hello</b>", "<i>Hello</i>", "Bye"]
    assert ann.buttons() == ["A"]

    with pytest.raises(TelegramBadRequest, match="Bad Request: message to edit not found"):
        await bot.edit_message_text("x", chat_id=42, message_id=999)
    with pytest.raises(TelegramBadRequest, match="Bad Request: message can't be edited"):
        await bot.edit_message_text("x", chat_id=42, message_id=1)  # the user's /start

    assert await bot.delete_message(42, mid)
    with pytest.raises(TelegramBadRequest, match="Bad Request: message to delete not found"):
        await bot.delete_message(42, mid)
    with pytest.raises(TelegramBadRequest, match="Bad Request: message to edit not found"):
        await bot.edit_message_text("x", chat_id=42, message_id=mid)
    assert ann.messages == [] and ann.message(mid).deleted
    assert [e.description for e in fake.errors][:2] == [NOT_MODIFIED, NOT_MODIFIED]
    assert len(fake.errors) == 6


# ------------------------------------------------------------------ injected failures


async def test_retry_after_is_injected_not_an_error(
    fake: FakeTelegram, bot: Bot, ann: FakeUser
) -> None:
    fake.fail_next("sendMessage", retry_after=3)
    with pytest.raises(TelegramRetryAfter) as info:
        await bot.send_message(42, "first")
    assert info.value.retry_after == 3
    assert info.value.message.endswith("Original description: Too Many Requests: retry after 3")
    fake.fail_next("sendMessage", chat_id=999, times=5)  # another chat: not hit
    fake.fail_next("editMessageText", status=500)
    await bot.send_message(42, "second")
    with pytest.raises(TelegramServerError, match="Internal Server Error"):
        await bot.edit_message_text("x", chat_id=42, message_id=ann.last.message_id)
    assert [m.text for m in ann.messages] == ["second"]
    assert fake.errors == []
    assert [(e.method, e.status) for e in fake.injected] == [
        ("sendMessage", 429),
        ("editMessageText", 500),
    ]
    assert fake.calls_to("sendMessage")[0].response == {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 3",
        "parameters": {"retry_after": 3},
    }


async def test_blocked_user_gets_403(fake: FakeTelegram, bot: Bot, ann: FakeUser) -> None:
    sent = await bot.send_message(42, "before")
    fake.block(42)
    with pytest.raises(TelegramForbiddenError) as info:
        await bot.send_message(42, "after")
    assert info.value.message == "Forbidden: bot was blocked by the user"
    with pytest.raises(TelegramForbiddenError):
        await bot.edit_message_text("edited", chat_id=42, message_id=sent.message_id)
    with pytest.raises(TelegramForbiddenError):
        await bot.send_chat_action(42, "typing")
    assert fake.errors == []
    assert [e.status for e in fake.injected] == [403, 403, 403]
    assert "my_chat_member" in fake.pending_updates[-1]
    await ann.send("/start")  # the user restarts the bot: unblocked
    await bot.send_message(42, "welcome back")
    assert [m.text for m in ann.messages] == ["before", "welcome back"]


async def test_flood_is_seeded_and_injected(fake: FakeTelegram, bot: Bot, ann: FakeUser) -> None:
    async def run() -> list[bool]:
        outcome = []
        for n in range(40):
            try:
                await bot.send_message(42, f"m{n}")
                outcome.append(True)
            except TelegramRetryAfter as exc:
                assert exc.retry_after == 2
                outcome.append(False)
        return outcome

    fake.flood(0.3, retry_after=2, seed=7)
    first = await run()
    fake.flood(0.3, retry_after=2, seed=7)
    assert await run() == first
    assert 0 < first.count(False) < 40
    fake.flood(0)
    await bot.send_message(42, "calm")
    assert fake.errors == []
    assert len(fake.injected) == 2 * first.count(False)


# ------------------------------------------------------------------ callbacks


async def test_answer_callback_query_rules(fake: FakeTelegram, bot: Bot, ann: FakeUser) -> None:
    await bot.send_message(42, "menu", reply_markup=kb([("Go", "go")]))
    callback_id = await ann.click("Go")
    with pytest.raises(TelegramBadRequest, match="MESSAGE_TOO_LONG"):
        await bot.answer_callback_query(callback_id, text="x" * 201)
    assert not ann.answered(callback_id)
    assert await bot.answer_callback_query(callback_id, text="ok", show_alert=True)
    assert ann.answered(callback_id)
    assert ann.callback_answer(callback_id) == {"text": "ok", "show_alert": True}
    with pytest.raises(TelegramBadRequest) as info:
        await bot.answer_callback_query(callback_id)
    assert info.value.message == QUERY_TOO_OLD
    with pytest.raises(TelegramBadRequest, match="query is too old"):
        await bot.answer_callback_query("123")
    assert len(fake.errors) == 3


async def test_click_by_label_and_helpful_failures(
    fake: FakeTelegram, bot: Bot, ann: FakeUser
) -> None:
    first = await bot.send_message(42, "one", reply_markup=kb([("🛒 Buy now", "buy:1")]))
    await bot.send_message(
        42, "two", reply_markup=kb([("Alpha", "a"), ("Beta", "b")], [("Alpha 2", "a2")])
    )
    await bot.send_message(42, "no keyboard")
    assert ann.buttons() == ["Alpha", "Beta", "Alpha 2"]
    assert ann.buttons(first.message_id) == ["🛒 Buy now"]

    await ann.click("Alpha")  # the newest keyboard; first match wins
    await ann.click("Buy", message_id=first.message_id)
    forged = await ann.click_data("admin:drop_all", message_id=first.message_id)
    data = [u["callback_query"]["data"] for u in fake.pending_updates if "callback_query" in u]
    assert data == ["a", "buy:1", "admin:drop_all"]
    assert fake.pending_updates[-1]["callback_query"]["id"] == forged

    with pytest.raises(AssertionError, match=r"available: \['Alpha', 'Beta', 'Alpha 2'\]"):
        await ann.click("Gamma")
    with pytest.raises(AssertionError, match="no message #99"):
        await ann.click("Alpha", message_id=99)

    await bot.delete_message(42, first.message_id)
    with pytest.raises(AssertionError, match="deleted"):
        await ann.click("Buy", message_id=first.message_id)
    await ann.click_data("buy:1", message_id=first.message_id)  # a stale click still arrives
    stale = fake.pending_updates[-1]["callback_query"]["message"]
    assert stale == {"chat": ann.chat_json(), "message_id": first.message_id, "date": 0}


async def test_wait_for_times_out_with_a_transcript(bot: Bot, ann: FakeUser) -> None:
    await bot.send_message(42, "Hello <b>there</b>", reply_markup=kb([("Go", "go")]))
    assert (await ann.wait_for("there")).text == "Hello there"
    with pytest.raises(AssertionError) as info:
        await ann.wait_for("nowhere", timeout=0.05)
    assert "#1    user: /start" in str(info.value)
    assert "Hello there" in str(info.value) and "Go -> go" in str(info.value)
    with pytest.raises(AssertionError):
        await ann.wait_for("there", new_only=True, timeout=0.05)


# ------------------------------------------------------------------ getUpdates


async def test_get_updates_offset_limit_and_long_poll_wakeup(fake: FakeTelegram, bot: Bot) -> None:
    ann = fake.user(1)
    for n in range(3):
        await ann.send(f"m{n}")
    updates = await bot.get_updates(limit=2)
    assert [u.message.text for u in updates if u.message] == ["m0", "m1"]
    assert updates[0].update_id < updates[1].update_id
    updates = await bot.get_updates(offset=updates[-1].update_id + 1)
    assert [u.message.text for u in updates if u.message] == ["m2"]
    assert await bot.get_updates(offset=updates[-1].update_id + 1, timeout=0) == []
    assert fake.pending_updates == []

    started = time.monotonic()
    poll = asyncio.create_task(bot.get_updates(timeout=10))
    await asyncio.sleep(0.05)
    assert not poll.done()
    await ann.send("wake")
    updates = await poll
    assert [u.message.text for u in updates if u.message] == ["wake"]
    assert time.monotonic() - started < 1.0

    # allowed_updates filters (and drops) other update types
    await ann.send("dropped")
    assert await bot.get_updates(allowed_updates=["callback_query"], timeout=0) == []
    assert fake.dropped_updates[-1]["message"]["text"] == "dropped"
    assert fake.errors == []


async def test_second_poller_terminates_the_first_with_409(fake: FakeTelegram, bot: Bot) -> None:
    first = asyncio.create_task(bot.get_updates(timeout=5))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(bot.get_updates(timeout=5))
    with pytest.raises(TelegramConflictError, match="terminated by other getUpdates request"):
        await first
    await fake.user(1).send("x")
    assert len(await second) == 1
    assert [e.status for e in fake.errors] == [409]


async def test_long_polling_delivers_a_click_to_a_handler(fake: FakeTelegram) -> None:
    ann = fake.user(42)
    async with polling(fake):
        started = time.monotonic()
        await ann.send("/start")
        menu = await ann.wait_for("Menu")
        assert menu.html == "<b>Menu</b> for you" and menu.text == "Menu for you"
        callback_id = await ann.click("Buy")
        bought = await ann.wait_for("Bought", new_only=True)
        assert await ann.wait_answered(callback_id) == {"text": "done"}
        assert bought.message_id == menu.message_id and bought.edits == ["Menu for you"]
        assert time.monotonic() - started < 1.0, "long polling wakes up immediately"
        await fake.wait_idle(2.0)
    assert fake.errors == [] and fake.injected == []


async def test_held_clicks_arrive_in_one_batch(fake: FakeTelegram) -> None:
    ann = fake.user(42)
    async with polling(fake):
        await ann.send("/start")
        await ann.wait_for("Menu")
        await fake.wait_idle(2.0)
        with fake.hold_updates():
            first = await ann.click("Help")
            second = await ann.click("Help")
            await asyncio.sleep(0.05)  # even with time to poll, nothing is delivered
            assert not ann.answered(first)
        await ann.wait_answered(first)
        await ann.wait_answered(second)
        batches = [c.response["result"] for c in fake.calls_to("getUpdates") if c.ok]
        assert [len(b) for b in batches if b][-1] == 2
        await fake.wait_idle(2.0)
    assert fake.errors == []


async def test_fifty_concurrent_users(fake: FakeTelegram) -> None:
    users = [fake.user(1000 + n, first_name=f"U{n}") for n in range(50)]
    async with polling(fake):
        started = time.monotonic()

        async def journey(user: FakeUser) -> None:
            await user.send("/start")
            await user.wait_for("Menu")
            callback_id = await user.click("Buy")
            await user.wait_for("Bought")
            await user.wait_answered(callback_id)

        await asyncio.gather(*(journey(u) for u in users))
        assert time.monotonic() - started < 3.0
        await fake.wait_idle(2.0)
    assert all(u.last.text == "Bought!" for u in users)
    assert fake.errors == []


# ------------------------------------------------------------------ misc methods


async def test_commands_descriptions_and_misc_methods(
    fake: FakeTelegram, bot: Bot, ann: FakeUser
) -> None:
    commands = [BotCommand(command="start", description="Main menu")]
    assert await bot.set_my_commands(commands)
    assert await bot.set_my_commands(
        [BotCommand(command="admin", description="Admin")], scope=BotCommandScopeChat(chat_id=42)
    )
    assert [c.command for c in await bot.get_my_commands()] == ["start"]
    assert [
        c.command for c in await bot.get_my_commands(scope=BotCommandScopeChat(chat_id=42))
    ] == ["admin"]
    with pytest.raises(TelegramBadRequest, match="BOT_COMMAND_INVALID"):
        await bot.set_my_commands([BotCommand(command="Start", description="x")])
    with pytest.raises(TelegramBadRequest, match="BOT_COMMAND_INVALID"):
        await bot.set_my_commands([BotCommand(command="a" * 33, description="x")])
    with pytest.raises(TelegramBadRequest, match="BOT_COMMAND_DESCRIPTION_INVALID"):
        await bot.set_my_commands([BotCommand(command="ok", description="x" * 257)])
    with pytest.raises(TelegramBadRequest, match="chat not found"):
        await bot.set_my_commands(commands, scope=BotCommandScopeChat(chat_id=31337))
    assert await bot.delete_my_commands()
    assert await bot.get_my_commands() == []

    assert await bot.set_my_description("Rent numbers")
    assert await bot.set_my_short_description("SMS codes")
    assert (await bot.get_my_description()).description == "Rent numbers"
    assert await bot.delete_webhook(drop_pending_updates=True)
    assert fake.pending_updates == []
    assert await bot.send_chat_action(42, "typing")
    assert ann.chat_actions == ["typing"]
    with pytest.raises(TelegramBadRequest, match="wrong parameter action"):
        await bot.send_chat_action(42, "dancing")
    chat = await bot.get_chat(42)
    assert chat.id == 42 and chat.type == "private" and chat.first_name == "Ann"
    assert await bot.close() and await bot.log_out()
    assert len(fake.errors) == 5
    assert fake.errors[0] == ApiError("setMyCommands", 400, "Bad Request: BOT_COMMAND_INVALID", {})


# -- flood limits ----------------------------------------------------------------------------


async def test_limits_per_chat_tolerate_a_burst_then_one_a_second() -> None:
    async with FakeTelegram(token=TOKEN) as fake:
        bot = make_bot(fake)
        try:
            fake.user(42, started=True)
            for n in range(3):  # the burst a chat tolerates
                await bot.send_message(42, f"push {n}")
            with pytest.raises(TelegramRetryAfter) as caught:
                await bot.send_message(42, "one too many")
            assert caught.value.retry_after == 1
            assert [e.status for e in fake.rate_limited] == [429]
            fake.user(43, started=True)
            await bot.send_message(43, "another chat is not held up")
            await asyncio.sleep(1.05)  # one more token
            await bot.send_message(42, "after a second")
            with pytest.raises(TelegramRetryAfter):
                await bot.send_message(42, "and not two")
        finally:
            await bot.session.close()


async def test_answers_to_the_users_own_update_are_free_per_chat() -> None:
    async with FakeTelegram(token=TOKEN) as fake:
        bot = make_bot(fake)
        try:
            user = fake.user(42, started=True)
            for n in range(3):
                await bot.send_message(42, f"push {n}")
            await user.send("/start")  # the user writes: three answers are free
            for n in range(3):
                await bot.send_message(42, f"answer {n}")
            with pytest.raises(TelegramRetryAfter):
                await bot.send_message(42, "beyond the answers and the burst")
        finally:
            await bot.session.close()


async def test_limits_per_bot_thirty_in_any_second() -> None:
    async with FakeTelegram(token=TOKEN) as fake:
        bot = make_bot(fake)
        try:
            for chat in range(100, 130):
                fake.user(chat, started=True)
            await asyncio.gather(*(bot.send_message(chat, "hi") for chat in range(100, 130)))
            fake.user(130, started=True)
            with pytest.raises(TelegramRetryAfter) as caught:
                await bot.send_message(130, "the 31st")
            assert caught.value.retry_after == 1
            assert fake.max_in_a_second() == 30
            await asyncio.sleep(1.05)
            await bot.send_message(130, "a second later")
        finally:
            await bot.session.close()


async def test_slow_delays_the_call_and_an_abandoned_call_is_never_acted_on() -> None:
    async with FakeTelegram(token=TOKEN) as fake:
        bot = make_bot(fake)
        try:
            user = fake.user(42, started=True)
            fake.slow(["sendMessage"], 0.5)
            started = time.monotonic()
            await bot.send_message(42, "slow")
            assert time.monotonic() - started >= 0.5
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(bot.send_message(42, "given up"), 0.1)
            await asyncio.sleep(0.6)
            assert [m.text for m in user.messages] == ["slow"]
        finally:
            await bot.session.close()


# ---- payments in Telegram Stars


async def _invoice(bot: Bot, chat_id: int, **overrides: object) -> Message:
    params: dict[str, Any] = {
        "chat_id": chat_id,
        "title": "Top-up",
        "description": "100 Stars for your wallet",
        "payload": "p-1",
        "currency": "XTR",
        "prices": [LabeledPrice(label="Top-up", amount=100)],
    }
    params.update(overrides)
    return await bot.send_invoice(**params)


@pytest.mark.parametrize(
    ("overrides", "description"),
    [
        ({"currency": "USD"}, "CURRENCY_INVALID"),
        ({"provider_token": "284685063:TEST:abc"}, "PAYMENT_PROVIDER_INVALID"),
        (
            {"prices": [LabeledPrice(label="a", amount=50), LabeledPrice(label="b", amount=50)]},
            "STARS_INVOICE_INVALID",
        ),
        ({"prices": [LabeledPrice(label="a", amount=0)]}, "STARS_INVOICE_INVALID"),
        ({"prices": [LabeledPrice(label="a", amount=10_001)]}, "STARS_INVOICE_INVALID"),
        ({"payload": "x" * 129}, "INVOICE_PAYLOAD_INVALID"),
        ({"payload": "я" * 65}, "INVOICE_PAYLOAD_INVALID"),  # 130 bytes
        ({"title": "t" * 33}, "INVOICE_TITLE_INVALID"),
        ({"description": "d" * 256}, "INVOICE_DESCRIPTION_INVALID"),
        ({"max_tip_amount": 10}, "STARS_INVOICE_INVALID"),
        ({"reply_markup": kb([("Pay", "pay")])}, "REPLY_MARKUP_BUY_EMPTY"),
    ],
)
@pytest.mark.telegram_errors_expected
async def test_send_invoice_follows_the_stars_rules(
    fake: FakeTelegram, bot: Bot, ann: FakeUser, overrides: dict[str, object], description: str
) -> None:
    with pytest.raises(TelegramBadRequest, match=description):
        await _invoice(bot, ann.id, **overrides)
    assert ann.invoices == []
    sent = await _invoice(bot, ann.id, provider_token="", payload="x" * 128)
    assert sent.invoice is not None and sent.invoice.currency == "XTR"
    assert sent.invoice.total_amount == 100
    [invoice] = ann.invoices
    assert invoice.invoice_payload == "x" * 128


async def _answer_next_pre_checkout(bot: Bot, offset: int, **answer: Any) -> int:
    """Poll like a bot until a pre_checkout_query arrives; answer it. Returns the offset."""
    while True:
        for update in await bot.get_updates(offset=offset, timeout=1):
            offset = update.update_id + 1
            if update.pre_checkout_query is not None:
                await bot.answer_pre_checkout_query(update.pre_checkout_query.id, **answer)
                return offset


async def test_paying_then_refunding_and_the_transactions(
    fake: FakeTelegram, bot: Bot, ann: FakeUser
) -> None:
    await _invoice(bot, ann.id)
    paying = asyncio.create_task(ann.pay(ann.invoices[-1]))
    offset = await _answer_next_pre_checkout(bot, 0, ok=True)
    payment = await paying
    assert payment.ok and payment.charge_id
    [update] = [u for u in await bot.get_updates(offset=offset) if u.message is not None]
    assert update.message is not None and update.message.successful_payment is not None
    paid = update.message.successful_payment
    assert (paid.currency, paid.total_amount, paid.invoice_payload) == ("XTR", 100, "p-1")
    assert paid.telegram_payment_charge_id == payment.charge_id

    result = await bot.get_star_transactions(offset=0, limit=1)
    [tx] = result.transactions
    assert tx.id == payment.charge_id and tx.amount == 100
    assert isinstance(tx.source, TransactionPartnerUser) and tx.source.user.id == ann.id
    assert tx.source.transaction_type == "invoice_payment"
    assert tx.source.invoice_payload == "p-1"

    assert await bot.refund_star_payment(ann.id, payment.charge_id)
    with pytest.raises(TelegramBadRequest, match="CHARGE_ALREADY_REFUNDED"):
        await bot.refund_star_payment(ann.id, payment.charge_id)
    with pytest.raises(TelegramBadRequest, match="CHARGE_NOT_FOUND"):
        await bot.refund_star_payment(ann.id, "stxNOPE")
    with pytest.raises(TelegramBadRequest, match="CHARGE_NOT_FOUND"):
        await bot.refund_star_payment(ann.id + 1, payment.charge_id)
    fake.errors.clear()  # provoked on purpose above

    first = await bot.get_star_transactions(offset=0, limit=1)
    second = await bot.get_star_transactions(offset=1, limit=1)
    assert [t.id for t in first.transactions + second.transactions] == [payment.charge_id] * 2
    refund = second.transactions[0]
    assert refund.source is None and isinstance(refund.receiver, TransactionPartnerUser)
    assert (await bot.get_star_transactions(offset=2)).transactions == []
    assert fake.stars_balance == 0
    notices = [u.message for u in await bot.get_updates(offset=offset) if u.message is not None]
    assert [m.refunded_payment.telegram_payment_charge_id for m in notices if m.refunded_payment]
    with pytest.raises(TelegramBadRequest):
        await bot.get_star_transactions(limit=101)
    fake.errors.clear()


async def test_pre_checkout_deadline_and_refusals(
    fake: FakeTelegram, bot: Bot, ann: FakeUser
) -> None:
    await _invoice(bot, ann.id)
    fake.pre_checkout_timeout = 0.3
    unanswered = await ann.pay(ann.invoices[-1])
    assert not unanswered.ok and unanswered.error_message == "timeout"
    await asyncio.sleep(0.05)
    with pytest.raises(TelegramBadRequest, match="query is too old"):
        await bot.answer_pre_checkout_query(unanswered.query_id, ok=True)
    assert fake.star_transactions == []

    fake.pre_checkout_timeout = 10
    refused = asyncio.create_task(ann.pay(ann.invoices[-1]))
    await asyncio.sleep(0.05)
    query_id = str(fake.pending_updates[-1]["pre_checkout_query"]["id"])
    with pytest.raises(TelegramBadRequest, match="ERROR_MESSAGE_EMPTY"):
        await bot.answer_pre_checkout_query(query_id, ok=False)
    await bot.answer_pre_checkout_query(query_id, ok=False, error_message="Sold out")
    payment = await refused
    assert not payment.ok and payment.error_message == "Sold out" and payment.charge_id is None
    assert fake.star_transactions == []
    fake.errors.clear()
