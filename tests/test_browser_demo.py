"""The demo in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright
clicks through the chat page while the unmodified bot runs against the sandbox.

Skipped, with the reason shown, when chromium or Playwright is missing; with
REQUIRE_BROWSER=1 (as in .ci/run) that is a failure instead. A screenshot of every step is
saved under the test's tmp_path (screens/).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sandbox.chat import ChatServer, identities
from sandbox.demo import Demo
from sandbox.settings import SandboxSettings
from sandbox.telegram import FakeTelegram

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NAV = re.compile(r"[‹›]|^\d+/\d+$|Countries|Menu|Back")


def _missing_browser() -> str | None:
    if not CHROMIUM.exists():
        return f"no {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    missing = _missing_browser()
    if missing is not None:
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(f"browser test skipped: {missing}")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            await chromium.close()


class Screens:
    def __init__(self, page: Any, folder: Path) -> None:
        self.page = page
        self.folder = folder
        self.taken: list[Path] = []
        folder.mkdir(parents=True, exist_ok=True)

    async def __call__(self, name: str) -> None:
        path = self.folder / f"{len(self.taken) + 1:02d}-{name}.png"
        await self.page.screenshot(path=str(path))
        self.taken.append(path)


def keyboard(page: Any) -> Any:
    """The keyboard of the newest bot message that has one."""
    return page.locator(".row.in:has(.keyboard)").last.locator(".keyboard")


async def press(page: Any, label: str) -> None:
    await keyboard(page).get_by_role("button", name=label).first.click()


async def press_first_item(page: Any) -> str:
    """Press the first button of the list on screen (not paging or back); its label."""
    buttons = keyboard(page).get_by_role("button")
    for label in await buttons.all_inner_texts():
        if not NAV.search(label.strip()):
            await keyboard(page).get_by_role("button", name=label, exact=True).first.click()
            return label
    raise AssertionError("no list item on the screen")


async def send(page: Any, text: str) -> None:
    await page.fill("#input", text)
    await page.press("#input", "Enter")


def money(amount: Decimal) -> str:
    return f"{amount:,.2f}".replace(",", " ")


async def wait_until(predicate: Any, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_buy_get_code_cancel_and_refund_in_the_browser(browser: Any, tmp_path: Path) -> None:
    settings = SandboxSettings(
        port=0, code_delay="1-2", no_code_every=2, sms_poll_interval=0.3, credit=Decimal(1000)
    )
    async with Demo(settings, workdir=tmp_path / "demo") as demo:
        page = await browser.new_page(viewport={"width": 760, "height": 900})
        page.set_default_timeout(20_000)
        shot = Screens(page, tmp_path / "screens")
        await page.goto(demo.url)
        await page.select_option("#person", "bob")
        await page.click("button[data-lang=en]")

        await send(page, "/start")
        await keyboard(page).get_by_role("button", name="Buy").first.wait_for()
        await page.click("#menu")
        await page.locator("#commands").get_by_text("/balance").wait_for()
        assert await page.locator("#commands").get_by_text("/stats").count() == 0
        await shot("start")
        await page.click("#menu")

        await press(page, "Buy")
        await keyboard(page).get_by_role("button", name="›").first.wait_for()
        await shot("countries")
        first_page = await keyboard(page).get_by_role("button").all_inner_texts()

        await press(page, "›")
        await keyboard(page).get_by_role("button", name="‹").first.wait_for()
        second_page = await keyboard(page).get_by_role("button").all_inner_texts()
        assert second_page != first_page
        await shot("countries-page-2")

        country = await press_first_item(page)
        assert country not in first_page
        await page.get_by_text("pick a service").last.wait_for()
        await shot("services")

        service = await press_first_item(page)
        await keyboard(page).get_by_role("button", name="Buy").first.wait_for()
        await shot(f"confirm-{service.split('·')[0].strip()}")

        await press(page, "Buy")
        await keyboard(page).get_by_role("button", name="Cancel").first.wait_for()
        await wait_until(lambda: len(demo.smsman.requests) == 1)
        first = next(iter(demo.smsman.requests.values()))
        await page.get_by_text(first.number[-6:]).last.wait_for()  # the card shows the number
        await shot("order-card")

        # the code comes after 1-2 s, as a new message
        bot_messages = await page.locator(".row.in").count()
        await wait_until(lambda: bool(first.codes), timeout=20)
        code = first.codes[0]
        message = page.locator(".row.in", has_text=code)
        await message.last.wait_for()
        assert await page.locator(".row.in").count() > bot_messages
        await shot("code-arrived")

        # a second order, from the first page this time; every second number gets no code
        await send(page, "/start")
        await press(page, "Buy")
        await press(page, "Russia")
        await page.get_by_text("pick a service").last.wait_for()
        await press_first_item(page)
        await press(page, "Buy")
        await keyboard(page).get_by_role("button", name="Cancel").first.wait_for()
        await wait_until(lambda: len(demo.smsman.requests) == 2)
        second = list(demo.smsman.requests.values())[1]
        await send(page, "/balance")
        held = page.locator(".row.in", has_text=money(second.cost))
        await held.last.wait_for()
        await shot("second-order-on-hold")

        await (
            page.locator(".row.in:has(.keyboard)", has_text=second.number[-6:])
            .last.get_by_role("button", name="Cancel")
            .click()
        )
        await wait_until(lambda: second.status == "rejected")
        await shot("second-order-cancelled")

        await send(page, "/balance")
        expected = money(settings.credit - first.cost)
        balance = page.locator(".row.in", has_text=f"balance: {expected}")
        await balance.last.wait_for()
        assert "hold" not in (await balance.last.inner_text()).lower()
        await shot("refund-in-balance")

        # Bob's Russian account, and Alice's admin commands
        await page.click("button[data-lang=ru]")
        await send(page, "/start")
        await keyboard(page).get_by_role("button", name="Купить").first.wait_for()
        await shot("russian")
        await page.select_option("#person", "alice")
        await page.click("button[data-lang=en]")
        await send(page, "/start")  # an admin's command list is set on their /start
        await keyboard(page).get_by_role("button", name="Buy").first.wait_for()
        await send(page, "/stats")
        await page.get_by_text("SMS-Man balance").first.wait_for()
        await page.click("#menu")  # the bot's own command list for this chat
        await page.locator("#commands").get_by_text("/credit").wait_for()
        await shot("admin-stats-and-menu")

        assert not second.codes
        assert len(shot.taken) == 12 and all(p.stat().st_size > 10_000 for p in shot.taken)
        assert demo.telegram.errors == [], f"the bot caused Telegram errors: {demo.telegram.errors}"
        await page.close()


async def test_the_page_renders_only_telegrams_formatting(browser: Any, tmp_path: Path) -> None:
    """What a bot sends is shown as text: Telegram's tags become formatting, anything else
    (an <img onerror>, a javascript: link) stays inert."""
    token = "100000:sandbox-xss"
    telegram = FakeTelegram(token)
    server = ChatServer(telegram, identities(1001, 2001), host="127.0.0.1", port=0)
    await server.start()
    try:
        telegram.user(1001).started = True
        hostile = (
            '<b>bold</b> &lt;img src=x onerror="window.pwned=1"&gt; <i>it</i> '
            "<code>&lt;script&gt;window.pwned=2&lt;/script&gt;</code> "
            '<a href="https://example.org/">fine link</a>'
        )
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{server.url}/bot{token}/sendMessage",
                data={"chat_id": "1001", "text": hostile, "parse_mode": "HTML"},
            ) as response:
                assert (await response.json())["ok"], await response.text()
            # a bot could also send raw text with no parse mode: shown verbatim
            async with http.post(
                f"{server.url}/bot{token}/sendMessage",
                data={"chat_id": "1001", "text": '<img src=x onerror="window.pwned=3">'},
            ) as response:
                assert (await response.json())["ok"]
        page = await browser.new_page()
        await page.goto(server.url + "/")
        await page.get_by_text("fine link").first.wait_for()
        await page.screenshot(path=str(tmp_path / "formatting.png"))
        chat = page.locator("#chat")
        assert await chat.locator("b").inner_text() == "bold"
        assert await chat.locator("i").inner_text() == "it"
        assert await chat.locator("code").inner_text() == "<script>window.pwned=2</script>"
        assert await chat.locator("img, script, iframe").count() == 0
        assert await chat.locator("a").get_attribute("href") == "https://example.org/"
        assert await page.evaluate("window.pwned") is None
        assert await page.get_by_text('<img src=x onerror="window.pwned=3">').count() == 1
        await page.close()
    finally:
        await server.stop()
