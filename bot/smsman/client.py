"""The one place that talks to SMS-Man's control API.

Every call goes through one gate (at most `max_concurrency` in flight, at most `max_rps`
started per second, purchases and cancels ahead of the poller's get-sms), has its own
deadline, and comes back as a typed result or a typed error (errors.py). Reads are retried
on `ProviderUnavailable` with jittered exponential backoff; get-number and set-status are
sent once, as POST with the parameters in the query string and no body, on a fresh
connection, and never retried: after `ProviderUnavailable`
their outcome is unknown and only the caller can find out what happened.

The API token never leaves this module in any text: URLs, error messages and log lines are
redacted (`***`), and the original aiohttp exceptions (whose text may hold the URL) are not
chained to the errors we raise.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote, quote_plus

import aiohttp
import yarl

from bot import metrics

from . import _parse
from ._limiter import CallGate, Gate
from .errors import ProviderUnavailable, SmsManError
from .types import Application, Balance, Country, Limit, Number, Price, Sms, Status

log = logging.getLogger("bot.smsman")

CURRENCIES = frozenset({"RUB", "USD", "EUR"})
GET_NUMBER_CONCURRENCY = 2  # what SMS-Man's own client allows
_MAX_BACKOFF = 30.0

T = TypeVar("T")
# Belt and braces: whatever spelling a URL library chose, a `token=` query value goes.
_TOKEN_IN_QUERY = re.compile(r"(\btoken=)[^&\s'\"<>]+")


class SmsManClient:
    """Async client of `{base_url}/{method}`; see the module docstring for the rules."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 15,
        max_concurrency: int = 10,
        max_rps: float = 20,
        retries: int = 3,
        backoff: float = 0.2,
        currency: str | None = None,
        gate: Gate | None = None,
    ) -> None:
        """`currency`: sent as `currency` with get-prices, get-balance and get-number, so
        costs and the balance come in it rather than in the account's currency.
        `gate`: the call budget to use instead of this process's own (Redis-shared)."""
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._currency = None if currency is None else _currency(currency)
        if retries < 0 or backoff < 0:
            raise ValueError("retries and backoff must not be negative")
        self._base_url = base_url.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._retries = retries
        self._backoff = backoff
        self._max_concurrency = max_concurrency
        self._gate: Gate = gate if gate is not None else CallGate(max_concurrency, max_rps)
        self._get_number_slots = asyncio.Semaphore(GET_NUMBER_CONCURRENCY)
        self._secrets = _spellings(token)
        self._session: aiohttp.ClientSession | None = None  # reads, keep-alive
        self._write_session: aiohttp.ClientSession | None = None  # writes, fresh connections
        self._random = random.Random()
        self.calls_made: int = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self._redact(self._base_url)!r}, token='***')"

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the HTTP sessions now (they are otherwise opened by the first call)."""
        self._sessions()

    async def close(self) -> None:
        """Close the sessions; idempotent. A later call would open new ones."""
        sessions = (self._session, self._write_session)
        self._session = self._write_session = None
        for session in sessions:
            if session is not None and not session.closed:
                await session.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _sessions(self) -> tuple[aiohttp.ClientSession, aiohttp.ClientSession]:
        # Deadlines are ours (asyncio.timeout per attempt); aiohttp's own stay off.
        no_timeout = aiohttp.ClientTimeout(total=None)
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_concurrency),
                timeout=no_timeout,
            )
        if self._write_session is None or self._write_session.closed:
            # A purchase sent on a keep-alive connection the server has just dropped fails
            # with an unknown outcome; a fresh connection per write avoids that case.
            self._write_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=True),
                timeout=no_timeout,
            )
        return self._session, self._write_session

    # ------------------------------------------------------------ reads

    async def get_balance(self) -> Balance:
        body = await self._read("get-balance", self._in_currency({}))
        return self._shaped(_parse.balance, body)

    async def countries(self) -> list[Country]:
        body = await self._read("countries", {})
        return self._shaped(_parse.countries, body)

    async def applications(self) -> list[Application]:
        body = await self._read("applications", {})
        return self._shaped(_parse.applications, body)

    async def prices(self, country_id: int | None = None) -> list[Price]:
        params = {} if country_id is None else {"country_id": str(_id(country_id))}
        body = await self._read("get-prices", self._in_currency(params))
        return self._shaped(_parse.prices, body, country_id)

    async def limits(
        self, country_id: int | None = None, application_id: int | None = None
    ) -> list[Limit]:
        params: dict[str, str] = {}
        if country_id is not None:
            params["country_id"] = str(_id(country_id))
        if application_id is not None:
            params["application_id"] = str(_id(application_id))
        body = await self._read("limits", params)
        return self._shaped(_parse.limits, body, country_id, application_id)

    async def get_sms(self, request_id: int) -> Sms:
        """The code, or `Sms(code=None)` while waiting; `RequestGone` once it expired."""
        body = await self._read(
            "get-sms", {"request_id": str(_id(request_id))}, urgent=False, allow_wait=True
        )
        return self._shaped(_parse.sms, body, request_id)

    # ------------------------------------------------------------ writes (POST, once)

    async def get_number(
        self,
        country_id: int,
        application_id: int,
        *,
        max_price: Decimal | None = None,
        currency: str | None = None,
        multiple_sms: bool = False,
        ref: str | None = None,
    ) -> Number:
        """Buy a number. Never retried: on `ProviderUnavailable` it may have been bought."""
        params = {
            "country_id": str(_id(country_id)),
            "application_id": str(_id(application_id)),
            "hasMultipleSms": "true" if multiple_sms else "false",
        }
        if max_price is not None:
            if not isinstance(max_price, Decimal) or not max_price.is_finite() or max_price < 0:
                raise ValueError("max_price must be a finite, non-negative Decimal")
            params["maxPrice"] = format(max_price, "f")
        if currency is not None:
            params["currency"] = _currency(currency)
        else:
            params = self._in_currency(params)
        if ref:
            params["ref"] = ref
        async with self._get_number_slots:
            body = await self._call_once("get-number", params, post=True, urgent=True)
        return self._shaped(_parse.number, body, country_id, application_id)

    async def set_status(self, request_id: int, status: Status) -> None:
        """Send a status once; on `ProviderUnavailable` it may or may not have taken effect."""
        params = {"request_id": str(_id(request_id)), "status": Status(status).value}
        body = await self._call_once("set-status", params, post=True, urgent=True)
        self._shaped(_parse.status_ok, body)

    def _in_currency(self, params: dict[str, str]) -> dict[str, str]:
        return params if self._currency is None else {**params, "currency": self._currency}

    # ------------------------------------------------------------ transport

    async def _read(
        self,
        method: str,
        params: Mapping[str, str],
        *,
        urgent: bool = True,
        allow_wait: bool = False,
    ) -> Any:
        attempt = 0
        while True:
            try:
                return await self._call_once(
                    method, params, post=False, urgent=urgent, allow_wait=allow_wait
                )
            except ProviderUnavailable:
                if attempt >= self._retries:
                    raise
            delay = min(_MAX_BACKOFF, self._backoff * 2**attempt)
            delay *= self._random.uniform(0.5, 1.5)
            attempt += 1
            log.debug("smsman %s: retry %d/%d in %.2fs", method, attempt, self._retries, delay)
            await asyncio.sleep(delay)

    async def _call_once(
        self,
        method: str,
        params: Mapping[str, str],
        *,
        post: bool,
        urgent: bool,
        allow_wait: bool = False,
    ) -> Any:
        """One HTTP exchange through the gate: the decoded body, or a typed error."""
        url = f"{self._base_url}/{method}"
        fields = {**params, "token": self._token}
        session, write_session = self._sessions()
        await self._gate.acquire(urgent=urgent)
        self.calls_made += 1
        started = time.perf_counter()
        error: SmsManError | None = None
        body: Any = None
        outcome = "cancelled"
        try:
            try:
                async with asyncio.timeout(self._timeout):
                    if post:
                        # Parameters in the query string and no body: what every known
                        # client sends and the only POST form known to work.
                        request = write_session.post(url, params=fields)
                    else:
                        request = session.get(url, params=fields)
                    async with request as response:
                        status = response.status
                        raw = await response.read()
            except TimeoutError:
                error = ProviderUnavailable("timeout", f"{method}: no answer in {self._timeout}s")
            except aiohttp.ClientError as exc:
                detail = self._redact(str(exc)) or "no detail"
                error = ProviderUnavailable(
                    "connection", f"{method}: {type(exc).__name__}: {detail}"[:300]
                )
            except OSError as exc:
                error = ProviderUnavailable(
                    "connection", f"{method}: {type(exc).__name__}: {self._redact(str(exc))}"
                )
            if error is None:
                body, error = self._interpret(method, status, raw, allow_wait=allow_wait)
            outcome = "ok" if error is None else f"{type(error).__name__} {error.code}"
        finally:
            self._gate.release()
            metrics.SMSMAN_CALLS.labels(method, outcome.split(" ", 1)[0]).inc()
            elapsed = (time.perf_counter() - started) * 1000
            log.debug("smsman %s %s %.0fms %s", "POST" if post else "GET", method, elapsed, outcome)
        if error is not None:
            raise error  # raised here, outside `except`, so no token-bearing exception chains
        return body

    def _interpret(
        self, method: str, status: int, raw: bytes, *, allow_wait: bool
    ) -> tuple[Any, SmsManError | None]:
        if status >= 500:
            return None, ProviderUnavailable(f"http_{status}", f"{method}: HTTP {status}")
        try:
            body = _parse.decode(raw)
        except _parse.NotJson as exc:
            code = "html" if exc.html else "malformed"
            if status >= 400:
                code = f"http_{status}"
            return None, ProviderUnavailable(code, f"{method}: {exc} (HTTP {status})")
        error = _parse.error_from(body, allow_wait=allow_wait)
        if error is not None:
            return None, type(error)(error.code, self._redact(error.message))
        if status >= 400:
            return None, ProviderUnavailable(f"http_{status}", f"{method}: HTTP {status}")
        return body, None

    def _shaped(self, parse: Callable[..., T], body: Any, *args: Any) -> T:
        try:
            return parse(body, *args)
        except _parse.BadShape as exc:
            raise ProviderUnavailable("bad_shape", self._redact(str(exc))) from None

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return _TOKEN_IN_QUERY.sub(r"\1***", text)


def _spellings(token: str) -> tuple[str, ...]:
    """The token as it may appear in text: raw, and URL-encoded the ways URLs do it;
    longest first, so a longer spelling is not half-replaced by a shorter one."""
    if not token:
        return ()
    in_query = yarl.URL.build(query={"t": token}).raw_query_string.removeprefix("t=")
    spellings = {token, quote(token, safe=""), quote_plus(token, safe=""), in_query}
    return tuple(sorted(spellings, key=len, reverse=True))


def _currency(value: str) -> str:
    value = value.strip().upper()
    if value not in CURRENCIES:
        raise ValueError("currency must be RUB, USD or EUR")
    return value


def _id(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"an SMS-Man id is a non-negative int, not {value!r}")
    return value
