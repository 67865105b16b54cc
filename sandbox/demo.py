"""The whole demo on this machine: the sandbox SMS-Man, the Bot API server with the chat
page, and the unmodified bot (`python -m bot`) as a child process pointed at them.

    async with Demo(SandboxSettings()) as demo:
        print(demo.url)        # the chat page
        await demo.wait()      # until the bot exits or stop() is called
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

from sandbox.chat import ChatServer, Identity, identities
from sandbox.provider import SandboxSmsMan
from sandbox.settings import SandboxSettings, is_loopback
from sandbox.telegram import FakeTelegram

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
OPERATOR_ID = 999  # a hidden admin account that gives the sandbox users their start credit
READY_TIMEOUT = 60.0
PASSED_THROUGH = frozenset(
    {"PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ", "VIRTUAL_ENV", "SYSTEMROOT"}
)


class DemoError(RuntimeError):
    pass


class Demo:
    def __init__(self, settings: SandboxSettings, *, workdir: Path | None = None) -> None:
        self.settings = settings
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="smsman-sandbox-")
            workdir = Path(self._tmp.name)
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.people: list[Identity] = identities(settings.admin_id, settings.user_id)
        self.smsman = SandboxSmsMan(
            settings.smsman_token,
            code_delay=settings.delay,
            no_code_every=settings.no_code_every,
        )
        self.telegram = FakeTelegram(settings.bot_token, bot_username="smsman_sandbox_bot")
        self.chat = ChatServer(self.telegram, self.people, host=settings.host, port=settings.port)
        self.bot: asyncio.subprocess.Process | None = None
        self.log_path = self.workdir / "bot.log"

    @property
    def url(self) -> str:
        return self.chat.url + "/"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.smsman.start()
        await self.chat.start()
        await self._start_bot()
        await self._credit_everyone()

    async def stop(self) -> None:
        if self.bot is not None and self.bot.returncode is None:
            self.bot.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.bot.wait(), 20)
            except TimeoutError:
                self.bot.kill()
                await self.bot.wait()
        await self.chat.stop()
        await self.smsman.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def wait(self) -> int:
        """Until the bot exits; its exit status."""
        assert self.bot is not None
        return await self.bot.wait()

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ the bot

    def bot_environment(self) -> dict[str, str]:
        """Only what a Python process needs from ours, plus the sandbox's settings: no bot
        setting from the shell (a real token, a webhook, a shared Redis) reaches the
        sandboxed bot, and every URL it is given is on loopback."""
        env = {k: v for k, v in os.environ.items() if k in PASSED_THROUGH}
        s = self.settings
        admins = [OPERATOR_ID, *(p.user_id for p in self.people if p.admin)]
        values = {
            "BOT_TOKEN": s.bot_token,
            "SMSMAN_TOKEN": s.smsman_token,
            "TELEGRAM_API_URL": self.telegram.url,
            "SMSMAN_API_URL": self.smsman.url,
            "DATABASE_URL": f"sqlite:///{self.workdir / 'bot.sqlite3'}",
            "ACCESS_MODE": "shop",
            "ADMIN_IDS": ",".join(str(a) for a in admins),
            "CURRENCY": s.currency,
            "ACTIVATION_TIMEOUT": str(s.activation_timeout),
            "SMS_POLL_INTERVAL": str(s.sms_poll_interval),
            "LOG_LEVEL": "INFO",
        }
        for key in ("TELEGRAM_API_URL", "SMSMAN_API_URL"):
            host = urlsplit(values[key]).hostname or ""
            if not is_loopback(host):
                raise DemoError(f"{key} would leave this machine: {values[key]}")
        env.update(values)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        return env

    async def _start_bot(self) -> None:
        calls_before = len(self.telegram.calls)
        with self.log_path.open("ab") as out:
            self.bot = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bot",
                cwd=self.workdir,  # no .env from the project folder
                env=self.bot_environment(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        while not any(c.method == "getUpdates" for c in self.telegram.calls[calls_before:]):
            if self.bot.returncode is not None or loop.time() > deadline:
                raise DemoError("the bot did not start:\n" + self.bot_log()[-3000:])
            await asyncio.sleep(0.05)

    def bot_log(self) -> str:
        with contextlib.suppress(FileNotFoundError):
            return self.log_path.read_text("utf-8", "replace")
        return ""

    async def _credit_everyone(self) -> None:
        """The start credit, given the way an operator would: /credit from an admin."""
        operator = self.telegram.user(OPERATOR_ID, first_name="Sandbox operator")
        amount = f"{self.settings.credit:f}"
        for person in self.people:
            await operator.send(f"/credit {person.user_id} {amount} sandbox start credit")
            reply = await operator.wait_for(str(person.user_id), new_only=True, timeout=30)
            if "Credited" not in reply.text:
                raise DemoError(f"the start credit was refused: {reply.text}")
