"""The bot as a real process (`python -m bot`) against the fakes: restarts, crashes, chaos.

    bot = BotProcess.for_fakes(telegram, smsman, tmp_path, sms_poll_interval=0.2)
    await bot.start()            # spawn, and wait until startup is done and it long-polls
    ...                          # drive it through the fakes
    await bot.kill()             # SIGKILL: no cleanup of any kind
    await bot.start()            # the same settings and database
    assert await bot.terminate() == 0   # SIGTERM: a clean stop exits 0
    print(bot.log_text())        # everything it wrote, all runs, with a marker per start

Or `async with BotProcess.for_fakes(...) as bot:` (started on entry, stopped on exit).

The fakes must run on the caller's event loop (they answer the process over HTTP).
"Ready" means the process called getMe on the fake Telegram after this start: aiogram does
that right after the startup hooks (orders reconciled, the poller running), just before its
first getUpdates; in webhook mode (WEBHOOK_URL set), that setWebhook succeeded, which the
bot calls once its HTTP server listens. Without a FakeTelegram, the log line aiogram
writes then is awaited.
`rss_kb()`, `peak_rss_kb()` and `cpu_seconds()` read /proc for benchmarks. Below the
class: the chat steps these tests share (`buy`, `code_messages`, ...).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from bot.settings import Settings
from sandbox.smsman import FakeSmsMan
from sandbox.telegram import FakeMessage, FakeTelegram, FakeUser

ROOT = Path(__file__).resolve().parent.parent
READY_LINE = "Start polling"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class BotProcessError(RuntimeError):
    """The process did not start, did not stop in time, or exited unexpectedly."""


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple | set | frozenset):
        return ",".join(str(item) for item in value)
    return str(value)


class BotProcess:
    def __init__(
        self,
        settings: Mapping[str, Any],
        *,
        workdir: Path,
        telegram: FakeTelegram | None = None,
        python: str = sys.executable,
    ) -> None:
        """`settings`: Settings field names (any case) to values; lists become `a,b`."""
        self.workdir = workdir
        self.telegram = telegram
        self.python = python
        self.log_path = workdir / "bot.log"
        self.settings = {key.upper(): _env_value(value) for key, value in settings.items()}
        self.starts = 0
        self._process: asyncio.subprocess.Process | None = None
        self._log_offset = 0

    @classmethod
    def for_fakes(
        cls,
        telegram: FakeTelegram,
        smsman: FakeSmsMan,
        workdir: Path,
        **settings: Any,
    ) -> BotProcess:
        """Settings pointing at the fakes, a database in `workdir`, fast polling; keyword
        arguments (Settings field names) override or add."""
        values: dict[str, Any] = {
            "bot_token": telegram.token,
            "smsman_token": smsman.token,
            "telegram_api_url": telegram.url,
            "smsman_api_url": smsman.url,
            "database_url": f"sqlite:///{workdir / 'bot.sqlite3'}",
            "sms_poll_interval": 0.2,
            "smsman_timeout": 1.0,
            "admin_ids": [1000],
            "allowed_user_ids": [1, 2, 3, 4, 5],
            "log_level": "INFO",
        }
        values.update(settings)
        return cls(values, workdir=workdir, telegram=telegram)

    # -- state -------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def returncode(self) -> int | None:
        return self._process.returncode if self._process is not None else None

    @property
    def database_url(self) -> str:
        return self.settings["DATABASE_URL"]

    def log_text(self, *, this_run: bool = False) -> str:
        """What the process wrote (stdout and stderr) over all runs, or since the last
        start."""
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return ""
        if this_run:
            data = data[self._log_offset :]
        return data.decode("utf-8", "replace")

    def environment(self) -> dict[str, str]:
        """The child's environment: ours without any setting of the bot's, plus its own."""
        names = {name.upper() for name in Settings.model_fields}
        env = {key: value for key, value in os.environ.items() if key.upper() not in names}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.settings)
        return env

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, timeout: float = 30.0) -> None:
        """Spawn `python -m bot` and wait until it is ready (see the module docstring)."""
        if self.running:
            raise BotProcessError(f"already running (pid {self.pid})")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"----- start #{self.starts} -----\n".encode())
            self._log_offset = log.tell()
            calls_before = len(self.telegram.calls) if self.telegram is not None else 0
            self._process = await asyncio.create_subprocess_exec(
                self.python,
                "-m",
                "bot",
                cwd=self.workdir,  # no stray .env from the project folder
                env=self.environment(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        await self._wait_ready(calls_before, timeout)

    async def _wait_ready(self, calls_before: int, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self._ready(calls_before):
                return
            if not self.running:
                raise BotProcessError(
                    f"the bot exited with {self.returncode} before it was ready:\n"
                    + self.log_text(this_run=True)[-4000:]
                )
            if loop.time() > deadline:
                await self.kill()
                raise BotProcessError(
                    f"the bot was not ready within {timeout}s:\n"
                    + self.log_text(this_run=True)[-4000:]
                )
            await asyncio.sleep(0.02)

    def _ready(self, calls_before: int) -> bool:
        if self.telegram is not None:
            # Webhook mode: the webhook is set once the server listens (bot/app.py).
            ready_call = "setWebhook" if self.settings.get("WEBHOOK_URL") else "getMe"
            calls = self.telegram.calls
            return any(call.method == ready_call and call.ok for call in calls[calls_before:])
        return READY_LINE in self.log_text(this_run=True)

    async def kill(self) -> int:
        """SIGKILL and reap; returns the exit status (-9), or the earlier one if it had
        already exited."""
        process = self._require()
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
        return await process.wait()

    async def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait for the clean exit; returns its code (0 when clean). A process
        that outlives `timeout` is killed and BotProcessError raised."""
        process = self._require()
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            await self.kill()
            raise BotProcessError(
                f"the bot did not stop within {timeout}s of SIGTERM:\n"
                + self.log_text(this_run=True)[-4000:]
            ) from None

    async def restart(self, *, kill: bool = False, timeout: float = 30.0) -> int:
        """Stop (SIGKILL if `kill`, else SIGTERM), then start again; returns the exit
        status of the stopped run."""
        status = await (self.kill() if kill else self.terminate())
        await self.start(timeout)
        return status

    async def stop(self) -> None:
        """Whatever state it is in, make sure no process is left (SIGTERM, then SIGKILL)."""
        if not self.running:
            return
        try:
            await self.terminate(timeout=10.0)
        except BotProcessError:
            pass  # killed by terminate()

    def _require(self) -> asyncio.subprocess.Process:
        if self._process is None:
            raise BotProcessError("the bot was never started")
        return self._process

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

    # -- measurements (Linux /proc) ----------------------------------------------------

    def _status_kb(self, field: str) -> int:
        pid = self._require().pid
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise BotProcessError(f"no {field} in /proc/{pid}/status")

    def rss_kb(self) -> int:
        """Resident memory now, in KiB."""
        return self._status_kb("VmRSS")

    def peak_rss_kb(self) -> int:
        """The highest resident memory so far (VmHWM), in KiB."""
        return self._status_kb("VmHWM")

    def cpu_seconds(self) -> float:
        """User + system CPU time the process used so far."""
        pid = self._require().pid
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now (for HTTP_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def webhook_settings(port: int, secret: str = "s3cret-Token_1") -> dict[str, Any]:
    """Settings for webhook mode on `port` (http to loopback: see bot/settings.py)."""
    return {
        "webhook_url": f"http://127.0.0.1:{port}/telegram",
        "webhook_secret": secret,
        "http_host": "127.0.0.1",
        "http_port": port,
    }


async def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> None:
    """Poll `predicate()` (sync or async) until it is true; AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


# -- steps the process tests share ----------------------------------------------------

CODE_MARK = "🔔"  # the first character of a code message (texts.code_message)


async def buy(
    user: FakeUser, *, country: str = "Russia", service: str = "Telegram", several: bool = False
) -> FakeMessage:
    """/buy -> country -> service -> Buy (or "Buy (several SMS)"); returns the order card."""
    await user.send("/buy")
    countries = await user.wait_for("Pick a country", new_only=True)
    await user.click(country, message_id=countries.message_id)
    services = await user.wait_for("pick a service", new_only=True)
    await user.click(service, message_id=services.message_id)
    confirm = await user.wait_for("Check your order", new_only=True)
    await user.click("several SMS" if several else "✅ Buy", message_id=confirm.message_id)
    return await user.wait_for(
        predicate=lambda m: m.message_id == confirm.message_id and "Number: +" in m.text
    )


def code_messages(user: FakeUser, code: str) -> list[FakeMessage]:
    """The bot's code messages in the chat that show `code` (the card is not one)."""
    return [m for m in user.messages if m.text.startswith(CODE_MARK) and code in m.text]


def code_sends(telegram: FakeTelegram, chat_id: int, code: str) -> list[float]:
    """Arrival times (monotonic) of the accepted sendMessage calls that carried `code`."""
    return [
        call.time
        for call in telegram.calls_to("sendMessage")
        if call.ok
        and call.params.get("chat_id") == chat_id
        and code in str(call.params.get("text", ""))
        and str(call.params.get("text", "")).startswith(CODE_MARK)
    ]


def request_of(smsman: FakeSmsMan, number_text: str) -> int:
    """The SMS-Man request whose number the card shows."""
    for request in smsman.requests.values():
        if request.number in number_text:
            return request.request_id
    raise AssertionError(f"no request for a number in {number_text!r}")


def arrive(smsman: FakeSmsMan, request_id: int, code: str) -> float:
    """The code reaches SMS-Man now; returns the monotonic time it did."""
    smsman.deliver_code(request_id, code)
    return time.monotonic()


def set_status_calls(smsman: FakeSmsMan, request_id: int, status: str) -> int:
    return sum(
        1
        for call in smsman.calls_to("set-status")
        if call.params.get("request_id") == str(request_id) and call.params.get("status") == status
    )
