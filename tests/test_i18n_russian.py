"""Every screen as a Russian user: no English word left, country names from CLDR.

Everything the bot sends to the user (messages, edits, button labels, callback answers,
the command menu for `ru`) is collected from the fake Telegram's call log and checked for
Latin words. Allowed: the provider's service titles (brands: Telegram, WhatsApp, Apple),
the SMS-Man brand, "SMS"/"ID", /commands, what the user typed, and the language picker's
own "English". Country titles from the provider are NOT allowed: Russians get CLDR's names.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pytest

from bot.settings import Settings
from sandbox.smsman import FakeSmsMan
from sandbox.telegram import FakeMessage, FakeTelegram, FakeUser
from sandbox.telegram_markup import inline_buttons
from tests.inprocess import running

pytestmark = pytest.mark.asyncio

SettingsFactory = Callable[..., Settings]

# Real ISO codes with the provider's English titles: with the default four, two pages.
MORE_COUNTRIES = {
    "DE": "Germany", "FR": "France", "ES": "Spain", "IT": "Italy", "PL": "Poland",
    "TR": "Turkey", "BR": "Brazil", "VN": "Vietnam", "ID": "Indonesia", "KZ": "Kazakhstan",
    "UA": "Ukraine", "US": "USA", "CA": "Canada", "MX": "Mexico", "AR": "Argentina",
    "EG": "Egypt", "NG": "Nigeria", "KE": "Kenya", "TH": "Thailand", "MY": "Malaysia",
}  # fmt: skip
ALWAYS_ALLOWED = ("SMS-Man", "SMS", "ID")
LANGUAGE_LABELS = frozenset({"🇬🇧 English", "🇷🇺 Русский"})
_TAG = re.compile(r"<[^>]+>")
_COMMAND = re.compile(r"/[a-z_]+\b")
_LATIN_WORD = re.compile(r"[A-Za-z]+(?:['’-][A-Za-z]+)*")


@dataclass
class Seen:
    """What the bot showed, with where it came from, for a readable failure."""

    items: list[tuple[str, str]] = field(default_factory=list)  # (where, text)

    def add(self, where: str, text: object) -> None:
        if isinstance(text, str) and text:
            self.items.append((where, text))


def shown_to(telegram: FakeTelegram, user_ids: Iterable[int], upto: int | None = None) -> Seen:
    """Texts and labels of every message, edit and callback answer sent to these users."""
    chats = {str(uid) for uid in user_ids}
    seen = Seen()
    for call in telegram.calls[:upto]:
        p = call.params
        if call.method in {"sendMessage", "editMessageText", "editMessageReplyMarkup"}:
            if str(p.get("chat_id")) not in chats:
                continue
            seen.add(f"{call.method} text", html.unescape(_TAG.sub("", p.get("text") or "")))
            for row in inline_buttons(p.get("reply_markup")):
                for label, _data in row:
                    seen.add(f"{call.method} button", label)
        elif call.method == "answerCallbackQuery":
            seen.add("callback answer", p.get("text"))
        elif call.method == "setMyCommands" and p.get("language_code") == "ru":
            for command in p.get("commands", []):
                seen.add("/command description (ru)", command["description"])
    return seen


def english_left(seen: Seen, allowed: Iterable[str]) -> list[str]:
    phrases = sorted({*allowed, *ALWAYS_ALLOWED}, key=len, reverse=True)
    found = []
    for where, text in seen.items:
        if where.endswith("button") and text in LANGUAGE_LABELS:
            continue  # each language is named in itself
        rest = _COMMAND.sub(" ", text)
        for phrase in phrases:
            rest = rest.replace(phrase, " ")
        words = _LATIN_WORD.findall(rest)
        if words:
            found.append(f"{where}: {words} in {text!r}")
    return found


def labels(message: FakeMessage) -> list[str]:
    return message.labels


def has_label(part: str) -> Callable[[FakeMessage], bool]:
    def check(message: FakeMessage) -> bool:
        return any(part in label for label in message.labels)

    check.__name__ = f"has_label({part!r})"
    return check


async def buy(user: FakeUser, country: str, service: str) -> FakeMessage:
    """Menu -> country -> service -> confirm -> Купить; returns the order card."""
    await user.send("/buy")
    countries = await user.wait_for("Выберите страну (", new_only=True)
    await user.click(country, message_id=countries.message_id)
    services = await user.wait_for(
        predicate=lambda m: m.message_id == countries.message_id and "сервис" in m.text
    )
    await user.click(service, message_id=services.message_id)
    await user.wait_for(
        predicate=lambda m: m.message_id == countries.message_id and "Проверьте заказ" in m.text
    )
    await user.click("Купить", message_id=countries.message_id)
    return await user.wait_for(
        predicate=lambda m: m.message_id == countries.message_id and "Номер: +" in m.text
    )


def request_of(smsman: FakeSmsMan, card: FakeMessage) -> int:
    return next(r.request_id for r in smsman.requests.values() if r.number in card.text)


async def test_every_screen_in_russian(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    for n, (code, title) in enumerate(MORE_COUNTRIES.items()):
        smsman.add_country(200 + n, title, code)
        smsman.set_price(200 + n, 1, "15.00", 10)
    queries = ["whats", "russia"]
    async with running(bot_settings(multiple_sms=True)) as app:
        ann = telegram.user(1, first_name="Аня", language_code="ru")

        # /start and the menu
        await ann.send("/start")
        menu = await ann.wait_for("Привет, Аня")
        assert {"📱 Купить номер", "📋 Мои заказы", "💰 Баланс", "❓ Помощь"} <= set(labels(menu))

        # the country list: CLDR names, two pages
        await ann.click("Купить номер", message_id=menu.message_id)
        page = await ann.wait_for("Выберите страну (")
        assert any("🇷🇺 Россия · от 12.00 ₽" in label for label in labels(page))
        assert any("Великобритания" in label for label in labels(page))
        await ann.click("Далее", message_id=page.message_id)
        page2 = await ann.wait_for(predicate=has_label("‹ Назад"))
        assert page2.message_id == page.message_id
        await ann.click("Назад", message_id=page.message_id)
        await ann.wait_for(predicate=has_label("Далее ›"))

        # typing a name in either language finds Russia
        await ann.send("росс")
        found = await ann.wait_for("«росс»", new_only=True)
        assert [label for label in labels(found) if "·" in label] == ["🇷🇺 Россия · от 12.00 ₽"]
        await ann.send("russia")
        found = await ann.wait_for("«russia»", new_only=True)
        assert any("Россия" in label for label in labels(found))
        await ann.send("абракадабра")
        await ann.wait_for("По запросу «абракадабра» ничего не найдено", new_only=True)

        # services, searching them, confirm and back
        await ann.click("Россия", message_id=found.message_id)
        services = await ann.wait_for("🇷🇺 Россия: выберите сервис")
        assert any(label.startswith("Telegram · 25.00 ₽") for label in labels(services))
        await ann.send("whats")
        matching = await ann.wait_for("сервисы по запросу «whats»", new_only=True)
        await ann.click("WhatsApp", message_id=matching.message_id)
        confirm = await ann.wait_for("Проверьте заказ")
        assert "Страна: 🇷🇺 Россия" in confirm.text and "Цена: 18.50 ₽" in confirm.text
        assert labels(confirm) == ["✅ Купить", "↩ Сервисы"]
        await ann.click("Сервисы", message_id=confirm.message_id)
        await ann.wait_for(
            predicate=lambda m: m.message_id == confirm.message_id and "сервис" in m.text
        )
        await ann.click("Telegram", message_id=confirm.message_id)
        await ann.wait_for(
            predicate=lambda m: m.message_id == confirm.message_id and "Проверьте" in m.text
        )

        # buy: the order card
        await ann.click("Купить", message_id=confirm.message_id)
        card = await ann.wait_for("Номер: +")
        assert "Страна: Россия" in card.text
        assert "Статус: ждём SMS" in card.text and "Осталось: 20 минут" in card.text
        assert labels(card) == ["✖ Отменить"]

        # a code arrives, then another one on the same number
        request_id = request_of(smsman, card)
        first = smsman.deliver_code(request_id)
        await ann.wait_for("Код для Telegram на номер +")
        card = await ann.wait_for(
            predicate=lambda m: m.message_id == card.message_id and first in m.text
        )
        assert f"Код: {first}" in card.text and "код получен" in card.text
        assert labels(card) == ["🔁 Ещё код", "✔ Завершить"]
        await ann.click("Ещё код", message_id=card.message_id)
        await ann.wait_for(
            predicate=lambda m: m.message_id == card.message_id and labels(m) == ["✔ Завершить"]
        )
        second = smsman.deliver_code(request_id)
        card = await ann.wait_for(f"Коды: {first}, {second}")
        await ann.click("Завершить", message_id=card.message_id)
        await ann.wait_for(
            predicate=lambda m: m.message_id == card.message_id and "завершён" in m.text
        )

        # another order, cancelled
        card = await buy(ann, "Индия", "Apple")
        await ann.click("Отменить", message_id=card.message_id)
        await ann.wait_for(
            predicate=lambda m: (
                m.message_id == card.message_id and "отменён, деньги не списаны" in m.text
            )
        )

        # a third one waits: My orders brings its card back; then it expires
        card = await buy(ann, "Филиппины", "Telegram")
        await ann.send("/orders")
        listing = await ann.wait_for("Ожидают кода", new_only=True)
        assert "Недавние" in listing.text and "завершён" in listing.text
        await ann.click("#", message_id=listing.message_id)
        card = await ann.wait_for(
            predicate=lambda m: m.message_id > listing.message_id and "Номер: +" in m.text
        )
        smsman.requests[request_of(smsman, card)].created -= 10_000  # gone at SMS-Man
        await ann.wait_for("⌛ Код по заказу №", timeout=10)
        await ann.wait_for(
            predicate=lambda m: m.message_id == card.message_id and "время вышло" in m.text
        )

        # the menu's other screens
        await ann.send("/start")
        menu = await ann.wait_for("Привет", new_only=True)
        await ann.click("Мои заказы", message_id=menu.message_id)
        await ann.wait_for("Недавние", new_only=True)
        await ann.send("/start")
        menu = await ann.wait_for("Привет", new_only=True)
        await ann.click("Баланс", message_id=menu.message_id)
        await ann.wait_for("Баланс SMS-Man:", new_only=True)
        await ann.click("Меню", message_id=menu.message_id)
        await ann.wait_for(
            predicate=lambda m: m.message_id == menu.message_id and "Привет" in m.text
        )
        await ann.click("Помощь", message_id=menu.message_id)
        await ann.wait_for("Как это работает", new_only=True)
        await ann.send("/help")
        await ann.wait_for("Как это работает", new_only=True)

        # a stale button
        callback_id = await ann.click_data("zz:1", message_id=menu.message_id)
        answer = await ann.wait_answered(callback_id)
        assert answer.get("text") == "Это меню устарело. Вот свежее."
        await ann.wait_for("Это меню устарело", new_only=True)

        # someone the private bot does not know
        stranger = telegram.user(77, first_name="Пётр", language_code="ru")
        await stranger.send("/start")
        await stranger.wait_for("Извините, это закрытый бот")

        # /language, staying in Russian
        await ann.send("/language")
        picker = await ann.wait_for("Выберите язык:", new_only=True)
        assert labels(picker) == ["🇬🇧 English", "🇷🇺 Русский"]
        await ann.click("Русский", message_id=picker.message_id)
        await ann.wait_for("Выбран русский язык.")
        await telegram.wait_idle(2.0)
        russian_part = len(telegram.calls)

        # the choice is stored: English now, although Telegram still says "ru"
        await ann.send("/language")
        picker = await ann.wait_for("Выберите язык:", new_only=True)
        await ann.click("English", message_id=picker.message_id)
        await ann.wait_for("Language set to English.")
        await ann.send("/start")
        await ann.wait_for("Hi, Аня", new_only=True)
        assert (await app.db.users.get(1)).language == "en"  # type: ignore[union-attr]

    seen = shown_to(telegram, [1, 77], upto=russian_part)
    assert len(seen.items) > 60, "the walk was collected"
    commands = [text for where, text in seen.items if where.startswith("/command")]
    assert "Купить номер" in commands, "the command menu for ru is Russian"
    allowed = [title for title, _code in smsman.applications.values()] + queries
    left = english_left(seen, allowed)
    assert left == [], "English in a Russian chat:\n" + "\n".join(left)


async def test_shop_screens_in_russian(
    telegram: FakeTelegram, smsman: FakeSmsMan, bot_settings: SettingsFactory
) -> None:
    """Wallet, not enough money, money on hold and the waiting-orders limit (plural)."""
    async with running(bot_settings(access_mode="shop", max_active_orders=2)) as app:
        ivan = telegram.user(5, first_name="Иван", language_code="ru-RU")
        await ivan.send("/balance")
        await ivan.wait_for("Ваш баланс: 0.00 ₽")
        card_or_refusal = await buy_in_shop(ivan)
        assert (
            "Недостаточно средств: номер стоит 25.00 ₽, на балансе 0.00 ₽" in card_or_refusal.text
        )
        await app.db.wallet.credit(5, 100_00, note=None, idempotency_key="test-credit")
        for _ in range(2):
            card = await buy_in_shop(ivan)
            assert "Номер: +" in card.text and "Цена: 25.00 ₽" in card.text
        await ivan.send("/balance")
        wallet = await ivan.wait_for("Ваш баланс: 50.00 ₽", new_only=True)
        assert "Зарезервировано под ожидающие заказы: 50.00 ₽" in wallet.text
        refusal = await buy_in_shop(ivan)
        assert "У вас уже 2 ожидающих заказа." in refusal.text
    left = english_left(shown_to(telegram, [5]), [t for t, _c in smsman.applications.values()])
    assert left == [], "English in a Russian chat:\n" + "\n".join(left)


async def buy_in_shop(user: FakeUser) -> FakeMessage:
    """Russia, Telegram, Купить; the card (edited in place) or a new refusal message."""
    await user.send("/buy")
    screen = await user.wait_for("Выберите страну (", new_only=True)
    await user.click("Россия", message_id=screen.message_id)
    await user.wait_for(
        predicate=lambda m: m.message_id == screen.message_id and "сервис" in m.text
    )
    await user.click("Telegram", message_id=screen.message_id)
    await user.wait_for(
        predicate=lambda m: m.message_id == screen.message_id and "Проверьте" in m.text
    )
    await user.click("Купить", message_id=screen.message_id)
    return await user.wait_for(
        predicate=lambda m: (
            (m.message_id == screen.message_id and "Номер: +" in m.text)
            or (
                m.message_id > screen.message_id
                and "Купить" not in m.text
                and "Меню" in " ".join(m.labels)
            )
        ),
    )
