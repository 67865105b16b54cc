"""The purchase path: country -> service -> confirm -> Buy."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import Command
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import CallbackQuery, Message

from bot.services.catalogue import CatalogueService, matches
from bot.services.orders import BuyOutcome, BuyResult, OrderService
from bot.services.pricing import Pricing
from bot.settings import Settings
from bot.smsman.errors import SmsManError
from bot.ui import keyboards, texts
from bot.ui.callbacks import (
    BuyCb,
    CountryCb,
    CountryPageCb,
    MenuAction,
    MenuCb,
    ServiceCb,
    ServicePageCb,
)
from bot.ui.screen import show

MAX_QUERY = 64


class Choosing(StatesGroup):
    country = State()
    service = State()


def router() -> Router:
    r = Router(name="buy")
    r.message.register(on_buy, Command("buy"))
    r.callback_query.register(on_buy, MenuCb.filter(F.action == MenuAction.BUY))
    r.callback_query.register(on_country_page, CountryPageCb.filter())
    r.message.register(on_country_search, Choosing.country, F.text, ~F.text.startswith("/"))
    r.callback_query.register(on_country, CountryCb.filter())
    r.callback_query.register(on_service_page, ServicePageCb.filter())
    r.message.register(on_service_search, Choosing.service, F.text, ~F.text.startswith("/"))
    r.callback_query.register(on_service, ServiceCb.filter())
    r.callback_query.register(on_buy_pressed, BuyCb.filter())
    return r


async def _country_screen(
    event: Message | CallbackQuery,
    catalogue: CatalogueService,
    settings: Settings,
    locale: str,
    page: int,
    query: str | None,
) -> None:
    try:
        items = await catalogue.countries()
    except SmsManError:
        await show(event, texts.catalogue_unavailable(), keyboards.back_to_menu())
        return
    if query:
        items = [item for item in items if matches(item, query)]
        if not items:
            await show(event, texts.nothing_found(query), keyboards.back_to_menu())
            return
    if not items:
        await show(event, texts.no_countries(), keyboards.back_to_menu())
        return
    markup = keyboards.countries(items, page, settings.currency, locale, filtered=bool(query))
    await show(event, texts.choose_country(len(items), query), markup)


async def on_buy(
    event: Message | CallbackQuery,
    state: FSMContext,
    catalogue: CatalogueService,
    settings: Settings,
    locale: str,
) -> None:
    """The first page of countries."""
    await state.set_state(Choosing.country)
    await state.update_data(country_query=None)
    await _country_screen(event, catalogue, settings, locale, 0, None)
    if isinstance(event, CallbackQuery):
        await event.answer()


async def on_country_page(
    callback: CallbackQuery,
    callback_data: CountryPageCb,
    state: FSMContext,
    catalogue: CatalogueService,
    settings: Settings,
    locale: str,
) -> None:
    """Another page of countries, in place."""
    data = await state.get_data()
    query = data.get("country_query") if callback_data.filtered else None
    await state.set_state(Choosing.country)
    await _country_screen(callback, catalogue, settings, locale, callback_data.page, query)
    await callback.answer()


async def on_country_search(
    message: Message,
    state: FSMContext,
    catalogue: CatalogueService,
    settings: Settings,
    locale: str,
) -> None:
    """Typed text filters the countries by name or ISO code."""
    query = (message.text or "").strip()[:MAX_QUERY]
    await state.update_data(country_query=query)
    await _country_screen(message, catalogue, settings, locale, 0, query)


async def _service_screen(
    event: Message | CallbackQuery,
    country_id: int,
    catalogue: CatalogueService,
    pricing: Pricing,
    settings: Settings,
    locale: str,
    page: int,
    query: str | None,
) -> None:
    try:
        country = await catalogue.country(country_id)
        items = await catalogue.services(country_id) if country else []
    except SmsManError:
        await show(event, texts.catalogue_unavailable(), keyboards.back_to_menu())
        return
    if country is None:
        await show(event, texts.outdated(), keyboards.main_menu())
        return
    if query:
        folded = query.casefold()
        items = [item for item in items if folded in item.title.casefold()]
        if not items:
            await show(event, texts.nothing_found(query), keyboards.back_to_menu())
            return
    if not items:
        await show(event, texts.no_services(), keyboards.back_to_menu())
        return
    prices = {item.id: pricing.price(item.cost) for item in items}
    markup = keyboards.services(
        country_id, items, page, prices, settings.currency, filtered=bool(query)
    )
    await show(event, texts.choose_service(country, locale, query), markup)


async def on_country(
    callback: CallbackQuery,
    callback_data: CountryCb,
    state: FSMContext,
    catalogue: CatalogueService,
    pricing: Pricing,
    settings: Settings,
    locale: str,
) -> None:
    """A country was picked: its services."""
    await state.set_state(Choosing.service)
    await state.update_data(country=callback_data.country, service_query=None)
    await _service_screen(
        callback, callback_data.country, catalogue, pricing, settings, locale, 0, None
    )
    await callback.answer()


async def on_service_page(
    callback: CallbackQuery,
    callback_data: ServicePageCb,
    state: FSMContext,
    catalogue: CatalogueService,
    pricing: Pricing,
    settings: Settings,
    locale: str,
) -> None:
    """Another page of services, in place."""
    data = await state.get_data()
    same_country = data.get("country") == callback_data.country
    query = data.get("service_query") if callback_data.filtered and same_country else None
    await state.set_state(Choosing.service)
    await state.update_data(country=callback_data.country)
    await _service_screen(
        callback,
        callback_data.country,
        catalogue,
        pricing,
        settings,
        locale,
        callback_data.page,
        query,
    )
    await callback.answer()


async def on_service_search(
    message: Message,
    state: FSMContext,
    catalogue: CatalogueService,
    pricing: Pricing,
    settings: Settings,
    locale: str,
) -> None:
    """Typed text filters the services of the chosen country."""
    data = await state.get_data()
    country_id = data.get("country")
    if not isinstance(country_id, int):
        await state.clear()
        await message.answer(texts.outdated(), reply_markup=keyboards.main_menu())
        return
    query = (message.text or "").strip()[:MAX_QUERY]
    await state.update_data(service_query=query)
    await _service_screen(message, country_id, catalogue, pricing, settings, locale, 0, query)


async def on_service(
    callback: CallbackQuery,
    callback_data: ServiceCb,
    catalogue: CatalogueService,
    pricing: Pricing,
    settings: Settings,
    locale: str,
) -> None:
    """A service was picked: the confirm screen with the price."""
    try:
        offer = await catalogue.offer(callback_data.country, callback_data.service)
    except SmsManError:
        offer = None
    if offer is None:
        await callback.answer(texts.plain_short(texts.no_numbers()), show_alert=True)
        return
    price = pricing.price(offer.service.cost)
    text = texts.confirm_text(offer, price, settings.currency, locale)
    markup = keyboards.confirm(
        offer.country.id, offer.service.id, offer.service.cost, multi=settings.multiple_sms
    )
    await show(callback, text, markup)
    await callback.answer()


async def on_buy_pressed(
    callback: CallbackQuery,
    callback_data: BuyCb,
    state: FSMContext,
    orders: OrderService,
    settings: Settings,
) -> None:
    """Buy: one confirm screen makes at most one order, however often it is pressed."""
    message = callback.message
    if message is None:
        await callback.answer(texts.outdated())
        return
    await callback.answer()
    await state.clear()
    result = await orders.buy(
        user_id=callback.from_user.id,
        chat_id=message.chat.id,
        country_id=callback_data.country,
        service_id=callback_data.service,
        quoted_cost=callback_data.cost,
        multiple_sms=callback_data.multi,
        idempotency_key=f"buy:{message.chat.id}:{message.message_id}",
    )
    await _render_buy(callback, result, orders, settings)


async def _render_buy(
    callback: CallbackQuery, result: BuyResult, orders: OrderService, settings: Settings
) -> None:
    message = callback.message
    assert message is not None
    if result.order is not None and result.outcome in (BuyOutcome.BOUGHT, BuyOutcome.DUPLICATE):
        await orders.refresh_card(result.order.id, message_id=message.message_id)
        return
    text = {
        BuyOutcome.SHORT: lambda: texts.top_up_first(
            result.available, result.price, settings.currency
        ),
        BuyOutcome.TOO_MANY: lambda: texts.too_many_active(settings.max_active_orders),
        BuyOutcome.TOO_FAST: texts.too_fast,
        BuyOutcome.BANNED: texts.banned,
        BuyOutcome.PRICE_CHANGED: texts.price_changed,
        BuyOutcome.NO_NUMBERS: texts.no_numbers,
        BuyOutcome.UNAVAILABLE: texts.provider_down,
    }.get(result.outcome, texts.purchase_failed)()
    markup = keyboards.back_to_menu()
    if result.outcome is BuyOutcome.NO_NUMBERS:
        markup = keyboards.after_no_numbers()
    await message.answer(text, reply_markup=markup)
