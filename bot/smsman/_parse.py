"""Turning SMS-Man answers into typed results and errors.

Pure functions, no I/O. Everything SMS-Man is known to send (see smsman-api.md) is accepted
here and normalised: ids become ints, money becomes Decimal (never float), codes upper case.
A single malformed catalogue entry is skipped, not fatal; an answer whose overall shape is
unusable raises `BadShape`, which the client turns into `ProviderUnavailable`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from .errors import (
    InsufficientBalance,
    NoNumbers,
    RequestGone,
    SmsManError,
    WrongStatus,
    WrongToken,
)
from .types import Application, Balance, Country, Limit, Number, Price, Sms

log = logging.getLogger("bot.smsman")

WAIT_SMS = "wait_sms"
_GONE_MARKER = "request not exist"  # "Current request not exists"
_ERRORS: dict[str, type[SmsManError]] = {
    "wrong_token": WrongToken,
    "no_numbers": NoNumbers,
    "balance": InsufficientBalance,
    "wrong_status": WrongStatus,
}
_MAX_MESSAGE = 300
_MAX_DEPTH = 4
_INTEGER = re.compile(r"^(-?[0-9]{1,18})(?:\.0*)?$")
_BIG = Decimal(10) ** 18

T = TypeVar("T")


class BadShape(ValueError):
    """The answer is JSON but not in any shape we know."""


class NotJson(ValueError):
    """The body is not JSON; `html` tells an HTML page (proxy error) from garbage."""

    def __init__(self, detail: str, *, html: bool) -> None:
        super().__init__(detail)
        self.html = html


# ---------------------------------------------------------------- body and errors


def _no_constants(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def decode(raw: bytes) -> Any:
    """Decode a body: JSON with decimals as Decimal, or `NotJson`."""
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        return json.loads(text, parse_float=Decimal, parse_constant=_no_constants)
    except ValueError as exc:
        head = text[:200].lower()
        if head.startswith("<") or "<html" in head or "<!doctype" in head:
            raise NotJson("HTML page instead of JSON", html=True) from None
        raise NotJson(f"malformed JSON ({exc})", html=False) from None


def flatten_message(value: Any) -> str:
    """`error_msg` is a string or an object like {"token": "Wrong token!"}: make it text."""
    if value is None:
        text = ""
    elif isinstance(value, str):
        text = value
    elif isinstance(value, dict):
        text = "; ".join(f"{key}: {flatten_message(item)}" for key, item in value.items())
    elif isinstance(value, list):
        text = "; ".join(flatten_message(item) for item in value)
    else:
        text = str(value)
    text = " ".join(text.split())
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 1] + "…"
    return text


def error_from(body: Any, *, allow_wait: bool = False) -> SmsManError | None:
    """The business error a decoded body carries, if any (HTTP status is not looked at).

    `wait_sms` is not an error when `allow_wait` (get-sms); anywhere else it is unknown.
    `redact` must be applied by the caller to the message of what is returned.
    """
    if not isinstance(body, dict):
        return None
    code = body.get("error_code")
    if code is None or code == "":
        if body.get("success") is False:
            return SmsManError(None, flatten_message(body.get("error_msg")) or "success: false")
        return None
    code = str(code)
    if code == WAIT_SMS and allow_wait:
        return None
    message = flatten_message(body.get("error_msg"))
    if _GONE_MARKER in message.lower():
        return RequestGone(code, message)
    return _ERRORS.get(code, SmsManError)(code, message)


# ---------------------------------------------------------------- scalars


def to_int(value: Any) -> int | None:
    """An id or a count as int: JSON int, ASCII digit string or integral Decimal; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = _INTEGER.match(value.strip())
        return int(match[1]) if match else None
    if (
        isinstance(value, Decimal)
        and value.is_finite()
        and value == value.to_integral_value()
        and abs(value) < _BIG
    ):
        return int(value)
    return None


def to_id(value: Any) -> int | None:
    number = to_int(value)
    return number if number is not None and number >= 0 else None


