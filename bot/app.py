"""Wiring: Bot, Dispatcher, SMS-Man client, storage and services; start and stop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiogram import Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.telegram import TelegramAPIServer
from aiogram.enums import ParseMode
from aiogram.exceptions import TelegramAPIError
from aiogram.fsm.storage.base import BaseEventIsolation, BaseStorage, DefaultKeyBuilder
from aiogram.fsm.storage.redis import RedisStorage
from aiogram.utils.i18n import I18n
from redis.asyncio import Redis

from bot.delivery.commands import CommandsMenu
from bot.delivery.pacing import Paced, Pacer
from bot.delivery.service import Delivery
from bot.delivery.shared_pacing import SharedPacer, telegram_prefix
from bot.diagnostics import dump_tasks_on_sigusr1
from bot.http import HttpServer, webhook_params
from bot.isolation import RenewedRedisIsolation
from bot.poller import PROBE_TIMEOUT, Poller
from bot.polling import PollConflict
from bot.responses import keep_response_models
from bot.schedule import ArrivalModel, PollPolicy
from bot.services.access import Access
from bot.services.admin import AdminService
from bot.services.catalogue import CatalogueService
from bot.services.currency import record_currency
from bot.services.leases import OrderLeases
from bot.services.orders import OrderService
from bot.services.pricing import Pricing
from bot.services.stars import StarsService
from bot.services.users import UserService
from bot.settings import Settings
from bot.smsman.client import SmsManClient
from bot.smsman.shared_gate import SLOT_LEASE, SharedCallGate, budget_prefix
from bot.telegram_session import JsonSession
from bot.ui.i18n import make_i18n
from bot.ui.menus import Menus
from handlers import get_routers
from handlers.middlewares import InFlight, setup_middlewares
from storage.db import Database
from storage.fsm import DatabaseFsmStorage
from storage.leases import Leases, Replica

log = logging.getLogger(__name__)

# An operator's (and the benchmark's) switch, not a setting of CONTRACT.md: `fixed` polls
# the earliest-due order first when SMSMAN_MAX_RPS binds, as before bot/schedule.py.
SCHEDULER_ENV = "SMS_POLL_SCHEDULER"


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
    commands: CommandsMenu
    poller: Poller
    delivery: Delivery
    stars: StarsService
    i18n: I18n
    in_flight: InFlight
    replica: Replica  # this process among the replicas: its leases (storage/leases.py)
    redis: Redis | None = None
    shared_gate: SharedCallGate | None = None
    exit_reason: str | None = None  # why it stopped on its own (exit status 2)
    _background: set[asyncio.Task[None]] = field(default_factory=set)

    async def on_startup(self) -> None:
        """Recover orders, warm the caches and register commands, then let updates in."""
        try:
            admins = [
                (user.id, await self.admin.locale_of(user.id))
                for user in await self.admin.reachable_admins()
            ]
            await self.commands.setup(self.bot, admins)
        except Exception as exc:
            # The commands menu is cosmetic (the last one set stays): never a reason not to run.
            log.warning("could not register the commands menu: %s", type(exc).__name__)
        await self.delivery.start()
        await self.poller.start()
        self._spawn(self._warm())
        self._spawn(self.admin.watch_balance())
        self._spawn(self.stars.run_reconciler())

    async def on_shutdown(self) -> None:
        await self.in_flight.wait(timeout=5.0)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.poller.stop()
        await self.admin.stop()
        await self.delivery.stop()
        try:  # the other replicas (or the next start) take the work over at once
            await Leases(self.db).leave(self.replica)
        except Exception as exc:  # they take it over when the leases run out
            log.warning("could not give the leases back: %s", type(exc).__name__)

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
        """Long polling, plus the HTTP server (health, metrics) when HTTP_PORT is set."""
        server = None
        if self.settings.http_port is not None:
            server = HttpServer(self, webhook=False)
            await server.start()
        dump_tasks_on_sigusr1()
        try:
            await self.dp.start_polling(self.bot, handle_signals=True, close_bot_session=False)
        finally:
            if server is not None:
                await server.stop()

    def on_poll_conflict(self, reason: str) -> None:
        """Another poller or a webhook (bot/polling.py): stop polling, exit with 2."""
        self.exit_reason = reason
        self._spawn(self.dp.stop_polling())

    async def run_webhook(self) -> None:
        """Serve /telegram until SIGTERM or SIGINT. The webhook is set once the server
        listens; it stays set at exit, since other replicas keep serving it."""
        server = HttpServer(self, webhook=True)
        await server.start()  # runs the dispatcher's startup hooks first
        try:
            try:
                await self.bot.set_webhook(**webhook_params(self))
            except TelegramAPIError as exc:  # e.g. a port Telegram does not post to
                self.exit_reason = f"Telegram refused WEBHOOK_URL: {exc.message}"
                return
            log.info("webhook set; serving updates")
            dump_tasks_on_sigusr1()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        finally:
            await server.stop()  # runs the dispatcher's shutdown hooks

    async def close(self) -> None:
        await self.catalogue.close()
        await self.client.close()
        await self.bot.session.close()
        await self.db.close()
        if self.shared_gate is not None:
            await self.shared_gate.drain()  # give back the last slots before closing Redis
        if self.redis is not None:
            await self.redis.aclose()


def _log_death(task: asyncio.Task[None]) -> None:
    """A background task that ends by an exception says so (loops should never get here)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s died", task.get_coro(), exc_info=task.exception())


