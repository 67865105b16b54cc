"""SmsManClient over real HTTP against FakeSmsMan: shapes, errors, faults, limits, secrecy."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import yarl
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.smsman import (
    Application,
    Balance,
    Country,
    InsufficientBalance,
    Limit,
    NoNumbers,
    Number,
    Price,
    ProviderUnavailable,
    RequestGone,
    Sms,
    SmsManClient,
    SmsManError,
    Status,
    WrongStatus,
    WrongToken,
    _parse,
)
from bot.smsman._limiter import CallGate
from sandbox.smsman import FakeSmsMan

TOKEN = "smsman-test-token"
TIMEOUT = 0.3
TRANSPORT_FAULTS = ["http500", "html", "malformed", "hang", "reset"]


@pytest.fixture
async def fake() -> AsyncIterator[FakeSmsMan]:
    async with FakeSmsMan(token=TOKEN, seed=1) as server:
        server.default_catalogue()
        yield server


@pytest.fixture
async def make_client(fake: FakeSmsMan) -> AsyncIterator[Callable[..., SmsManClient]]:
    clients: list[SmsManClient] = []

    def make(**options: Any) -> SmsManClient:
        base_url = options.pop("base_url", fake.url)
        token = options.pop("token", TOKEN)
        defaults: dict[str, Any] = {
            "timeout": TIMEOUT,
            "retries": 2,
            "backoff": 0.01,
            "max_rps": 1000,
        }
        client = SmsManClient(base_url, token, **{**defaults, **options})
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
def client(make_client: Callable[..., SmsManClient]) -> SmsManClient:
    return make_client()


# ---------------------------------------------------------------- reads and shapes


async def test_balance(client: SmsManClient, fake: FakeSmsMan) -> None:
    fake.balance = Decimal("799.7")
    balance = await client.get_balance()
    assert balance == Balance(balance=Decimal("799.70"), hold=Decimal("0.00"))
    assert isinstance(balance.balance, Decimal)
    assert fake.calls_to("get-balance")[0].params["token"] == TOKEN
    assert client.calls_made == 1


async def test_balance_as_json_number_is_decimal_not_float(
    client: SmsManClient, fake: FakeSmsMan
) -> None:
    fake.override("get-balance", '{"balance": 0.1, "hold": 7}')
    balance = await client.get_balance()
    assert balance.balance == Decimal("0.1")  # exact: a float would be 0.1000000000000000055...
    assert type(balance.balance) is Decimal
    assert balance.hold == Decimal(7)


async def test_countries_object_shape(client: SmsManClient) -> None:
    assert await client.countries() == [
        Country(1, "Russia", "RU"),
        Country(8, "Philippines", "PH"),
        Country(14, "India", "IN"),
        Country(100, "United Kingdom", "GB"),
    ]


async def test_countries_list_shape_with_int_ids(client: SmsManClient, fake: FakeSmsMan) -> None:
    fake.catalogue_as_list = True
    countries = await client.countries()
    assert countries[0] == Country(1, "Russia", "RU")
    assert len(countries) == 4


async def test_catalogue_name_fallback_codes_and_malformed_entries(
    client: SmsManClient, fake: FakeSmsMan
) -> None:
    fake.override(
        "countries",
        {
            "0": {"id": "0", "name": "Russia", "code": "ru"},
            "8": {"title": "Philippines"},  # id from the key, no code
            "9": {"id": 9, "title": "Nowhere", "code": ""},
            "x": {"title": "bad id"},
            "10": {"id": "10"},  # no title
            "11": "not an object",
        },
    )
    assert await client.countries() == [
        Country(0, "Russia", "RU"),
        Country(8, "Philippines", None),
        Country(9, "Nowhere", None),
    ]
    fake.override("applications", [{"id": 0, "name": "Any"}, {"id": "297", "title": "Apple"}])
    assert await client.applications() == [
        Application(0, "Any", None),
        Application(297, "Apple", None),
    ]


async def test_applications_object_shape(client: SmsManClient) -> None:
    applications = await client.applications()
    assert Application(297, "Apple", "WX") in applications
    assert [a.id for a in applications] == [1, 2, 297]


async def test_prices_nested_when_unfiltered(client: SmsManClient) -> None:
    prices = await client.prices()
    assert len(prices) == 12
    assert Price(country_id=8, application_id=297, cost=Decimal("9.75"), count=736) in prices
    assert all(type(p.cost) is Decimal and type(p.count) is int for p in prices)


async def test_prices_flat_when_filtered(client: SmsManClient, fake: FakeSmsMan) -> None:
    prices = await client.prices(8)
    assert {p.application_id for p in prices} == {1, 2, 297}
    assert {p.country_id for p in prices} == {8}
    assert fake.calls_to("get-prices")[-1].params["country_id"] == "8"


async def test_prices_empty_list(client: SmsManClient, fake: FakeSmsMan) -> None:
    assert await client.prices(999) == []
    fake.prices.clear()
    assert await client.prices() == []


async def test_prices_odd_entries(client: SmsManClient, fake: FakeSmsMan) -> None:
    fake.override(
        "get-prices",
        '{"297": {"cost": 12.5, "count": "431"},'  # number cost, string count, ids from keys
        ' "1": {"cost": "abc", "count": 1},'  # malformed: skipped
        ' "2": {"cost": "3.10"},'  # no count: skipped
        ' "3": {"cost": "1.00", "count": 2, "country_id": 7, "application_id": "3"}}',
    )
    assert await client.prices(8) == [
        Price(8, 297, Decimal("12.5"), 431),
        Price(7, 3, Decimal("1.00"), 2),
    ]


async def test_prices_unexpected_shape_is_unavailable(
    client: SmsManClient, fake: FakeSmsMan
) -> None:
    fake.override("get-prices", '"nothing"')
    with pytest.raises(ProviderUnavailable) as caught:
        await client.prices()
    assert caught.value.code == "bad_shape"


async def test_limits_nested_flat_and_list(client: SmsManClient, fake: FakeSmsMan) -> None:
    nested = await client.limits()
    assert len(nested) == 12 and Limit(8, 297, 736) in nested
    flat = await client.limits(country_id=8)
    assert {(x.country_id, x.application_id) for x in flat} == {(8, 1), (8, 2), (8, 297)}
    assert await client.limits(8, 297) == [Limit(8, 297, 736)]
    fake.limits_as_list = True
    assert len(await client.limits()) == 12
    assert await client.limits(application_id=297, country_id=1) == [Limit(1, 297, 729)]
    params = fake.calls_to("limits")[-1].params
    assert params["country_id"] == "1" and params["application_id"] == "297"


async def test_limits_doc_list_and_bare_numbers(client: SmsManClient, fake: FakeSmsMan) -> None:
    fake.override("limits", [{"application_id": "1", "country_id": "1", "numbers": "32302"}])
    assert await client.limits() == [Limit(1, 1, 32302)]
    fake.override("limits", {"297": "12", "1": 3})  # flat, numbers only, country filtered
    assert await client.limits(country_id=8) == [Limit(8, 297, 12), Limit(8, 1, 3)]
    fake.override("limits", {"8": 5})  # flat by country when only the service is filtered
    assert await client.limits(application_id=297) == [Limit(8, 297, 5)]
    fake.override("limits", {"8": {"297": {"numbers": 4}}})  # nested without ids in entries
    assert await client.limits() == [Limit(8, 297, 4)]


# ---------------------------------------------------------------- activations


async def test_get_number_is_one_post_with_exact_params(
    client: SmsManClient, fake: FakeSmsMan
) -> None:
    number = await client.get_number(
        8, 297, max_price=Decimal("1.05E+1"), currency="usd", multiple_sms=True, ref="abc"
    )
    assert isinstance(number, Number)
    assert (number.country_id, number.application_id) == (8, 297)
    assert number.number.startswith("63") and number.number.isdigit()
    [call] = fake.calls_to("get-number")
    assert call.http_method == "POST"
    assert call.params == {
        "token": TOKEN,
        "country_id": "8",
        "application_id": "297",
        "hasMultipleSms": "true",
        "maxPrice": "10.5",
        "currency": "USD",
        "ref": "abc",
    }
    assert fake.balance == Decimal("100.00") - Decimal("9.75")
    assert fake.requests[number.request_id].multiple


async def test_get_number_defaults(client: SmsManClient, fake: FakeSmsMan) -> None:
    await client.get_number(1, 1)
    [call] = fake.calls_to("get-number")
    assert call.params["hasMultipleSms"] == "false"
    assert "maxPrice" not in call.params and "currency" not in call.params


async def test_get_number_rejects_bad_arguments_without_calling(
    client: SmsManClient, fake: FakeSmsMan
) -> None:
    with pytest.raises(ValueError):
        await client.get_number(8, 297, max_price=12.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await client.get_number(8, 297, currency="GBP")
    with pytest.raises(ValueError):
        await client.get_number(-1, 297)
    assert fake.calls == []


async def test_get_number_business_errors(client: SmsManClient, fake: FakeSmsMan) -> None:
    fake.out_of_stock.add((8, 297))
    with pytest.raises(NoNumbers):
        await client.get_number(8, 297)
    with pytest.raises(NoNumbers):  # maxPrice below the cost: SMS-Man says no_numbers
        await client.get_number(1, 1, max_price=Decimal("24.99"))
    fake.balance = Decimal("5")
    with pytest.raises(InsufficientBalance) as caught:
        await client.get_number(1, 1)
    assert caught.value.code == "balance"
    assert "charge your balance" in caught.value.message
    assert fake.balance == Decimal("5") and fake.requests == {}
    assert len(fake.calls_to("get-number")) == 3  # business errors are never retried


async def test_rate_limited_get_number_is_no_numbers(
    client: SmsManClient, fake: FakeSmsMan
) -> None:
    fake.fail_next("get-number", "rate_limit")
    with pytest.raises(NoNumbers):
        await client.get_number(8, 297)
    assert len(fake.calls_to("get-number")) == 1


async def test_get_sms_waiting_then_code(client: SmsManClient, fake: FakeSmsMan) -> None:
    number = await client.get_number(8, 297)
    assert await client.get_sms(number.request_id) == Sms(number.request_id, None)
    fake.deliver_code(number.request_id, "974210")
    assert await client.get_sms(number.request_id) == Sms(number.request_id, "974210")


async def test_code_policies(client: SmsManClient, fake: FakeSmsMan) -> None:
    fake.code_after = 0
    now = await client.get_number(8, 297)
    assert (await client.get_sms(now.request_id)).code is not None
    fake.code_after = None
    later = await client.get_number(8, 297)
    fake.schedule_code(later.request_id, 0.05, "000123")
    assert (await client.get_sms(later.request_id)).code is None
    await asyncio.sleep(0.06)
    assert (await client.get_sms(later.request_id)).code == "000123"


async def test_multiple_sms_with_retrysms(client: SmsManClient, fake: FakeSmsMan) -> None:
    fake.code_after = 0
    number = await client.get_number(8, 297, multiple_sms=True)
    first = (await client.get_sms(number.request_id)).code
    await client.set_status(number.request_id, Status.RETRY_SMS)
    second = (await client.get_sms(number.request_id)).code
    assert first and second and len(fake.requests[number.request_id].codes) == 2
    await client.set_status(number.request_id, Status.CLOSE)
    assert fake.requests[number.request_id].status == "closed"
    [*_, call] = fake.calls_to("set-status")
    assert call.http_method == "POST" and call.params["status"] == "close"


async def test_writes_are_posts_with_the_parameters_in_the_query_and_no_body(
    client: SmsManClient, fake: FakeSmsMan
) -> None:
    """The only evidence that POST works puts the parameters in the query string."""
    number = await client.get_number(8, 297, max_price=Decimal("10"), currency="RUB")
    await client.set_status(number.request_id, Status.REJECT)
    [buy] = fake.calls_to("get-number")
    [reject] = fake.calls_to("set-status")
    for call in (buy, reject):
        assert call.http_method == "POST"
        assert call.form == {}, "a form body was sent"
        assert call.params["token"] == TOKEN
    assert buy.params["maxPrice"] == "10" and buy.params["currency"] == "RUB"
    assert reject.params == {
        "token": TOKEN,
        "request_id": str(number.request_id),
        "status": "reject",
    }
    assert fake.requests[number.request_id].status == "rejected"


async def test_retrysms_without_multiple_is_wrong_status(
    client: SmsManClient, fake: FakeSmsMan
) -> None:
    number = await client.get_number(8, 297)
    fake.deliver_code(number.request_id)
    with pytest.raises(WrongStatus):
        await client.set_status(number.request_id, Status.RETRY_SMS)


async def test_reject_refunds_and_then_request_is_gone(
    client: SmsManClient, fake: FakeSmsMan
) -> None:
    number = await client.get_number(8, 297)
    await client.set_status(number.request_id, Status.REJECT)
    assert fake.balance == Decimal("100.00")
    with pytest.raises(RequestGone):
        await client.get_sms(number.request_id)
    with pytest.raises(RequestGone):
        await client.set_status(number.request_id, Status.REJECT)


async def test_reject_after_code_is_wrong_status(client: SmsManClient, fake: FakeSmsMan) -> None:
    number = await client.get_number(8, 297)
    fake.deliver_code(number.request_id)
    with pytest.raises(WrongStatus) as caught:
        await client.set_status(number.request_id, Status.REJECT)
    assert caught.value.code == "wrong_status"
    assert fake.balance == Decimal("90.25")  # charged: a code came


async def test_expired_and_unknown_requests_are_gone(
    client: SmsManClient, fake: FakeSmsMan
) -> None:
    fake.lifetime = 0.05
    number = await client.get_number(8, 297)
    await asyncio.sleep(0.06)
    with pytest.raises(RequestGone):
        await client.get_sms(number.request_id)
    assert fake.balance == Decimal("100.00")  # expired without a code: refunded
    with pytest.raises(RequestGone):
        await client.get_sms(12345)
    with pytest.raises(RequestGone):
        await client.set_status(12345, Status.CLOSE)
    assert len(fake.calls_to("get-sms")) == 2  # not retried


@pytest.mark.parametrize("code", ["wrong_request_id", "no_activation", "error"])
async def test_request_gone_whatever_the_code(
    client: SmsManClient, fake: FakeSmsMan, code: str
) -> None:
    fake.override("get-sms", {"error_code": code, "error_msg": "Current request not exists"})
    with pytest.raises(RequestGone) as caught:
        await client.get_sms(1)
    assert caught.value.code == code


async def test_get_sms_unusable_answer_is_unavailable(
    client: SmsManClient, fake: FakeSmsMan
) -> None:
    fake.override("get-sms", {"request_id": 1})
    with pytest.raises(ProviderUnavailable):
        await client.get_sms(1)


async def test_get_number_without_request_id_is_unavailable_and_not_retried(
    client: SmsManClient, fake: FakeSmsMan
) -> None:
    fake.override("get-number", {"success": True})
    with pytest.raises(ProviderUnavailable):
        await client.get_number(8, 297)
    assert len(fake.calls_to("get-number")) == 1


# ---------------------------------------------------------------- business errors


@pytest.mark.parametrize("as_text", [False, True])
async def test_wrong_token_in_both_forms(
    make_client: Callable[..., SmsManClient], fake: FakeSmsMan, as_text: bool
) -> None:
    fake.wrong_token_as_text = as_text
    client = make_client(token="not-the-token")
    with pytest.raises(WrongToken) as caught:
        await client.get_balance()
    assert caught.value.code == "wrong_token"
    assert caught.value.message == ("Wrong token!" if as_text else "token: Wrong token!")
    with pytest.raises(WrongToken):
        await client.get_number(8, 297)
    assert client.calls_made == 2  # not retried
    assert fake.requests == {}


async def test_unknown_error_code_kept_raw(client: SmsManClient, fake: FakeSmsMan) -> None:
    fake.override("get-balance", {"error_code": "strange_thing", "error_msg": ["Boom", "again"]})
    with pytest.raises(SmsManError) as caught:
        await client.get_balance()
    assert type(caught.value) is SmsManError
    assert (caught.value.code, caught.value.message) == ("strange_thing", "Boom; again")
    assert client.calls_made == 1


async def test_error_code_wins_over_http_200_and_4xx(
    client: SmsManClient, fake: FakeSmsMan
) -> None:
    fake.override("get-number", {"error_code": "no_numbers", "error_msg": "x"}, status=400)
    with pytest.raises(NoNumbers):
        await client.get_number(8, 297)
    fake.override("get-balance", {"success": False})
    with pytest.raises(SmsManError):
        await client.get_balance()
    fake.override("get-balance", {"error_code": "wait_sms", "error_msg": "Still waiting..."})
    with pytest.raises(SmsManError):  # wait_sms is only normal for get-sms
        await client.get_balance()


async def test_non_json_4xx_is_unavailable(client: SmsManClient, fake: FakeSmsMan) -> None:
    fake.override("get-balance", "Too Many Requests", status=429, content_type="text/plain")
    with pytest.raises(ProviderUnavailable) as caught:
        await client.get_balance()
    assert caught.value.code == "http_429"


# ---------------------------------------------------------------- transport faults


@pytest.mark.parametrize("kind", TRANSPORT_FAULTS)
async def test_read_fault_is_unavailable(
    make_client: Callable[..., SmsManClient], fake: FakeSmsMan, kind: str
) -> None:
    client = make_client(retries=0)
    fake.fail_next("get-balance", kind, times=2)  # 2: aiohttp itself re-sends a reset GET once
    with pytest.raises(ProviderUnavailable) as caught:
        await client.get_balance()
    expected = {"http500": "http_500", "hang": "timeout", "reset": "connection"}
    assert caught.value.code == expected.get(kind, kind)
    assert client.calls_made == 1


@pytest.mark.parametrize("kind", ["http500", "html", "malformed", "reset"])
async def test_read_retried_after_transient_fault(
    client: SmsManClient, fake: FakeSmsMan, kind: str
) -> None:
    fake.fail_next("get-prices", kind, times=2)
    assert len(await client.prices(8)) == 3
    assert len(fake.calls_to("get-prices")) == 3


async def test_read_retried_after_timeout(client: SmsManClient, fake: FakeSmsMan) -> None:
    fake.fail_next("get-sms", "hang")
    number = await client.get_number(8, 297)
    assert (await client.get_sms(number.request_id)).code is None
    assert client.calls_made == 3


async def test_reads_give_up_after_retries(
    make_client: Callable[..., SmsManClient], fake: FakeSmsMan
) -> None:
    client = make_client(retries=3)
    fake.fail_next("countries", "http500", times=10)
    with pytest.raises(ProviderUnavailable):
        await client.countries()
    assert len(fake.calls_to("countries")) == 4


@pytest.mark.parametrize("kind", TRANSPORT_FAULTS)
@pytest.mark.parametrize("after_effect", [False, True])
async def test_get_number_fault_is_sent_once(
    client: SmsManClient, fake: FakeSmsMan, kind: str, after_effect: bool
) -> None:
    fake.fail_next("get-number", kind, times=3, after_effect=after_effect)
    with pytest.raises(ProviderUnavailable):
        await client.get_number(8, 297)
    calls = fake.calls_to("get-number")
    assert len(calls) == 1 and calls[0].http_method == "POST"
    assert len(fake.requests) == (1 if after_effect else 0)  # the outcome is unknown to us


@pytest.mark.parametrize("kind", TRANSPORT_FAULTS)
@pytest.mark.parametrize("after_effect", [False, True])
async def test_set_status_fault_is_sent_once(
    client: SmsManClient, fake: FakeSmsMan, kind: str, after_effect: bool
) -> None:
    number = await client.get_number(8, 297)
    fake.fail_next("set-status", kind, times=3, after_effect=after_effect)
    with pytest.raises(ProviderUnavailable):
        await client.set_status(number.request_id, Status.REJECT)
    calls = fake.calls_to("set-status")
    assert len(calls) == 1 and calls[0].http_method == "POST"
    assert fake.requests[number.request_id].status == ("rejected" if after_effect else "waiting")


async def test_connection_refused_is_unavailable(
    make_client: Callable[..., SmsManClient],
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = make_client(base_url=f"http://127.0.0.1:{port}/control", retries=1)
    with pytest.raises(ProviderUnavailable) as caught:
        await client.get_balance()
    assert caught.value.code == "connection"
    assert client.calls_made == 2


async def test_random_faults_respect_fault_methods(client: SmsManClient, fake: FakeSmsMan) -> None:
    fake.fault_rate = 1.0
    fake.fault_kinds = {"http500"}
    fake.fault_methods = {"get-sms"}
    number = await client.get_number(8, 297)
    with pytest.raises(ProviderUnavailable):
        await client.get_sms(number.request_id)
    assert fake.faults_injected["http500"] == 3


async def test_random_faults_after_the_effect(client: SmsManClient, fake: FakeSmsMan) -> None:
    fake.fault_rate = 1.0
    fake.fault_kinds = {"malformed", "rate_limit"}
    fake.fault_methods = {"get-number"}
    fake.fault_after_effect_rate = 1.0
    outcomes = []
    for _ in range(8):
        try:
            await client.get_number(8, 297)
            outcomes.append("bought")
        except NoNumbers:
            outcomes.append("rate_limited")
        except ProviderUnavailable:
            outcomes.append("lost")
    assert "bought" not in outcomes
    # a rate-limit answer never buys; a lost answer always did here
    assert len(fake.requests) == outcomes.count("lost")
    assert fake.faults_injected["malformed"] + fake.faults_injected["rate_limit"] == 8


# ---------------------------------------------------------------- limits


async def test_at_most_two_get_number_in_flight(
    make_client: Callable[..., SmsManClient], fake: FakeSmsMan
) -> None:
    client = make_client(max_concurrency=10)
    fake.latency = 0.1
    await asyncio.gather(
        *(client.get_number(8, 297) for _ in range(6)),
        *(client.get_balance() for _ in range(6)),
    )
    assert fake.peak_in_flight["get-number"] == 2
    assert fake.peak_in_flight["get-balance"] > 2


async def test_concurrency_cap(make_client: Callable[..., SmsManClient], fake: FakeSmsMan) -> None:
    client = make_client(max_concurrency=3)
    fake.latency = 0.05
    await asyncio.gather(*(client.get_balance() for _ in range(10)))
    assert fake.peak_in_flight["get-balance"] == 3


async def test_rate_cap(make_client: Callable[..., SmsManClient], fake: FakeSmsMan) -> None:
    client = make_client(max_rps=20)
    started = time.monotonic()
    await asyncio.gather(*(client.get_balance() for _ in range(11)))
    assert time.monotonic() - started >= 10 / 20 * 0.95  # 10 gaps of 50 ms at least
    times = [call.time for call in fake.calls_to("get-balance")]
    assert times[-1] - times[0] >= 10 / 20 * 0.9  # as seen by the server too


async def test_purchase_overtakes_queued_polls(
    make_client: Callable[..., SmsManClient], fake: FakeSmsMan
) -> None:
    client = make_client(max_rps=50)
    number = await client.get_number(8, 297)
    polls = [asyncio.create_task(client.get_sms(number.request_id)) for _ in range(20)]
    await asyncio.sleep(0.01)
    await client.get_number(8, 297)
    order = [call.method for call in fake.calls]
    assert order.index("get-number", 1) < 8  # not behind the 20 queued polls
    await asyncio.gather(*polls)


async def test_gate_survives_cancelled_waiters() -> None:
    gate = CallGate(max_concurrency=1, max_rps=1000)
    await gate.acquire()
    waiters = [asyncio.create_task(gate.acquire(urgent=i % 2 == 0)) for i in range(5)]
    await asyncio.sleep(0)
    for task in waiters[:4]:
        task.cancel()
    gate.release()
    await asyncio.wait_for(waiters[4], 1)
    assert gate.in_flight == 1
    gate.release()
    assert gate.in_flight == 0
    await asyncio.wait_for(gate.acquire(), 1)  # nothing leaked


async def test_cancelled_call_frees_its_slot(
    make_client: Callable[..., SmsManClient], fake: FakeSmsMan
) -> None:
    client = make_client(max_concurrency=1)
    fake.latency = 0.2
    task = asyncio.create_task(client.get_balance())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    fake.latency = 0
    assert (await asyncio.wait_for(client.get_balance(), 1)).balance == Decimal("100.00")


# ---------------------------------------------------------------- the token stays secret


async def test_token_never_in_errors_repr_or_logs(
    make_client: Callable[..., SmsManClient], caplog: pytest.LogCaptureFixture
) -> None:
    secret = "S3cr3t/t0k+en=="
    caplog.set_level(logging.DEBUG)
    raised: list[SmsManError] = []

    async def collect(call: Awaitable[Any]) -> None:
        try:
            await call
        except SmsManError as exc:
            raised.append(exc)

    async with FakeSmsMan(token=secret) as fake:
        fake.default_catalogue()
        client = make_client(base_url=fake.url, token=secret, retries=1)
        assert secret not in repr(client) and secret not in str(client)
        for kind in TRANSPORT_FAULTS:
            fake.fail_next("get-balance", kind, times=4)
            await collect(client.get_balance())
            fake.fail_next("get-number", kind)
            await collect(client.get_number(8, 297))
        fake.override("get-sms", {"error_code": "x", "error_msg": f"bad key {secret}"})
        await collect(client.get_sms(1))
        fake.override("get-balance", f"<html>{secret}</html>", content_type="text/html")
        await collect(client.get_balance())
        wrong = make_client(base_url=fake.url, token=secret + "x")
        await collect(wrong.get_balance())
        assert len(fake.calls_to("get-balance")) > 5  # the token did go to the server

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    refused = make_client(base_url=f"http://127.0.0.1:{port}/control", token=secret, retries=0)
    await collect(refused.get_balance())

    assert len(raised) == 2 * len(TRANSPORT_FAULTS) + 4
    encoded = ("S3cr3t", "t0k")
    for exc in raised:
        for text in (str(exc), repr(exc), exc.message, repr(exc.__cause__), repr(exc.__context__)):
            assert not any(part in text for part in encoded), text
    assert "smsman GET get-balance" in caplog.text
    assert not any(part in caplog.text for part in encoded)


# ---------------------------------------------------------------- lifecycle and logs


async def test_lifecycle(fake: FakeSmsMan) -> None:
    async with SmsManClient(fake.url, TOKEN, timeout=TIMEOUT) as client:
        await client.get_balance()
    await client.close()  # idempotent
    await client.get_balance()  # reopens lazily
    await client.close()
    assert client.calls_made == 2


async def test_one_debug_line_per_call(
    client: SmsManClient, fake: FakeSmsMan, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="bot.smsman")
    fake.fail_next("get-balance", "http500")
    await client.get_balance()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("smsman GET")]
    assert len(lines) == 2
    assert lines[0].endswith("ProviderUnavailable http_500") and lines[1].endswith("ok")


# ---------------------------------------------------------------- parsing never blows up

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 10**6)
    | st.decimals(allow_nan=False, allow_infinity=False, places=2)
    | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values, st.none() | st.integers(0, 5))
def test_parsers_accept_or_refuse_cleanly(data: Any, country_id: int | None) -> None:
    for parse in (
        lambda: _parse.prices(data, country_id),
        lambda: _parse.limits(data, country_id, None),
        lambda: _parse.countries(data),
        lambda: _parse.applications(data),
    ):
        try:
            result = parse()
        except _parse.BadShape:
            continue
        assert isinstance(result, list)
    for item in _parse.prices(data, country_id) if isinstance(data, dict | list) else []:
        assert item.cost >= 0 and item.count >= 0
    error = _parse.error_from(data)
    assert error is None or isinstance(error, SmsManError)
    for single in (
        lambda: _parse.balance(data),
        lambda: _parse.number(data, 8, 297),
        lambda: _parse.sms(data, 1),
    ):
        try:
            single()
        except _parse.BadShape:
            pass


@pytest.mark.parametrize(
    "secret", ["S3cr3t/t0k+en==", "a b&c=d ä", "0123456789abcdef0123456789abcdef"]
)
def test_redaction_covers_url_encodings(secret: str) -> None:
    client = SmsManClient("http://127.0.0.1:1/control", secret)
    url = yarl.URL("http://127.0.0.1:1/control/get-sms").with_query(token=secret, request_id=1)
    for text in (secret, str(url), url.human_repr(), f"x={quote(secret)}", quote_plus(secret)):
        assert client._redact(text).count("***") == 1
        assert secret not in client._redact(text)
