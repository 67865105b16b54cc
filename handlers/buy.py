"""The purchase path: country -> service -> confirm -> Buy."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import Command
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import CallbackQuery, Message

from bot.delivery.service import Delivery
from bot.services.orders import BuyOutcome, BuyResult, OrderService
from bot.settings import Settings
from bot.ui import keyboards, stars, texts
from bot.ui.callbacks import (
    BuyCb,
    CountryCb,
    CountryPageCb,
    MenuAction,
    MenuCb,
    ServiceCb,
    ServicePageCb,
)
from bot.ui.menus import Menus
from bot.ui.screen import show
from handlers.conversation import put

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


def _query(message: Message) -> str:
    return (message.text or "").strip()[:MAX_QUERY]


async def on_buy(
    event: Message | CallbackQuery, state: FSMContext, menus: Menus, locale: str
) -> None:
    """The first page of countries."""
    data = await state.get_data()
    if data.get("country_query") is not None:
        data["country_query"] = None
    await put(state, Choosing.country, data)  # one write, none if nothing changed
    screen = await menus.countries(locale, 0, None)
    await show(event, screen.text, screen.markup)
    if isinstance(event, CallbackQuery):
        await event.answer()


async def on_country_page(
    callback: CallbackQuery,
    callback_data: CountryPageCb,
    state: FSMContext,
    menus: Menus,
    locale: str,
) -> None:
    """Another page of countries, in place (of the filtered list if it was filtered)."""
    query = (await state.get_data()).get("country_query") if callback_data.filtered else None
    await state.set_state(Choosing.country)
    screen = await menus.countries(locale, callback_data.page, query)
    await show(callback, screen.text, screen.markup)
    await callback.answer()


async def on_country_search(message: Message, state: FSMContext, menus: Menus, locale: str) -> None:
    """Typed text filters the countries by name (English or Russian) or ISO code."""
    query = _query(message)
    await state.update_data(country_query=query)
    screen = await menus.countries(locale, 0, query)
    await show(message, screen.text, screen.markup)


async def on_country(
    callback: CallbackQuery,
    callback_data: CountryCb,
    state: FSMContext,
    menus: Menus,
    locale: str,
) -> None:
    """A country was picked: its services."""
    data = await state.get_data()
    data.update(country=callback_data.country, service_query=None)
    await put(state, Choosing.service, data)
    screen = await menus.services(callback_data.country, locale, 0, None)
    await show(callback, screen.text, screen.markup)
    await callback.answer()


async def on_service_page(
    callback: CallbackQuery,
    callback_data: ServicePageCb,
    state: FSMContext,
    menus: Menus,
    locale: str,
) -> None:
    """Another page of services, in place."""
    data = await state.get_data()
    same_country = data.get("country") == callback_data.country
    query = data.get("service_query") if callback_data.filtered and same_country else None
    await state.set_state(Choosing.service)
    await state.update_data(country=callback_data.country)
    screen = await menus.services(callback_data.country, locale, callback_data.page, query)
    await show(callback, screen.text, screen.markup)
    await callback.answer()


async def on_service_search(message: Message, state: FSMContext, menus: Menus, locale: str) -> None:
    """Typed text filters the services of the chosen country."""
    country_id = (await state.get_data()).get("country")
    if not isinstance(country_id, int):
        await state.clear()
        await message.answer(texts.outdated(), reply_markup=keyboards.main_menu())
        return
    query = _query(message)
    await state.update_data(service_query=query)
    screen = await menus.services(country_id, locale, 0, query)
    await show(message, screen.text, screen.markup)


async def on_service(
    callback: CallbackQuery, callback_data: ServiceCb, menus: Menus, locale: str
) -> None:
    """A service was picked: the confirm screen with the price."""
    screen = await menus.confirm(callback_data.country, callback_data.service, locale)
    if screen is None:
        await callback.answer(texts.plain_short(texts.no_numbers()), show_alert=True)
        return
    await show(callback, screen.text, screen.markup)
    await callback.answer()


async def on_buy_pressed(
    callback: CallbackQuery,
    callback_data: BuyCb,
    state: FSMContext,
    orders: OrderService,
    delivery: Delivery,
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
        quoted_price=callback_data.price,
        multiple_sms=callback_data.multi,
        idempotency_key=f"buy:{message.chat.id}:{message.message_id}",
        card_message_id=message.message_id,
    )
    if result.order is not None and result.outcome in (BuyOutcome.BOUGHT, BuyOutcome.DUPLICATE):
        await delivery.show_card(result.order.id, message_id=message.message_id)
        return
    markup = (
        keyboards.after_no_numbers()
        if result.outcome is BuyOutcome.NO_NUMBERS
        else stars.with_topup(keyboards.back_to_menu(), settings.stars_enabled)
        if result.outcome is BuyOutcome.SHORT
        else keyboards.back_to_menu()
    )
    await callback.bot.send_message(  # type: ignore[union-attr]
        message.chat.id, _refusal(result, settings), reply_markup=markup
    )


def _refusal(result: BuyResult, settings: Settings) -> str:
    match result.outcome:
        case BuyOutcome.SHORT:
            return texts.top_up_first(result.available, result.price, settings.currency)
        case BuyOutcome.TOO_MANY:
            return texts.too_many_active(settings.max_active_orders)
        case BuyOutcome.TOO_FAST:
            return texts.too_fast()
        case BuyOutcome.BANNED:
            return texts.banned()
        case BuyOutcome.PRICE_CHANGED:
            return texts.price_changed()
        case BuyOutcome.NO_NUMBERS:
            return texts.no_numbers()
        case BuyOutcome.UNAVAILABLE:
            return texts.provider_down()
        case _:
            return texts.purchase_failed()
