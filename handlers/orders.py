"""My orders and the order card's buttons: Cancel, Finish, Another code."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import Command
from aiogram.types import CallbackQuery, Message

from bot.delivery.service import Delivery
from bot.services.orders import ActionOutcome, ActionResult, OrderService
from bot.ui import keyboards, texts
from bot.ui.callbacks import MenuAction, MenuCb, OrderAction, OrderCb
from bot.ui.screen import show


def router() -> Router:
    r = Router(name="orders")
    r.message.register(on_orders, Command("orders"))
    r.callback_query.register(on_orders, MenuCb.filter(F.action == MenuAction.ORDERS))
    r.callback_query.register(on_show, OrderCb.filter(F.action == OrderAction.SHOW))
    r.callback_query.register(on_cancel, OrderCb.filter(F.action == OrderAction.CANCEL))
    r.callback_query.register(on_finish, OrderCb.filter(F.action == OrderAction.FINISH))
    r.callback_query.register(on_more, OrderCb.filter(F.action == OrderAction.MORE))
    return r


async def on_orders(event: Message | CallbackQuery, orders: OrderService) -> None:
    """Waiting orders (cards can be brought back) and the last ten finished, with codes."""
    user_id = event.from_user.id if event.from_user else 0
    view = await orders.history(user_id)
    await show(event, texts.orders_text(view.open, view.finished), keyboards.orders_list(view.open))
    if isinstance(event, CallbackQuery):
        await event.answer()


async def on_show(
    callback: CallbackQuery, callback_data: OrderCb, orders: OrderService, delivery: Delivery
) -> None:
    """Bring an order's card back to the bottom of the chat."""
    order = await orders.order_of(callback.from_user.id, callback_data.order)
    if order is None:
        await callback.answer(texts.not_yours(), show_alert=True)
        return
    await callback.answer()
    await delivery.show_card(order.id, new=True)


async def _answer(callback: CallbackQuery, result: ActionResult, refused: str) -> None:
    if result.outcome is ActionOutcome.NOT_FOUND:
        await callback.answer(texts.not_yours(), show_alert=True)
    elif result.outcome is ActionOutcome.TRY_LATER:
        await callback.answer(texts.try_again_later(), show_alert=True)
    elif result.outcome is ActionOutcome.REFUSED:
        await callback.answer(texts.cancel_refused(), show_alert=True)
    elif result.outcome is ActionOutcome.NOT_ALLOWED:
        await callback.answer(refused)
    else:
        await callback.answer()


async def on_cancel(
    callback: CallbackQuery, callback_data: OrderCb, orders: OrderService, delivery: Delivery
) -> None:
    """Cancel: reject at SMS-Man and release the hold; a code that came is shown instead."""
    result = await orders.cancel(callback.from_user.id, callback_data.order)
    await _answer(callback, result, texts.cannot_cancel())
    if result.order is not None and result.outcome is not ActionOutcome.NOT_FOUND:
        await delivery.show_card(result.order.id)


async def on_finish(
    callback: CallbackQuery, callback_data: OrderCb, orders: OrderService, delivery: Delivery
) -> None:
    """Finish: close the number at SMS-Man."""
    result = await orders.finish(callback.from_user.id, callback_data.order)
    await _answer(callback, result, texts.outdated())
    if result.order is not None and result.outcome is not ActionOutcome.NOT_FOUND:
        await delivery.show_card(result.order.id)


async def on_more(
    callback: CallbackQuery, callback_data: OrderCb, orders: OrderService, delivery: Delivery
) -> None:
    """Another code on the same number (retrysms)."""
    result = await orders.another_code(callback.from_user.id, callback_data.order)
    await _answer(callback, result, texts.outdated())
    if result.order is not None and result.outcome is not ActionOutcome.NOT_FOUND:
        await delivery.show_card(result.order.id)
