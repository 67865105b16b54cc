"""Countries, services and prices from SMS-Man, cached so menus never wait on the provider."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

from babel import Locale, UnknownLocaleError

from bot.services.cache import Cached
from bot.services.money import to_minor
from bot.smsman.client import SmsManClient
from bot.smsman.types import Application, Country, Price

CATALOGUE_TTL = 3600.0
PRICES_TTL = 180.0

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CountryItem:
    id: int
    title: str
    code: str | None
    min_cost: int | None  # minor units, when prices are known
    stock: int | None

    @property
    def flag(self) -> str:
        return flag_of(self.code)

    def title_in(self, locale: str) -> str:
        return territory_name(self.code, locale) or self.title


@dataclass(frozen=True, slots=True)
class ServiceItem:
    id: int
    title: str
    cost: int  # minor units
    count: int


@dataclass(frozen=True, slots=True)
class Offer:
    country: CountryItem
    service: ServiceItem


def flag_of(code: str | None) -> str:
    """The flag emoji of an ISO-3166 alpha-2 code (regional indicator letters)."""
    if not code or len(code) != 2 or not code.isascii() or not code.isalpha():
        return "🌐"
    return "".join(chr(0x1F1E6 + ord(letter) - ord("A")) for letter in code.upper())


@lru_cache(maxsize=4096)
def territory_name(code: str | None, locale: str) -> str | None:
    """The country's name in `locale` from CLDR (Babel), not from a hand-typed list."""
    if not code or locale == "en":
        return None
    try:
        names = Locale.parse(locale).territories
    except (UnknownLocaleError, ValueError):
        return None
    name = names.get(code.upper())
    return str(name) if name else None


