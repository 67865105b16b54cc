"""`python -m sandbox.screenshot docs/demo.png`: the README's picture of the chat page,
taken in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) while the
demo runs: a number bought and its code arrived."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from sandbox.demo import Demo
from sandbox.settings import SandboxSettings

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


async def take(out: Path) -> None:
    from playwright.async_api import async_playwright

    settings = SandboxSettings(port=0, code_delay="3-3", no_code_every=0)
    with tempfile.TemporaryDirectory() as workdir:
        async with Demo(settings, workdir=Path(workdir)) as demo, async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
            )
            page = await browser.new_page(viewport={"width": 760, "height": 700})
            await page.goto(demo.url)
            await page.select_option("#person", "bob")

            def keyboard() -> Any:
                return page.locator(".row.in:has(.keyboard)").last.locator(".keyboard")

            async def say(text: str) -> None:
                await page.fill("#input", text)
                await page.press("#input", "Enter")

            await say("/start")
            await keyboard().get_by_role("button", name="Buy").first.click()
            await keyboard().get_by_role("button", name="Russia").first.click()
            await page.get_by_text("pick a service").last.wait_for()
            telegram = keyboard().get_by_role("button", name="Telegram")
            while not await telegram.count():  # page through the services, in place
                await keyboard().get_by_role("button", name="›").first.click()
                await page.wait_for_timeout(400)
            await telegram.first.click()
            await keyboard().get_by_role("button", name="Buy").first.click()
            await keyboard().get_by_role("button", name="Cancel").first.wait_for()
            await page.get_by_text("Code for").last.wait_for(timeout=20_000)
            await say("/balance")
            await page.get_by_text("Your balance").last.wait_for()
            await page.wait_for_timeout(1500)  # the highlight of a new message fades
            await page.screenshot(path=str(out))
            await browser.close()


if __name__ == "__main__":
    asyncio.run(take(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/demo.png")))
