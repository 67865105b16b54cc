"""A fake SMS-Man control API, as strict as the real one (see /work/shared/smsman-api.md).

    async with FakeSmsMan() as fake:          # or: fake = FakeSmsMan(); await fake.start()
        fake.default_catalogue()
        client = SmsManClient(fake.url, fake.token)

Real shapes: catalogues keyed by id string with title/code, costs as strings, business
errors as HTTP 200 with error_code/error_msg, get-number errors echoing application_id,
country_id, error_id and success:false. Costs and the balance in the account's currency, or
converted into the `currency` a call names. GET and POST at /control/<method>, parameters
read from the query string only: whether SMS-Man reads a form body is unknown, so the fake
does not (a form body is recorded in `Call.form` and otherwise ignored).

Every handler does O(1) work except the catalogue methods (get-prices, limits, countries,
applications) and get-balance, which walk the catalogue or the open requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import socket
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from types import TracebackType
from typing import Any, Self

from aiohttp import web

FAULT_KINDS = frozenset({"http500", "html", "malformed", "hang", "reset", "rate_limit"})
EFFECTFUL_METHODS = frozenset({"get-number", "set-status"})
METHODS = frozenset(
    {
        "get-balance",
        "countries",
        "applications",
        "get-prices",
        "limits",
        "get-number",
        "get-sms",
        "set-status",
    }
)
GONE_MESSAGE = "Current request not exists"
TERMINAL = frozenset({"closed", "rejected", "used", "expired"})
CALLING_CODES = {"RU": "7", "PH": "63", "IN": "91", "GB": "44", "US": "1", "KZ": "7", "UA": "380"}
_PLAIN_DECIMAL = re.compile(r"^\d+(\.\d+)?$")
_ERROR_IDS = {"no_numbers": 1, "balance": 2, "wrong_token": 3, "bad_params": 4}
_HTML = (
    "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    "<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)


@dataclass(slots=True)
class Call:
    """One request the fake received (the token included in `params`)."""

    method: str
    params: dict[str, str]  # from the query string: the only ones read
    http_method: str
    time: float  # time.monotonic()
    form: dict[str, str] = field(default_factory=dict)  # a form body's fields (ignored)


@dataclass(slots=True)
class FakeRequest:
    """An activation: status is waiting | received | closed | rejected | used | expired."""

    request_id: int
    number: str
    country_id: int
    application_id: int
    cost: Decimal
    multiple: bool
    created: float  # time.monotonic()
    status: str = "waiting"
    codes: list[str] = field(default_factory=list)
    code_due: float | None = None  # monotonic time the next code appears at
    next_code: str | None = None  # the code to appear then (random when None)
    statuses: list[str] = field(default_factory=list)  # set-status values accepted

    @property
    def code(self) -> str | None:
        """The code get-sms shows now."""
        return self.codes[-1] if self.status == "received" else None


@dataclass(slots=True)
class _Override:
    body: bytes
    status: int
    content_type: str
    times: int | None


class _Fault:
    __slots__ = ("after_effect", "kind")

    def __init__(self, kind: str, after_effect: bool) -> None:
        self.kind = kind
        self.after_effect = after_effect


def _dumps(body: Any) -> str:
    return json.dumps(body, default=str, ensure_ascii=False)


def _error(code: str, message: Any, **extra: Any) -> dict[str, Any]:
    return {**extra, "error_code": code, "error_msg": message}


class FakeSmsMan:
    def __init__(self, token: str = "smsman-test-token", *, seed: int | None = None) -> None:
        self.token = token
        self.url = ""
        self.rng = random.Random(seed)

        # catalogue and account
        self.countries: dict[int, tuple[str, str | None]] = {}
        self.applications: dict[int, tuple[str, str | None]] = {}
        self.prices: dict[tuple[int, int], list[Any]] = {}  # (country, app) -> [cost, count]
        self.out_of_stock: set[tuple[int, int]] = set()
        self.balance = Decimal("100.00")  # like costs, in the account's currency
        # Costs and the balance are kept in the account's currency; a call naming another
        # `currency` gets them converted at `rates` (units of it per unit of RUB).
        self.account_currency = "RUB"
        self.rates: dict[str, Decimal] = {
            "RUB": Decimal(1),
            "USD": Decimal("0.01"),
            "EUR": Decimal("0.009"),
        }

        # activations
        self.requests: dict[int, FakeRequest] = {}
        self.code_after: float | None = None  # None: codes never come by themselves
        self.lifetime: float = 1200
        self.next_request_id = 221651596
        self.gone_error_code = "wrong_request_id"  # SMS-Man's is undocumented

        # shapes
        self.catalogue_as_list = False  # countries/applications as [{"id":0,"title":...}]
        self.limits_as_list = False  # limits as the documented list
        self.wrong_token_as_text = False  # error_msg "Wrong token!" instead of the object

        # faults
        self.fault_rate: float = 0.0
        self.fault_kinds: set[str] = set(FAULT_KINDS)
        self.fault_methods: set[str] | None = None
        self.fault_after_effect_rate: float = 0.0
        self.latency: float = 0.0
        self.hang_seconds: float = 60.0
        self._scripted: dict[str, deque[_Fault]] = defaultdict(deque)
        self._overrides: dict[str, _Override] = {}

        # observation
        self.calls: list[Call] = []
        self.handed_out: set[tuple[int, str]] = set()  # (request_id, code) get-sms answered
        self._calls_by_method: dict[str, list[Call]] = defaultdict(list)
        self.in_flight: Counter[str] = Counter()
        self.peak_in_flight: Counter[str] = Counter()
        self.faults_injected: Counter[str] = Counter()

        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/control/{method}", self._handle)
        self._stopping = asyncio.Event()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock, backlog=2048).start()
        self.url = f"http://127.0.0.1:{port}/control"

    async def stop(self) -> None:
        self._stopping.set()  # ends hanging handlers at once
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------ catalogue

    def add_country(self, id: int, title: str, code: str | None) -> None:
        self.countries[id] = (title, code)

    def add_application(self, id: int, title: str, code: str | None = None) -> None:
        self.applications[id] = (title, code)

    def set_price(
        self, country_id: int, application_id: int, cost: str | Decimal, count: int
    ) -> None:
        self.prices[(country_id, application_id)] = [Decimal(cost), count]

    def default_catalogue(self) -> None:
        """Russia 1, Philippines 8, India 14, United Kingdom 100; Telegram 1, WhatsApp 2,
        Apple 297; every pair priced, the UK dearest."""
        for cid, title, code in (
            (1, "Russia", "RU"),
            (8, "Philippines", "PH"),
            (14, "India", "IN"),
            (100, "United Kingdom", "GB"),
        ):
            self.add_country(cid, title, code)
        for aid, title, code in (
            (1, "Telegram", "tg"),
            (2, "WhatsApp", "wa"),
            (297, "Apple", "wx"),
        ):
            self.add_application(aid, title, code)
        table = {
            1: ("25.00", "18.50", "12.00"),
            8: ("14.20", "11.00", "9.75"),
            14: ("8.90", "10.10", "7.40"),
            100: ("48.00", "52.30", "30.00"),
        }
        for cid, costs in table.items():
            for aid, cost in zip((1, 2, 297), costs, strict=True):
                self.set_price(cid, aid, cost, 431 + cid + aid)

    # ------------------------------------------------------------ currency

    def convert(self, amount: Decimal, currency: str | None) -> Decimal:
        """`amount` (account currency) in `currency` (None: the account's), to the cent."""
        target = currency or self.account_currency
        rate = self.rates[target] / self.rates[self.account_currency]
        return (amount * rate).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)

    def _currency(self, params: dict[str, str]) -> str | None:
        """The `currency` asked for; ValueError if it is not one SMS-Man knows."""
        currency = params.get("currency")
        if currency is not None and currency not in self.rates:
            raise ValueError(currency)
        return currency

    # ------------------------------------------------------------ codes

    def schedule_code(self, request_id: int, after: float, code: str | None = None) -> None:
        """The next code of `request_id` appears `after` seconds from now."""
        request = self.requests[request_id]
        request.code_due = time.monotonic() + after
        request.next_code = code

    def deliver_code(self, request_id: int, code: str | None = None) -> str:
        """A code arrives now; returns it."""
        request = self.requests[request_id]
        if request.status in TERMINAL:
            raise ValueError(f"request {request_id} is {request.status}")
        return self._arrive(request, code)

    def _arrive(self, request: FakeRequest, code: str | None) -> str:
        code = code or f"{self.rng.randrange(10**6):06d}"
        request.codes.append(code)
        request.status = "received"
        request.code_due = None
        request.next_code = None
        return code

    def _tick(self, request: FakeRequest, now: float) -> None:
        """Let time pass for one request: expiry, then a scheduled code."""
        if request.status in TERMINAL:
            return
        if now - request.created >= self.lifetime:
            request.status = "expired"
            if not request.codes:
                self.balance += request.cost
            return
        if request.status == "waiting" and request.code_due is not None and now >= request.code_due:
            self._arrive(request, request.next_code)

    # ------------------------------------------------------------ faults and canned bodies

    def fail_next(
        self, method: str, kind: str, times: int = 1, *, after_effect: bool = False
    ) -> None:
        """The next `times` calls of `method` fail with `kind` (before the action took
        effect, or after it when `after_effect`: the answer is lost)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        self._scripted[method].extend(_Fault(kind, after_effect) for _ in range(times))

    def override(
        self,
        method: str,
        body: Any,
        status: int = 200,
        content_type: str = "application/json",
        *,
        times: int | None = None,
    ) -> None:
        """Serve `body` (str/bytes verbatim, anything else as JSON) for `method`, `times`
        times or until `clear_override`; no token check, no effect."""
        if isinstance(body, str):
            raw = body.encode()
        elif isinstance(body, bytes):
            raw = body
        else:
            raw = _dumps(body).encode()
        self._overrides[method] = _Override(raw, status, content_type, times)

    def clear_override(self, method: str | None = None) -> None:
        if method is None:
            self._overrides.clear()
        else:
            self._overrides.pop(method, None)

    def _pick_fault(self, method: str) -> _Fault | None:
        scripted = self._scripted.get(method)
        if scripted:
            return scripted.popleft()
        if not self.fault_rate or (
            self.fault_methods is not None and method not in self.fault_methods
        ):
            return None
        if self.rng.random() >= self.fault_rate:
            return None
        kinds = sorted(k for k in self.fault_kinds if k != "rate_limit" or method == "get-number")
        if not kinds:
            return None
        kind = self.rng.choice(kinds)
        after = (
            method in EFFECTFUL_METHODS
            and kind != "rate_limit"
            and self.rng.random() < self.fault_after_effect_rate
        )
        return _Fault(kind, after)

    async def _fault_response(
        self, fault: _Fault, request: web.Request, method: str
    ) -> web.StreamResponse:
        self.faults_injected[fault.kind] += 1
        if fault.kind == "http500":
            return web.Response(status=500, text="Internal Server Error")
        if fault.kind == "html":
            return web.Response(status=200, text=_HTML, content_type="text/html")
        if fault.kind == "malformed":
            return web.Response(
                status=200, text='{"request_id": 1, "bal', content_type="application/json"
            )
        if fault.kind == "hang":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.hang_seconds)
            return web.Response(
                status=504, text=_HTML.replace("502 Bad", "504 Gateway"), content_type="text/html"
            )
        if fault.kind == "reset":
            if request.transport is not None:
                request.transport.abort()
            return web.Response()
        # rate_limit: what SMS-Man's limiter answers to get-number bursts
        return self._json(
            _error("no_numbers", "No numbers, try again...", success=False, error_id=1)
        )

    # ------------------------------------------------------------ observation

    def calls_to(self, method: str) -> list[Call]:
        return list(self._calls_by_method.get(method, ()))

    # ------------------------------------------------------------ HTTP

    @staticmethod
    def _json(body: Any) -> web.Response:
        return web.Response(text=_dumps(body), content_type="application/json")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        params: dict[str, str] = dict(request.query)
        form: dict[str, str] = {}
        if request.method == "POST" and request.can_read_body:
            form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        call = Call(method, params, request.method, time.monotonic(), form)
        self.calls.append(call)
        self._calls_by_method[method].append(call)
        self.in_flight[method] += 1
        self.peak_in_flight[method] = max(self.peak_in_flight[method], self.in_flight[method])
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            fault = self._pick_fault(method)
            if fault is not None and not fault.after_effect:
                return await self._fault_response(fault, request, method)
            canned = self._overrides.get(method)
            if canned is not None:
                if canned.times is not None:
                    canned.times -= 1
                    if canned.times <= 0:
                        del self._overrides[method]
                return web.Response(
                    body=canned.body, status=canned.status, content_type=canned.content_type
                )
            if method not in METHODS:
                return web.Response(
                    status=404,
                    text=_HTML.replace("502 Bad Gateway", "404 Not Found"),
                    content_type="text/html",
                )
            if params.get("token") != self.token:
                message: Any = (
                    "Wrong token!" if self.wrong_token_as_text else {"token": "Wrong token!"}
                )
                return self._json(_error("wrong_token", message))
            body = getattr(self, "_m_" + method.replace("-", "_"))(params)
            if fault is not None:  # after the effect: the answer is lost
                return await self._fault_response(fault, request, method)
            return self._json(body)
        finally:
            self.in_flight[method] -= 1

    # ------------------------------------------------------------ methods

    def _request(self, params: dict[str, str]) -> FakeRequest | None:
        request_id = _int(params.get("request_id"))
        return None if request_id is None else self.requests.get(request_id)

    def _gone(self) -> dict[str, Any]:
        return _error(self.gone_error_code, GONE_MESSAGE)

    def _m_get_balance(self, params: dict[str, str]) -> dict[str, Any]:
        now = time.monotonic()
        hold = Decimal(0)
        for request in self.requests.values():
            self._tick(request, now)
            if request.status == "waiting" and not request.codes:
                hold += request.cost
        try:
            currency = self._currency(params)
        except ValueError:
            return _error("bad_params", "Wrong parameters")
        return {
            "balance": str(self.convert(self.balance, currency)),
            "hold": str(self.convert(hold, currency)),
            "channels": 1,
            "active_channels": 0,
            "rating": 5,
        }

    def _catalogue(self, items: dict[int, tuple[str, str | None]]) -> Any:
        rows = []
        for ident, (title, code) in items.items():
            row: dict[str, Any] = {"id": str(ident), "title": title}
            if code is not None:
                row["code"] = code
            rows.append(row)
        if self.catalogue_as_list:
            for row in rows:
                row["id"] = int(row["id"])
            return rows
        return {row["id"]: row for row in rows}

    def _m_countries(self, params: dict[str, str]) -> Any:
        return self._catalogue(self.countries)

    def _m_applications(self, params: dict[str, str]) -> Any:
        return self._catalogue(self.applications)

    def _m_get_prices(self, params: dict[str, str]) -> Any:
        country = _int(params.get("country_id"))
        try:
            currency = self._currency(params)
        except ValueError:
            return _error("bad_params", "Wrong parameters")
        nested: dict[str, dict[str, Any]] = {}
        for (cid, aid), (cost, count) in self.prices.items():
            if country is not None and cid != country:
                continue
            nested.setdefault(str(cid), {})[str(aid)] = {
                "cost": str(self.convert(cost, currency)),
                "count": count,
                "application_id": str(aid),
                "country_id": str(cid),
            }
        if not nested:
            return []
        if country is not None:
            return nested[str(country)]
        return nested

    def _m_limits(self, params: dict[str, str]) -> Any:
        country = _int(params.get("country_id"))
        application = _int(params.get("application_id"))
        rows = [
            {"application_id": str(aid), "country_id": str(cid), "numbers": str(count)}
            for (cid, aid), (_cost, count) in self.prices.items()
            if (country is None or cid == country) and (application is None or aid == application)
        ]
        if self.limits_as_list:
            return rows
        if country is not None:
            return {row["application_id"]: row for row in rows}
        nested: dict[str, dict[str, Any]] = {}
        for row in rows:
            nested.setdefault(row["country_id"], {})[row["application_id"]] = row
        return nested

    def _m_get_number(self, params: dict[str, str]) -> dict[str, Any]:
        country = _int(params.get("country_id"))
        application = _int(params.get("application_id"))

        def fail(code: str, message: str) -> dict[str, Any]:
            return _error(
                code,
                message,
                success=False,
                error_id=_ERROR_IDS.get(code, 9),
                application_id=params.get("application_id"),
                country_id=params.get("country_id"),
            )

        multiple = params.get("hasMultipleSms", "false")
        max_price_text = params.get("maxPrice")
        currency = params.get("currency")
        if (
            country is None
            or application is None
            or multiple not in {"true", "false"}
            or (max_price_text is not None and not _PLAIN_DECIMAL.match(max_price_text))
            or (currency is not None and currency not in {"RUB", "USD", "EUR"})
        ):
            return fail("bad_params", "Wrong parameters")
        if country == 0:  # any country that has this service in stock
            country = next(
                (
                    cid
                    for (cid, aid), (_cost, count) in self.prices.items()
                    if aid == application and count > 0 and (cid, aid) not in self.out_of_stock
                ),
                0,
            )
        entry = self.prices.get((country, application))
        if entry is None or entry[1] <= 0 or (country, application) in self.out_of_stock:
            return fail("no_numbers", "No numbers, try again...")
        cost: Decimal = entry[0]
        # maxPrice is in the currency asked for (the account's without one).
        if max_price_text is not None and Decimal(max_price_text) < self.convert(cost, currency):
            return fail("no_numbers", "No numbers, try again...")
        if self.balance < cost:
            return fail(
                "balance",
                "The price is more than the balance. Need more funds, please charge your balance",
            )
        self.balance -= cost
        entry[1] -= 1
        request_id = self.next_request_id
        self.next_request_id += 1
        now = time.monotonic()
        title_code = self.countries.get(country, ("", None))[1]
        prefix = CALLING_CODES.get((title_code or "").upper(), str(country or 1))
        phone = prefix + "".join(str(self.rng.randrange(10)) for _ in range(10))
        request = FakeRequest(
            request_id=request_id,
            number=phone,
            country_id=country,
            application_id=application,
            cost=cost,
            multiple=multiple == "true",
            created=now,
        )
        if self.code_after is not None:
            request.code_due = now + self.code_after
        self.requests[request_id] = request
        return {
            "request_id": request_id,
            "country_id": country,
            "application_id": application,
            "number": phone,
        }

    def _m_get_sms(self, params: dict[str, str]) -> dict[str, Any]:
        request = self._request(params)
        if request is None:
            return self._gone()
        self._tick(request, time.monotonic())
        if request.status in TERMINAL:
            return self._gone()
        body: dict[str, Any] = {
            "request_id": request.request_id,
            "country_id": request.country_id,
            "application_id": request.application_id,
            "number": request.number,
        }
        if request.status == "received":
            body["sms_code"] = request.codes[-1]
            self.handed_out.add((request.request_id, request.codes[-1]))
            return body
        return _error("wait_sms", "Still waiting...", **body)

    def _m_set_status(self, params: dict[str, str]) -> dict[str, Any]:
        request = self._request(params)
        if request is None:
            return self._gone()
        self._tick(request, time.monotonic())
        if request.status in TERMINAL:
            return self._gone()
        status = params.get("status")
        wrong = _error("wrong_status", "Wrong status")
        if status in {"reject", "used"}:
            if request.codes:
                return wrong
            request.status = "rejected" if status == "reject" else "used"
            self.balance += request.cost
        elif status == "close":
            if not request.codes:
                return wrong
            request.status = "closed"
        elif status == "retrysms":
            if not request.multiple or request.status != "received":
                return wrong
            request.status = "waiting"
            if self.code_after is not None:
                request.code_due = time.monotonic() + self.code_after
        elif status != "ready":
            return wrong
        request.statuses.append(status)
        return {"request_id": request.request_id, "success": True}


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isascii() and value.isdigit() else None


__all__ = ["FAULT_KINDS", "Call", "FakeRequest", "FakeSmsMan"]
