"""A realistic SMS-Man catalogue for the sandbox, generated without the network.

About 150 countries (English names and ISO codes from CLDR via Babel), about 60 services,
and a price and stock for most pairs. The same seed gives the same catalogue, so a demo
and its browser test see the same menus.
"""

from __future__ import annotations

import random
from decimal import Decimal

from babel import Locale

from sandbox.smsman import FakeSmsMan

# SMS-Man's own ids for a few countries (the rest are numbered after them); the popular
# ones first, so the bot's POPULAR_COUNTRIES all exist.
KNOWN_COUNTRY_IDS = {
    "RU": 1,
    "UA": 2,
    "KZ": 3,
    "PH": 8,
    "ID": 7,
    "IN": 14,
    "US": 5,
    "GB": 100,
    "BR": 73,
    "VN": 10,
}
# Regions, uninhabited islands and private-use codes CLDR lists beside countries.
NOT_COUNTRIES = frozenset(
    [
        "EU",
        "EZ",
        "UN",
        "QO",
        "XA",
        "XB",
        "ZZ",
        "AQ",
        "BV",
        "HM",
        "UM",
        "TF",
        "IO",
        "CP",
        "DG",
        "EA",
        "IC",
        "AC",
        "TA",
        "XK",
        "CQ",
    ]
)
COUNTRY_COUNT = 150

# (title, SMS-Man code): the services people rent numbers for most.
SERVICES: tuple[tuple[str, str], ...] = (
    ("Telegram", "tg"),
    ("WhatsApp", "wa"),
    ("Google", "go"),
    ("Facebook", "fb"),
    ("Instagram", "ig"),
    ("TikTok", "lf"),
    ("Twitter / X", "tw"),
    ("Viber", "vi"),
    ("WeChat", "wb"),
    ("Apple", "wx"),
    ("Microsoft", "mm"),
    ("Amazon", "am"),
    ("Uber", "ub"),
    ("Discord", "ds"),
    ("Snapchat", "fu"),
    ("LinkedIn", "tn"),
    ("Netflix", "nf"),
    ("PayPal", "ts"),
    ("Yahoo", "mb"),
    ("Steam", "mt"),
    ("Tinder", "oi"),
    ("Bumble", "mo"),
    ("Signal", "bw"),
    ("Line", "me"),
    ("KakaoTalk", "kt"),
    ("Shopee", "ka"),
    ("Grab", "jg"),
    ("Gojek", "ni"),
    ("OLX", "sn"),
    ("Avito", "av"),
    ("VKontakte", "vk"),
    ("Yandex", "ya"),
    ("Mail.ru", "ma"),
    ("Ozon", "sg"),
    ("Wildberries", "uu"),
    ("Sberbank", "bs"),
    ("Tinkoff", "tk"),
    ("AliExpress", "hx"),
    ("Alibaba", "ab"),
    ("Airbnb", "uk"),
    ("Booking", "bk"),
    ("Bolt", "tx"),
    ("Lyft", "tu"),
    ("Deliveroo", "zk"),
    ("Glovo", "aq"),
    ("Revolut", "ij"),
    ("Wise", "bo"),
    ("Binance", "aon"),
    ("Coinbase", "re"),
    ("Bybit", "byb"),
    ("OpenAI", "dr"),
    ("Claude", "acz"),
    ("Twitch", "hb"),
    ("Spotify", "alj"),
    ("eBay", "dh"),
    ("Zoom", "zm"),
    ("Skype", "sk"),
    ("Hinge", "vz"),
    ("Badoo", "qv"),
    ("Any other", "ot"),
)


def country_codes(seed: int = 17) -> list[str]:
    """COUNTRY_COUNT ISO codes: the known ones first, then a fixed sample of CLDR's."""
    territories = {str(k): str(v) for k, v in Locale("en").territories.items()}
    rest = sorted(
        code
        for code in territories
        if len(code) == 2
        and code.isalpha()
        and code not in NOT_COUNTRIES
        and code not in KNOWN_COUNTRY_IDS
    )
    sample = random.Random(seed).sample(rest, COUNTRY_COUNT - len(KNOWN_COUNTRY_IDS))
    return [*KNOWN_COUNTRY_IDS, *sorted(sample)]


def fill(fake: FakeSmsMan, *, seed: int = 17) -> None:
    """Put the whole catalogue, prices and stock into `fake` (RUB, two decimals)."""
    rng = random.Random(seed)
    names = {str(k): str(v) for k, v in Locale("en").territories.items()}
    next_id = max(KNOWN_COUNTRY_IDS.values()) + 1
    countries: list[int] = []
    for code in country_codes(seed):
        ident = KNOWN_COUNTRY_IDS.get(code)
        if ident is None:
            ident, next_id = next_id, next_id + 1
        fake.add_country(ident, names[code], code)
        countries.append(ident)
    for number, (title, code) in enumerate(SERVICES, start=1):
        fake.add_application(number, title, code)

    for country in countries:
        country_factor = rng.uniform(0.4, 3.0)  # some countries are dear everywhere
        for service in range(1, len(SERVICES) + 1):
            roll = rng.random()
            if roll < 0.12:
                continue  # not offered here at all
            base = 4 + 40 * rng.random() ** 2  # mostly cheap, a few dear
            cost = Decimal(str(round(base * country_factor, 2))).quantize(Decimal("0.01"))
            stock = 0 if roll < 0.17 else rng.choice((3, 12, 48, 150, 620, 2400, 9800))
            fake.set_price(country, service, max(cost, Decimal("1.00")), stock)
