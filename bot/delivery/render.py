"""What a queued push looks like: texts and keyboards (bot/ui), in the reader's language."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiogram.types import InlineKeyboardMarkup
from aiogram.utils.i18n import I18n

from bot.ui import keyboards, texts
from storage.models import Code, Order

CountryTitle = Callable[[int, str], str | None]


class Renderer:
    def __init__(self, i18n: I18n, country_title: CountryTitle, clock: Callable[[], float]):
        self._i18n = i18n
        self._country_title = country_title
        self._clock = clock

    def card(
        self, order: Order, codes: list[Code], locale: str
    ) -> tuple[str, str, InlineKeyboardMarkup | None]:
        """(text, signature, keyboard): the signature tells whether the card shows it."""
        with self._i18n.use_locale(locale):
            country = self._country_title(order.country_id, locale)
            text = texts.order_card(order, codes, self._clock(), country=country)
            markup = keyboards.order_card(order)
        dump = markup.model_dump(exclude_none=True) if markup else None
        signature = text + "\x00" + json.dumps(dump, sort_keys=True)
        return text, signature, markup

    def code(self, order: Order, code: str, locale: str) -> str:
        with self._i18n.use_locale(locale):
            return texts.code_message(order, code)

    def notice(self, name: str, args: dict[str, Any], order: Order | None, locale: str) -> str:
        """A notice by name; `order` for those about one (None if it is gone)."""
        with self._i18n.use_locale(locale):
            if name == "order_expired" and order is not None:
                return texts.order_expired_notice(order)
            if name == "provider_balance_short":
                return texts.provider_balance_alert()
            if name == "low_balance":
                return texts.low_balance_alert(str(args["balance"]), str(args["threshold"]))
            if name == "reject_refused" and order is not None:
                return texts.reject_refused_alert(order, str(args["error"]))
        raise ValueError(f"no notice {name!r} (or its order is gone)")

    def broadcast_progress(
        self, locale: str, *, sent: int, blocked: int, left: int, status: str
    ) -> str:
        with self._i18n.use_locale(locale):
            return texts.broadcast_progress(sent=sent, blocked=blocked, left=left, status=status)