async def _poll_policy(settings: Settings, db: Database) -> PollPolicy | None:
    """The learned schedule, taught our own history; None: the fixed rate."""
    if os.environ.get(SCHEDULER_ENV, "learned").strip().lower() == "fixed":
        log.info("polling: fixed rate (%s=fixed)", SCHEDULER_ENV)
        return None
    model = ArrivalModel()
    model.learn(await db.orders.first_code_times())
    log.info("polling: learned schedule, from %d past orders", model.observed)
    return PollPolicy(
        interval=settings.sms_poll_interval,
        max_rps=settings.smsman_max_rps,
        max_concurrency=settings.smsman_max_concurrency,
        model=model,
    )


async def build_app(settings: Settings) -> App:
    keep_response_models()
    i18n = make_i18n()
    # Each call one JSON body, not a multipart form (bot/telegram_session.py).
    session = JsonSession(api=TelegramAPIServer.from_base(settings.telegram_api_url))
    redis = Redis.from_url(settings.redis_url) if settings.redis_url else None
    # Every counted call (handlers' answers too) takes from one overall budget; a 429
    # pauses them all (bot/delivery/pacing.py); with Redis, over every replica.
    pacer = _pacer(redis, settings)
    session.middleware(Paced(pacer))
    conflict = PollConflict(lambda reason: app.on_poll_conflict(reason))
    if not settings.webhook_mode:
        session.middleware(conflict)
    gate = _shared_gate(redis, settings) if redis is not None else None
    bot = Bot(
        token=settings.bot_token.get_secret_value(),
        session=session,
        default=DefaultBotProperties(parse_mode=ParseMode.HTML),
    )
    db = await Database.open(settings.database_url)
    # Leases last one poll interval: a killed replica's orders and messages are taken
    # over within about 1.3 intervals (renewed every third of it).
    replica = Replica.new(settings.sms_poll_interval)
    try:
        await record_currency(db, settings.currency)
    except BaseException:
        await db.close()
        raise
    log.info("replica %s", replica.id)  # after the checks: a refusal to start is one line
    client = SmsManClient(
        settings.smsman_api_url,
        settings.smsman_token.get_secret_value(),
        timeout=settings.smsman_timeout,
        max_concurrency=settings.smsman_max_concurrency,
        max_rps=settings.smsman_max_rps,
        currency=settings.currency,
        gate=gate,
    )
    access = Access(settings)
    catalogue = CatalogueService(client, settings.popular_countries)
    pricing = Pricing(settings, db)
    await pricing.load()
    stars = StarsService(settings, db, bot)
    await stars.load()

    delivery = Delivery(
        bot=bot,
        db=db,
        i18n=i18n,
        country_title=catalogue.title_of,
        pacer=pacer,
        replica=replica,
    )
    admin = AdminService(
        settings=settings,
        db=db,
        client=client,
        access=access,
        pricing=pricing,
        tell=delivery,
    )
    commands = CommandsMenu(settings, i18n)
    orders = OrderService(
        settings=settings,
        db=db,
        client=client,
        catalogue=catalogue,
        pricing=pricing,
        tell=delivery,
        alerts=admin,
        replica=replica,
    )
    poller = Poller(
        orders=orders,
        interval=settings.sms_poll_interval,
        concurrency=settings.smsman_max_concurrency,
        max_rps=settings.smsman_max_rps,
        # A step makes a few SMS-Man calls, each with its retries: the probe gets time
        # for all of them before it counts as lost.
        probe_timeout=max(PROBE_TIMEOUT, 10 * settings.smsman_timeout),
        policy=await _poll_policy(settings, db),
        leases=OrderLeases(db, replica),
    )
    dp = _dispatcher(redis, db)
    in_flight = InFlight()
    users = UserService(settings, db, client)
    users.on_returned = orders.user_returned
    setup_middlewares(
        dp,
        users=users,
        access=access,
        i18n=i18n,
        in_flight=in_flight,
        webhook=settings.webhook_mode,
    )
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
        commands=commands,
        poller=poller,
        delivery=delivery,
        stars=stars,
        i18n=i18n,
        in_flight=in_flight,
        replica=replica,
        redis=redis,
        shared_gate=gate,
    )
    dp.startup.register(app.on_startup)
    dp.shutdown.register(app.on_shutdown)
    # Handlers receive the services by name through aiogram's dependency injection.
    dp.workflow_data.update(
        settings=settings,
        commands=commands,
        catalogue=catalogue,
        orders=orders,
        pricing=pricing,
        access=access,
        admin=admin,
        stars_service=stars,
        users=users,
        delivery=delivery,
        i18n=i18n,
        menus=Menus(catalogue, pricing, settings),
    )
    return app


