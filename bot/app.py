"""Wiring: Bot, Dispatcher, SMS-Man client, storage and services; start and stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiogram import Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.enums import ParseMode
from aiogram.utils.i18n import I18n

from bot.delivery.pacing import Paced, Pacer
from bot.delivery.service import Delivery
from bot.poller import PROBE_TIMEOUT, Poller
from bot.services.access import Access
from bot.services.admin import AdminService
from bot.services.catalogue import CatalogueService
from bot.services.currency import record_currency
from bot.services.orders import OrderService
from bot.services.pricing import Pricing
from bot.services.users import UserService
from bot.settings import Settings
from bot.smsman.client import SmsManClient
from bot.ui.i18n import make_i18n
from bot.ui.menus import Menus
from handlers import get_routers
from handlers.middlewares import InFlight, setup_middlewares
from storage.db import Database
from storage.fsm import DatabaseFsmStorage

log = logging.getLogger(__name__)


@dataclass
class App:
    settings: Settings
    bot: Bot
    dp: Dispatcher
    db: Database
    client: SmsManClient
    catalogue: CatalogueService
    orders: OrderService
    admin: AdminService
    poller: Poller
    delivery: Delivery
    i18n: I18n
    in_flight: InFlight
    _background: set[asyncio.Task[None]] = field(default_factory=set)

    async def on_startup(self) -> None:
        """Recover orders, warm the caches and register commands, then let updates in."""
        try:
            await self.admin.setup_commands(self.bot)
        except Exception as exc:
            # The commands menu is cosmetic (the last one set stays): never a reason not to run.
            log.warning("could not register the commands menu: %s", type(exc).__name__)
        await self.delivery.start()
        await self.poller.start()
        self._spawn(self._warm())
        self._spawn(self.admin.watch_balance())

    async def on_shutdown(self) -> None:
        await self.in_flight.wait(timeout=5.0)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.poller.stop()
        await self.admin.stop()
        await self.delivery.stop()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_death)

    async def _warm(self) -> None:
        try:
            await self.catalogue.warm()
        except Exception as exc:
            log.warning("could not warm the catalogue: %s", type(exc).__name__)

    async def run_polling(self) -> None:
        await self.dp.start_polling(self.bot, handle_signals=True, close_bot_session=False)

    async def close(self) -> None:
        await self.catalogue.close()
        await self.client.close()
        await self.bot.session.close()
        await self.db.close()


def _log_death(task: asyncio.Task[None]) -> None:
    """A background task that ends by an exception says so (loops should never get here)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s died", task.get_coro(), exc_info=task.exception())


async def build_app(settings: Settings) -> App:
    i18n = make_i18n()
    session = AiohttpSession(api=TelegramAPIServer.from_base(settings.telegram_api_url))
    # Every counted call (handlers' answers too) takes from one overall budget; a 429
    # pauses them all (bot/delivery/pacing.py).
    pacer = Pacer(settings.telegram_max_rps)
    session.middleware(Paced(pacer))
    bot = Bot(
        token=settings.bot_token.get_secret_value(),
        session=session,
        default=DefaultBotProperties(parse_mode=ParseMode.HTML),
    )
    db = await Database.open(settings.database_url)
    try:
        await record_currency(db, settings.currency)
    except BaseException:
        await db.close()
        raise
    client = SmsManClient(
        settings.smsman_api_url,
        settings.smsman_token.get_secret_value(),
        timeout=settings.smsman_timeout,
        max_concurrency=settings.smsman_max_concurrency,
        max_rps=settings.smsman_max_rps,
        currency=settings.currency,
    )
    access = Access(settings)
    catalogue = CatalogueService(client, settings.popular_countries)
    pricing = Pricing(settings, db)
    await pricing.load()

    delivery = Delivery(bot=bot, db=db, i18n=i18n, country_title=catalogue.title_of, pacer=pacer)
    admin = AdminService(
        settings=settings,
        db=db,
        client=client,
        access=access,
        pricing=pricing,
        tell=delivery,
        i18n=i18n,
    )
    orders = OrderService(
        settings=settings,
        db=db,
        client=client,
        catalogue=catalogue,
        pricing=pricing,
        tell=delivery,
        alerts=admin,
    )
    poller = Poller(
        orders=orders,
        interval=settings.sms_poll_interval,
        concurrency=settings.smsman_max_concurrency,
        max_rps=settings.smsman_max_rps,
        # A step makes a few SMS-Man calls, each with its retries: the probe gets time
        # for all of them before it counts as lost.
        probe_timeout=max(PROBE_TIMEOUT, 10 * settings.smsman_timeout),
    )
    dp = Dispatcher(storage=DatabaseFsmStorage(db))
    in_flight = InFlight()
    users = UserService(settings, db, client)
    users.on_returned = orders.user_returned
    setup_middlewares(dp, users=users, access=access, i18n=i18n, in_flight=in_flight)
    dp.include_routers(*get_routers(settings))
    app = App(
        settings=settings,
        bot=bot,
        dp=dp,
        db=db,
        client=client,
        catalogue=catalogue,
        orders=orders,
        admin=admin,
        poller=poller,
        delivery=delivery,
        i18n=i18n,
        in_flight=in_flight,
    )
    dp.startup.register(app.on_startup)
    dp.shutdown.register(app.on_shutdown)
    # Handlers receive the services by name through aiogram's dependency injection.
    dp.workflow_data.update(
        settings=settings,
        catalogue=catalogue,
        orders=orders,
        pricing=pricing,
        access=access,
        admin=admin,
        users=users,
        delivery=delivery,
        i18n=i18n,
        menus=Menus(catalogue, pricing, settings),
    )
    return app