def to_decimal(value: Any, *, signed: bool = False) -> Decimal | None:
    """Money: decimal string, int or Decimal (never a float; JSON floats arrive as Decimal).

    Negative amounts are refused unless `signed`."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | Decimal):
        result = Decimal(value)
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            return None
    else:
        return None
    if not result.is_finite() or (result < 0 and not signed):
        return None
    return result


def _text(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str | int | Decimal):
        text = str(value).strip()
        return text or None
    return None


def _code(value: Any) -> str | None:
    text = _text(value)
    return text.upper() if text else None


# ---------------------------------------------------------------- walking shapes


def _items(data: Any, what: str) -> Iterator[tuple[str | None, Any]]:
    """(key, item) of an object keyed by id, or (None, item) of a list."""
    if isinstance(data, dict):
        for key, item in data.items():
            yield str(key), item
    elif isinstance(data, list):
        for item in data:
            yield None, item
    else:
        raise BadShape(f"{what}: expected an object or a list, got {type(data).__name__}")


def _entries(
    data: Any, is_entry: Callable[[Any], bool], what: str
) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Leaves of a nested/flat object or a list, with the object keys that lead to each."""
    if not isinstance(data, dict | list):
        raise BadShape(f"{what}: expected an object or a list, got {type(data).__name__}")

    def walk(node: Any, keys: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
        if is_entry(node):
            yield keys, node
        elif len(keys) >= _MAX_DEPTH:
            return
        elif isinstance(node, dict):
            for key, item in node.items():
                yield from walk(item, (*keys, str(key)))
        elif isinstance(node, list):
            for item in node:
                yield from walk(item, keys)

    yield from walk(data, ())


def _pair_ids(
    entry: Any,
    keys: tuple[str, ...],
    country_id: int | None,
    application_id: int | None,
) -> tuple[int | None, int | None]:
    """(country, application) of an entry: its own fields first, then the keys above it
    (nested: country then application; flat: whichever the filter left open), then the
    filter the call was made with."""
    from_keys: tuple[str | None, str | None] = (None, None)
    if len(keys) >= 2:
        from_keys = (keys[-2], keys[-1])
    elif len(keys) == 1:
        if country_id is None and application_id is not None:
            from_keys = (keys[0], None)
        else:
            from_keys = (None, keys[0])
    own: dict[str, Any] = entry if isinstance(entry, dict) else {}

    def pick(field: str, key: str | None, fallback: int | None) -> int | None:
        for candidate in (own.get(field), key):
            if candidate is not None:
                return to_id(candidate)
        return fallback

    return (
        pick("country_id", from_keys[0], country_id),
        pick("application_id", from_keys[1], application_id),
    )


def _skip(what: str, item: Any) -> None:
    log.debug("smsman: skipped a malformed %s entry: %.120r", what, item)


# ---------------------------------------------------------------- results


def balance(body: Any) -> Balance:
    if not isinstance(body, dict):
        raise BadShape("get-balance: expected an object")
    amount = to_decimal(body.get("balance"), signed=True)
    if amount is None:
        raise BadShape("get-balance: no usable 'balance'")
    hold = to_decimal(body.get("hold"), signed=True)
    return Balance(balance=amount, hold=hold)


def _catalogue(data: Any, what: str, make: Callable[[int, str, str | None], T]) -> list[T]:
    result: list[T] = []
    for key, item in _items(data, what):
        if not isinstance(item, dict):
            _skip(what, item)
            continue
        raw_id = item.get("id")
        ident = to_id(raw_id if raw_id is not None else key)
        title = _text(item.get("title")) or _text(item.get("name"))
        if ident is None or title is None:
            _skip(what, item)
            continue
        result.append(make(ident, title, _code(item.get("code"))))
    return result


def countries(data: Any) -> list[Country]:
    return _catalogue(data, "countries", Country)


def applications(data: Any) -> list[Application]:
    return _catalogue(data, "applications", Application)


def _is_price(node: Any) -> bool:
    return isinstance(node, dict) and "cost" in node


def prices(data: Any, country_id: int | None = None) -> list[Price]:
    result: list[Price] = []
    for keys, entry in _entries(data, _is_price, "get-prices"):
        cid, aid = _pair_ids(entry, keys, country_id, None)
        cost = to_decimal(entry.get("cost"))
        count = to_int(entry.get("count"))
        if cid is None or aid is None or cost is None or count is None:
            _skip("get-prices", entry)
            continue
        result.append(Price(country_id=cid, application_id=aid, cost=cost, count=max(count, 0)))
    return result


def _is_limit(node: Any) -> bool:
    if isinstance(node, dict):
        return "numbers" in node
    return not isinstance(node, list)  # a bare count under its keys: {"1": {"297": "12"}}


def limits(
    data: Any, country_id: int | None = None, application_id: int | None = None
) -> list[Limit]:
    result: list[Limit] = []
    for keys, entry in _entries(data, _is_limit, "limits"):
        cid, aid = _pair_ids(entry, keys, country_id, application_id)
        numbers = to_int(entry.get("numbers") if isinstance(entry, dict) else entry)
        if cid is None or aid is None or numbers is None:
            _skip("limits", entry)
            continue
        result.append(Limit(country_id=cid, application_id=aid, numbers=max(numbers, 0)))
    return result


def number(body: Any, country_id: int, application_id: int) -> Number:
    if not isinstance(body, dict):
        raise BadShape("get-number: expected an object")
    request_id = to_id(body.get("request_id"))
    phone = _text(body.get("number"))
    if request_id is None or phone is None:
        raise BadShape("get-number: no usable 'request_id' or 'number'")
    cid = to_id(body.get("country_id"))
    aid = to_id(body.get("application_id"))
    return Number(
        request_id=request_id,
        country_id=country_id if cid is None else cid,
        application_id=application_id if aid is None else aid,
        number=phone.lstrip("+"),
    )


def sms(body: Any, request_id: int) -> Sms:
    if not isinstance(body, dict):
        raise BadShape("get-sms: expected an object")
    code = _text(body.get("sms_code"))
    if code is not None:
        return Sms(request_id=request_id, code=code)
    if body.get("error_code") == WAIT_SMS:
        return Sms(request_id=request_id, code=None)
    raise BadShape("get-sms: neither 'sms_code' nor 'wait_sms'")


def status_ok(body: Any) -> None:
    if not isinstance(body, dict):
        raise BadShape("set-status: expected an object")
    # {"request_id": 1, "success": true}; success:false without a code is caught by error_from.