class CatalogueService:
    def __init__(self, client: SmsManClient, popular: Sequence[str] = ()) -> None:
        self._client = client
        self._popular = {code.upper(): rank for rank, code in enumerate(popular)}
        self._countries: Cached[list[Country]] = Cached(
            client.countries, CATALOGUE_TTL, "countries"
        )
        self._applications: Cached[dict[int, Application]] = Cached(
            self._load_applications, CATALOGUE_TTL, "applications"
        )
        self._all_prices: Cached[list[Price]] = Cached(client.prices, PRICES_TTL, "prices")
        self._prices: dict[int, Cached[list[Price]]] = {}  # only while _all_prices is cold
        # Menus derived from the cached values, recomputed only when one of those changes:
        # key -> (the source values it was computed from, the result).
        self._memo: dict[Hashable, tuple[tuple[object, ...], Any]] = {}

    def _derived(self, key: Hashable, sources: tuple[object, ...], compute: Callable[[], T]) -> T:
        """`compute()`, or its last result if it came from the very same source objects.

        A navigation click would otherwise walk every price of every country (~10k entries,
        ~6-12 ms of CPU, see bench/menu.py). A refreshed cache holds a new object, so a
        result never outlives the data it came from, and one entry per key keeps at most
        one old copy of the data alive.
        """
        hit = self._memo.get(key)
        if hit is not None and all(old is new for old, new in zip(hit[0], sources, strict=True)):
            return hit[1]  # type: ignore[no-any-return]
        value = compute()
        self._memo[key] = (sources, value)
        return value

    async def _load_applications(self) -> dict[int, Application]:
        return {app.id: app for app in await self._client.applications()}

    async def warm(self) -> None:
        """Fill every cache once, so the first user does not wait."""
        await asyncio.gather(
            self._countries.get(), self._applications.get(), self._all_prices.get()
        )

    async def countries(self) -> list[CountryItem]:
        """Countries with stock, popular first, then alphabetical."""
        countries = await self._countries.get()
        try:
            prices: list[Price] | None = await self._all_prices.get()
        except Exception:
            prices = None  # titles alone still let the user navigate
        sources = (countries, prices)
        return list(self._derived("countries", sources, lambda: self._sorted(countries, prices)))

    def _sorted(self, countries: list[Country], prices: list[Price] | None) -> list[CountryItem]:
        cheapest: dict[int, int] = {}
        stock: dict[int, int] = {}
        for price in prices or ():
            if price.count <= 0:
                continue
            stock[price.country_id] = stock.get(price.country_id, 0) + price.count
            cost = to_minor(price.cost)
            if cost < cheapest.get(price.country_id, cost + 1):
                cheapest[price.country_id] = cost
        items = [
            CountryItem(c.id, c.title, c.code, cheapest.get(c.id), stock.get(c.id))
            for c in countries
            if prices is None or c.id in stock
        ]
        items.sort(key=self._country_order)
        return items

    def _country_order(self, item: CountryItem) -> tuple[int, int, str]:
        popular = self._popular.get((item.code or "").upper())
        if popular is not None:
            return (0, popular, "")
        return (1, 0, item.title.casefold())

    async def country(self, country_id: int) -> CountryItem | None:
        for item in await self._countries.get():
            if item.id == country_id:
                return CountryItem(item.id, item.title, item.code, None, None)
        return None

    def title_of(self, country_id: int, locale: str) -> str | None:
        """The country's name in `locale`, from the cached list only (never waits)."""
        for item in self._countries.value or ():
            if item.id == country_id:
                return territory_name(item.code, locale) or item.title
        return None

    async def services(self, country_id: int) -> list[ServiceItem]:
        """Services on sale in the country, with price and stock, alphabetical.

        From the unfiltered price list that `warm()` loads and `countries()` reads anyway,
        so picking a country never waits on SMS-Man once that list is there; only while it
        is missing (its load failed) is the one country's list fetched and cached.
        """
        if self._all_prices.value is not None:
            everything = await self._all_prices.get()  # a copy exists: never waits
            applications = await self._applications.get()
            index = self._derived(
                "services", (everything, applications), lambda: _Services(everything, applications)
            )
            return list(index.of(country_id))
        cached = self._prices.get(country_id)
        if cached is None:
            cached = Cached(
                lambda: self._client.prices(country_id), PRICES_TTL, f"prices {country_id}"
            )
            self._prices[country_id] = cached
        prices, applications = await asyncio.gather(cached.get(), self._applications.get())
        return _service_items(prices, applications)

    async def offer(self, country_id: int, service_id: int) -> Offer | None:
        country = await self.country(country_id)
        if country is None:
            return None
        for service in await self.services(country_id):
            if service.id == service_id:
                return Offer(country, service)
        return None

    async def close(self) -> None:
        caches: list[Cached[object]] = [
            self._countries,  # type: ignore[list-item]
            self._applications,  # type: ignore[list-item]
            self._all_prices,  # type: ignore[list-item]
            *self._prices.values(),  # type: ignore[list-item]
        ]
        for cache in caches:
            await cache.close()


class _Services:
    """The services of every country from one unfiltered price list, each country's list
    built the first time it is asked for."""

    def __init__(self, prices: list[Price], applications: dict[int, Application]) -> None:
        self._applications = applications
        self._prices: dict[int, list[Price]] = {}
        for price in prices:
            self._prices.setdefault(price.country_id, []).append(price)
        self._items: dict[int, list[ServiceItem]] = {}

    def of(self, country_id: int) -> list[ServiceItem]:
        items = self._items.get(country_id)
        if items is None:
            items = _service_items(self._prices.get(country_id, []), self._applications)
            self._items[country_id] = items
        return items


def _service_items(prices: list[Price], applications: dict[int, Application]) -> list[ServiceItem]:
    items = [
        ServiceItem(
            price.application_id,
            _app_title(applications, price.application_id),
            to_minor(price.cost),
            price.count,
        )
        for price in prices
        if price.count > 0
    ]
    items.sort(key=lambda item: item.title.casefold())
    return items


def _app_title(applications: dict[int, Application], app_id: int) -> str:
    app = applications.get(app_id)
    return app.title if app else f"#{app_id}"


def matches(item: CountryItem, query: str) -> bool:
    """Case-insensitive match by title (English or Russian) or by ISO code."""
    query = query.strip().casefold()
    if not query:
        return True
    if item.code and query == item.code.casefold():
        return True
    if query in item.title.casefold():
        return True
    russian = territory_name(item.code, "ru")
    return bool(russian and query in russian.casefold())
