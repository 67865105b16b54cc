"""The navigation screens, built from the catalogue cache: text and keyboard together."""

from __future__ import annotations

from dataclasses import dataclass

from aiogram.types import InlineKeyboardMarkup

from bot.services.catalogue import CatalogueService, matches
from bot.services.pricing import Pricing
from bot.settings import Settings
from bot.smsman.errors import SmsManError
from bot.ui import keyboards, texts


@dataclass(frozen=True, slots=True)
class Screen:
    text: str
    markup: InlineKeyboardMarkup | None = None


class Menus:
    def __init__(self, catalogue: CatalogueService, pricing: Pricing, settings: Settings) -> None:
        self._catalogue = catalogue
        self._pricing = pricing
        self._settings = settings

    async def countries(self, locale: str, page: int, query: str | None) -> Screen:
        try:
            items = await self._catalogue.countries()
        except SmsManError:
            return Screen(texts.catalogue_unavailable(), keyboards.back_to_menu())
        if query:
            items = [item for item in items if matches(item, query)]
            if not items:
                return Screen(texts.nothing_found(query), keyboards.back_to_menu())
        if not items:
            return Screen(texts.no_countries(), keyboards.back_to_menu())
        markup = keyboards.countries(
            items,
            page,
            self._pricing.price,
            self._settings.currency,
            locale,
            filtered=bool(query),
        )
        return Screen(texts.choose_country(len(items), query), markup)

    async def services(self, country_id: int, locale: str, page: int, query: str | None) -> Screen:
        try:
            country = await self._catalogue.country(country_id)
            items = await self._catalogue.services(country_id) if country else []
        except SmsManError:
            return Screen(texts.catalogue_unavailable(), keyboards.back_to_menu())
        if country is None:
            return Screen(texts.outdated(), keyboards.main_menu())
        if query:
            folded = query.casefold()
            items = [item for item in items if folded in item.title.casefold()]
            if not items:
                return Screen(texts.nothing_found(query), keyboards.back_to_menu())
        if not items:
            return Screen(texts.no_services(), keyboards.back_to_menu())
        prices = {item.id: self._pricing.price(item.cost) for item in items}
        markup = keyboards.services(
            country_id, items, page, prices, self._settings.currency, filtered=bool(query)
        )
        return Screen(texts.choose_service(country, locale, query), markup)

    async def confirm(self, country_id: int, service_id: int, locale: str) -> Screen | None:
        """The price the user will pay; None when the offer is gone."""
        try:
            offer = await self._catalogue.offer(country_id, service_id)
        except SmsManError:
            return None
        if offer is None:
            return None
        price = self._pricing.price(offer.service.cost)
        text = texts.confirm_text(offer, price, self._settings.currency, locale)
        markup = keyboards.confirm(
            offer.country.id,
            offer.service.id,
            offer.service.cost,
            price,
            multi=self._settings.multiple_sms,
        )
        return Screen(text, markup)