def _dispatcher(redis: Redis | None, db: Database) -> Dispatcher:
    """FSM in the database for one process; in Redis, with an event isolation (one update
    of a chat at a time over every replica) whose locks a killed replica does not keep
    long (bot/isolation.py), when REDIS_URL is set."""
    storage: BaseStorage = DatabaseFsmStorage(db)
    isolation: BaseEventIsolation | None = None
    if redis is not None:
        # Keys carry the bot's id: several bots may share one Redis.
        keys = DefaultKeyBuilder(with_bot_id=True)
        storage = RedisStorage(redis, key_builder=keys)
        isolation = RenewedRedisIsolation(redis, keys)
    return Dispatcher(storage=storage, events_isolation=isolation)


def _pacer(redis: Redis | None, settings: Settings) -> Pacer:
    if redis is None:
        return Pacer(settings.telegram_max_rps)
    return SharedPacer(
        redis,
        prefix=telegram_prefix(settings.bot_token.get_secret_value()),
        max_rps=settings.telegram_max_rps,
    )


def _shared_gate(redis: Redis, settings: Settings) -> SharedCallGate:
    return SharedCallGate(
        redis,
        prefix=budget_prefix(settings.smsman_token.get_secret_value()),
        max_concurrency=settings.smsman_max_concurrency,
        max_rps=settings.smsman_max_rps,
        lease=SLOT_LEASE,  # renewed while a call lasts; a killed replica's come back soon
    )
