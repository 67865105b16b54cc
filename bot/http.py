"""The bot's own HTTP server: /telegram (the webhook), /healthz, /readyz and /metrics.

/healthz says the process and its event loop are alive. /readyz says this replica can do
its work: the database answers, Telegram answers, and Redis answers when REDIS_URL is set;
503 with the failing parts named otherwise (a load balancer stops sending it updates).
/telegram exists only in webhook mode: aiogram's SimpleRequestHandler checks the secret
header (401 without it, and nothing is done) and processes the update before answering
(handle_in_background=False), so a crash before the 200 makes Telegram post it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiogram.webhook.aiohttp_server import SimpleRequestHandler, setup_application
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bot import metrics
from bot.poller import Breaker
from storage.models import OrderStatus

if TYPE_CHECKING:
    from bot.app import App

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/telegram"
CHECK_TIMEOUT = 3.0  # seconds one readiness check may take
TELEGRAM_CHECK_TTL = 10.0  # a good getMe answer is trusted this long (probes are frequent)

Check = Callable[[], Awaitable[object]]


class HttpServer:
    def __init__(self, app: App, *, webhook: bool) -> None:
        self._app = app
        self._webhook = webhook
        self._runner: web.AppRunner | None = None
        self._telegram_ok_until = 0.0
        self.web_app = self._build()

    def _build(self) -> web.Application:
        web_app = web.Application()
        web_app.router.add_get("/healthz", self._healthz)
        web_app.router.add_get("/readyz", self._readyz)
        web_app.router.add_get("/metrics", self._metrics)
        if self._webhook:
            # The dispatcher's startup and shutdown hooks run with the web app's; first,
            # so its shutdown (in-flight handlers, the poller) ends before the handler's
            # own shutdown hook closes the bot's session.
            setup_application(web_app, self._app.dp, bot=self._app.bot)
            secret = self._app.settings.webhook_secret.get_secret_value()
            SimpleRequestHandler(
                dispatcher=self._app.dp,
                bot=self._app.bot,
                secret_token=secret,
                handle_in_background=False,
            ).register(web_app, path=WEBHOOK_PATH)
        return web_app

    async def start(self) -> None:
        settings = self._app.settings
        self._runner = web.AppRunner(self.web_app, access_log=None, shutdown_timeout=5.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, settings.http_host, settings.http_port)
        await site.start()
        log.info("HTTP server on %s:%s", settings.http_host, settings.http_port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- endpoints -----------------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        checks: dict[str, Check] = {
            "database": self._app.db.schema_version,
            "telegram": self._check_telegram,
        }
        if self._app.redis is not None:
            checks["redis"] = self._app.redis.ping
        names = list(checks)
        results = await asyncio.gather(*(self._run(checks[name]) for name in names))
        report = dict(zip(names, results, strict=True))
        ready = all(result == "ok" for result in results)
        return web.json_response(report, status=200 if ready else 503)

    @staticmethod
    async def _run(check: Check) -> str:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                await check()
        except Exception as exc:
            return f"down: {type(exc).__name__}"
        return "ok"

    async def _check_telegram(self) -> None:
        if time.monotonic() < self._telegram_ok_until:
            return
        await self._app.bot.get_me()
        self._telegram_ok_until = time.monotonic() + TELEGRAM_CHECK_TTL

    async def _metrics(self, request: web.Request) -> web.Response:
        await self._refresh_gauges()
        body = generate_latest(metrics.REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _refresh_gauges(self) -> None:
        state = self._app.poller.breaker.state
        for each in Breaker:
            metrics.BREAKER.labels(each.value).set(1 if each is state else 0)
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                counts = await self._app.db.stats.orders_by_status()
        except Exception as exc:  # the last counts stay; /readyz tells what is down
            log.warning("metrics: could not count orders: %s", type(exc).__name__)
            return
        for status in OrderStatus:
            metrics.ORDERS.labels(status.value).set(counts.get(status.value, 0))


def webhook_params(app: App) -> dict[str, Any]:
    """setWebhook's arguments: the URL, the secret, and only the update types in use."""
    settings = app.settings
    return {
        "url": settings.webhook_url,
        "secret_token": settings.webhook_secret.get_secret_value(),
        "allowed_updates": app.dp.resolve_used_update_types(),
        "drop_pending_updates": False,
    }
