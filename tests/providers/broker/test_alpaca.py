"""AlpacaBroker on the real outbound client, with Alpaca faked at the HTTP boundary (httpx.MockTransport, or a
closed loopback port for a refused connection): the requests sent, the answers parsed, and the outcome
classification every failure falls into (definitive answer / rejected / nothing sent / unknown)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest

from app.core.http import CircuitOpenError, Outbound, UpstreamConnectError, UpstreamError
from app.providers.broker import (
    AlpacaBroker,
    BrokerOrderStatus,
    BrokerOutcomeUnknown,
    BrokerProvider,
    BrokerRejected,
    OrderRequest,
    OrderSide,
    OrderType,
    TimeInForce,
    build_broker,
)
from app.providers.broker.alpaca import PROVIDER, STATUS_FROM_FILL, STATUS_MAP
from tests.support.settings import make_settings

DATABASE_URL = "postgresql://u@127.0.0.1/d"  # never connected to: these tests need no database
BASE_URL = "https://broker.test"
TOKEN = "user-1-oauth-token"
CLIENT_ORDER_ID = "td-1f3a9c0e5b7d4e2a8c6b0d9f1e3a5c7b"
BROKER_ID = "61e69015-8549-4bfd-b9c3-01e75843f47d"
BY_CLIENT_PATH = "/v2/orders:by_client_order_id"


def order_json(**overrides: Any) -> dict[str, Any]:
    """An order as Alpaca's Trading API v2 answers it (amounts as decimal strings)."""
    body: dict[str, Any] = {
        "id": BROKER_ID,
        "client_order_id": CLIENT_ORDER_ID,
        "created_at": "2026-03-16T18:38:01.942282Z",
        "updated_at": "2026-03-16T18:38:02.123456789Z",
        "submitted_at": "2026-03-16T18:38:01.937734Z",
        "filled_at": None,
        "expired_at": None,
        "canceled_at": None,
        "failed_at": None,
        "replaced_at": None,
        "replaced_by": None,
        "replaces": None,
        "asset_id": "b0b6dd9d-8b9b-48a9-ba46-b9d54906e415",
        "symbol": "AAPL",
        "asset_class": "us_equity",
        "notional": None,
        "qty": "10",
        "filled_qty": "0",
        "filled_avg_price": None,
        "order_class": "",
        "order_type": "limit",
        "type": "limit",
        "side": "buy",
        "time_in_force": "day",
        "limit_price": "101.25",
        "stop_price": None,
        "status": "accepted",
        "extended_hours": False,
        "legs": None,
    }
    body.update(overrides)
    return body


def request(**overrides: Any) -> OrderRequest:
    values: dict[str, Any] = {
        "symbol": "AAPL",
        "qty": Decimal("10"),
        "side": OrderSide.BUY,
        "type": OrderType.LIMIT,
        "time_in_force": TimeInForce.DAY,
        "client_order_id": CLIENT_ORDER_ID,
        "limit_price": Decimal("101.25"),
    }
    values.update(overrides)
    return OrderRequest(**values)


def alpaca_error(status: int, code: int, message: str) -> httpx.Response:
    return httpx.Response(status, json={"code": code, "message": message})


Answer = httpx.Response | Exception | Callable[[httpx.Request], Any]


class FakeAlpaca:
    """A MockTransport handler: scripted answers per (method, path), the last one repeating; records requests."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[Answer]] = {}
        self.requests: list[httpx.Request] = []

    def on(self, method: str, path: str, *answers: Answer) -> FakeAlpaca:
        self.routes[(method, path)] = list(answers)
        return self

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        script = self.routes.get((request.method, request.url.path))
        if not script:
            return httpx.Response(599, text="unscripted request")
        answer = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer) and not isinstance(answer, httpx.Response):
            answer = answer(request)
            if asyncio.iscoroutine(answer):
                answer = await answer
        assert isinstance(answer, httpx.Response)
        return answer

    def calls(self, method: str, path: str | None = None) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and (path is None or r.url.path == path)]


BrokerFactory = Callable[..., AlpacaBroker]


@pytest.fixture
async def make_broker() -> AsyncIterator[BrokerFactory]:
    """AlpacaBroker exactly as the app builds it (build_broker over Outbound), with the fake as transport."""
    outbounds: list[Outbound] = []

    def factory(fake: FakeAlpaca | None = None, **overrides: Any) -> AlpacaBroker:
        values: dict[str, Any] = {
            "broker_provider": "alpaca",
            "alpaca_api_base_url": BASE_URL,
            "broker_timeout_seconds": 2.0,
            "breaker_fail_max": 5,
        }
        values.update(overrides)
        settings = make_settings(DATABASE_URL, **values)
        transports = {PROVIDER: httpx.MockTransport(fake)} if fake is not None else None
        outbound = Outbound(settings, transports=transports)
        outbounds.append(outbound)
        broker = build_broker(settings, outbound)
        assert isinstance(broker, AlpacaBroker)
        return broker

    yield factory
    for outbound in outbounds:
        await outbound.aclose()


# --------------------------------------------------------------------------- construction
async def test_build_broker_picks_alpaca_with_the_broker_deadline_and_paper_needs_its_database() -> None:
    settings = make_settings(
        DATABASE_URL,
        broker_provider="alpaca",
        alpaca_api_base_url=BASE_URL,
        broker_timeout_seconds=3.5,
        http_timeout_seconds=9,
    )
    fake = FakeAlpaca().on("GET", f"/v2/orders/{BROKER_ID}", alpaca_error(404, 40410000, "order not found"))
    outbound = Outbound(settings, transports={PROVIDER: httpx.MockTransport(fake)})
    try:
        broker = build_broker(settings, outbound)
        assert isinstance(broker, AlpacaBroker) and isinstance(broker, BrokerProvider)
        client = outbound[PROVIDER]
        assert broker.client is client and client.deadline == 3.5
        await broker.get_order(access_token=TOKEN, broker_order_id=BROKER_ID)
        assert str(fake.requests[0].url) == f"{BASE_URL}/v2/orders/{BROKER_ID}"
    finally:
        await outbound.aclose()
    paper = make_settings(DATABASE_URL, broker_provider="paper")
    outbound = Outbound(paper)
    with pytest.raises(ValueError):  # the paper broker needs the database and market data (test_paper.py)
        build_broker(paper, outbound)
    assert outbound.clients == {}


@pytest.mark.parametrize(
    "overrides, error",
    [
        ({"qty": 10.0}, TypeError),
        ({"qty": Decimal("0")}, ValueError),
        ({"qty": Decimal("NaN")}, ValueError),
        ({"client_order_id": "x" * 49}, ValueError),
        ({"client_order_id": ""}, ValueError),
        ({"limit_price": None}, TypeError),
        ({"type": OrderType.MARKET}, ValueError),  # a market order with a limit price
        ({"symbol": ""}, ValueError),
    ],
)
def test_order_request_refuses_what_alpaca_would_refuse(
    overrides: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        request(**overrides)


# --------------------------------------------------------------------------- submit
async def test_submit_sends_one_post_with_decimal_strings_bearer_token_and_client_order_id(
    make_broker: BrokerFactory,
) -> None:
    fake = FakeAlpaca().on("POST", "/v2/orders", httpx.Response(200, json=order_json()))
    broker = make_broker(fake)
    placed = await broker.submit_order(access_token=TOKEN, order=request(qty=Decimal("1E+1")))
    assert len(fake.requests) == 1
    sent = fake.requests[0]
    assert sent.method == "POST" and str(sent.url) == f"{BASE_URL}/v2/orders"
    assert sent.headers["authorization"] == f"Bearer {TOKEN}"
    assert sent.headers["content-type"] == "application/json"
    assert json.loads(sent.content) == {
        "symbol": "AAPL",
        "qty": "10",
        "side": "buy",
        "type": "limit",
        "time_in_force": "day",
        "limit_price": "101.25",
        "client_order_id": CLIENT_ORDER_ID,
    }
    assert placed.broker_order_id == BROKER_ID and placed.client_order_id == CLIENT_ORDER_ID
    assert placed.status is BrokerOrderStatus.ACCEPTED and placed.raw_status == "accepted"


async def test_a_market_order_sends_no_limit_price_and_fractional_qty_as_a_string(
    make_broker: BrokerFactory,
) -> None:
    fake = FakeAlpaca().on(
        "POST",
        "/v2/orders",
        httpx.Response(
            200,
            json=order_json(
                qty="0.5",
                type="market",
                order_type="market",
                limit_price=None,
                time_in_force="gtc",
                side="sell",
            ),
        ),
    )
    broker = make_broker(fake)
    placed = await broker.submit_order(
        access_token=TOKEN,
        order=request(
            qty=Decimal("0.5"),
            type=OrderType.MARKET,
            limit_price=None,
            time_in_force=TimeInForce.GTC,
            side=OrderSide.SELL,
        ),
    )
    body = json.loads(fake.requests[0].content)
    assert body["qty"] == "0.5" and "limit_price" not in body and body["side"] == "sell"
    assert placed.qty == Decimal("0.5") and placed.limit_price is None and placed.type is OrderType.MARKET


async def test_each_call_carries_its_own_users_token(make_broker: BrokerFactory) -> None:
    fake = FakeAlpaca().on("GET", BY_CLIENT_PATH, httpx.Response(200, json=order_json()))
    broker = make_broker(fake)
    await broker.get_order_by_client_order_id(access_token="token-a", client_order_id=CLIENT_ORDER_ID)
    await broker.get_order_by_client_order_id(access_token="token-b", client_order_id=CLIENT_ORDER_ID)
    assert [r.headers["authorization"] for r in fake.requests] == ["Bearer token-a", "Bearer token-b"]


async def test_a_filled_order_is_parsed_to_decimals_and_utc_times(make_broker: BrokerFactory) -> None:
    fake = FakeAlpaca().on(
        "POST",
        "/v2/orders",
        httpx.Response(
            200,
            json=order_json(
                status="filled",
                filled_qty="10",
                filled_avg_price="101.2345",
                filled_at="2026-03-16T18:38:03Z",
            ),
        ),
    )
    placed = await make_broker(fake).submit_order(access_token=TOKEN, order=request())
    assert placed.status is BrokerOrderStatus.FILLED and placed.status.is_terminal
    for value, expected in (
        (placed.qty, "10"),
        (placed.filled_qty, "10"),
        (placed.filled_avg_price, "101.2345"),
        (placed.limit_price, "101.25"),
    ):
        assert isinstance(value, Decimal) and value == Decimal(expected)
    assert placed.symbol == "AAPL" and placed.side is OrderSide.BUY and placed.type is OrderType.LIMIT
    assert placed.time_in_force is TimeInForce.DAY
    assert placed.created_at == dt.datetime(2026, 3, 16, 18, 38, 1, 942282, tzinfo=dt.UTC)
    assert placed.submitted_at == dt.datetime(2026, 3, 16, 18, 38, 1, 937734, tzinfo=dt.UTC)
    assert placed.updated_at is not None and placed.updated_at.tzinfo is not None


async def test_duplicate_client_order_id_adopts_the_existing_order(make_broker: BrokerFactory) -> None:
    fake = (
        FakeAlpaca()
        .on("POST", "/v2/orders", alpaca_error(422, 40010001, "client_order_id must be unique"))
        .on("GET", BY_CLIENT_PATH, httpx.Response(200, json=order_json(status="new")))
    )
    placed = await make_broker(fake).submit_order(access_token=TOKEN, order=request())
    assert len(fake.calls("POST")) == 1 and len(fake.calls("GET")) == 1
    lookup = fake.calls("GET")[0]
    assert lookup.url.params["client_order_id"] == CLIENT_ORDER_ID
    assert lookup.headers["authorization"] == f"Bearer {TOKEN}"
    assert placed.broker_order_id == BROKER_ID and placed.status is BrokerOrderStatus.NEW


async def test_duplicate_id_used_by_a_different_order_is_rejected_not_adopted(
    make_broker: BrokerFactory,
) -> None:
    fake = (
        FakeAlpaca()
        .on("POST", "/v2/orders", alpaca_error(422, 40010001, "client_order_id must be unique"))
        .on("GET", BY_CLIENT_PATH, httpx.Response(200, json=order_json(symbol="MSFT")))
    )
    with pytest.raises(BrokerRejected) as caught:
        await make_broker(fake).submit_order(access_token=TOKEN, order=request())
    assert "different order" in caught.value.reason


@pytest.mark.parametrize(
    "lookup",
    [
        alpaca_error(404, 40410000, "order not found"),
        httpx.Response(500, json={"message": "internal"}),
        httpx.ConnectError("refused"),  # even a lookup that never left: the order itself exists
    ],
)
async def test_duplicate_whose_lookup_fails_is_unknown(make_broker: BrokerFactory, lookup: Answer) -> None:
    fake = (
        FakeAlpaca()
        .on("POST", "/v2/orders", alpaca_error(422, 40010001, "client_order_id must be unique"))
        .on("GET", BY_CLIENT_PATH, lookup)
    )
    with pytest.raises(BrokerOutcomeUnknown):
        await make_broker(fake).submit_order(access_token=TOKEN, order=request())
    assert len(fake.calls("POST")) == 1


async def test_broker_4xx_is_rejected_with_the_brokers_reason(make_broker: BrokerFactory) -> None:
    fake = FakeAlpaca().on("POST", "/v2/orders", alpaca_error(403, 40310000, "insufficient buying power"))
    with pytest.raises(BrokerRejected) as caught:
        await make_broker(fake).submit_order(access_token=TOKEN, order=request())
    error = caught.value
    assert error.reason == "insufficient buying power" and error.status_code == 403 and error.code == 40310000
    assert (
        error.status == 422 and "insufficient buying power" in error.detail
    )  # renders as the contract's 422
    assert not isinstance(error, UpstreamError)
    assert len(fake.requests) == 1


async def test_a_422_that_is_not_a_duplicate_is_rejected_without_lookup(make_broker: BrokerFactory) -> None:
    fake = FakeAlpaca().on("POST", "/v2/orders", alpaca_error(422, 40010000, "qty must be > 0"))
    with pytest.raises(BrokerRejected) as caught:
        await make_broker(fake).submit_order(access_token=TOKEN, order=request())
    assert caught.value.reason == "qty must be > 0" and caught.value.status_code == 422
    assert fake.calls("GET") == []


async def test_timeout_after_sending_is_unknown(make_broker: BrokerFactory) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200, json=order_json())

    fake = FakeAlpaca().on("POST", "/v2/orders", slow)
    broker = make_broker(fake, broker_timeout_seconds=0.2)
    with pytest.raises(BrokerOutcomeUnknown) as caught:
        await asyncio.wait_for(broker.submit_order(access_token=TOKEN, order=request()), timeout=10)
    assert caught.value.maybe_sent is True and len(fake.requests) == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_after_sending_is_unknown_and_the_post_is_never_retried(
    make_broker: BrokerFactory, status: int
) -> None:
    fake = FakeAlpaca().on("POST", "/v2/orders", httpx.Response(status, json={"message": "upstream"}))
    with pytest.raises(BrokerOutcomeUnknown) as caught:
        await make_broker(fake).submit_order(access_token=TOKEN, order=request())
    assert str(status) in caught.value.reason
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ReadError("connection reset by peer"),
        httpx.RemoteProtocolError("server disconnected without sending a response"),
    ],
)
async def test_connection_broken_after_sending_is_unknown_and_not_retried(
    make_broker: BrokerFactory, failure: Exception
) -> None:
    fake = FakeAlpaca().on("POST", "/v2/orders", failure)
    with pytest.raises(BrokerOutcomeUnknown):
        await make_broker(fake).submit_order(access_token=TOKEN, order=request())
    assert len(fake.requests) == 1


async def test_429_on_submit_is_unknown_and_carries_retry_after(make_broker: BrokerFactory) -> None:
    fake = FakeAlpaca().on(
        "POST",
        "/v2/orders",
        httpx.Response(429, headers={"Retry-After": "30"}, json={"message": "rate limit exceeded"}),
    )
    with pytest.raises(BrokerOutcomeUnknown) as caught:
        await make_broker(fake).submit_order(access_token=TOKEN, order=request())
    assert caught.value.retry_after == 30 and len(fake.requests) == 1


async def test_unreadable_success_answer_is_unknown(make_broker: BrokerFactory) -> None:
    fake = FakeAlpaca().on("POST", "/v2/orders", httpx.Response(200, json=order_json(qty=None)))
    with pytest.raises(BrokerOutcomeUnknown):
        await make_broker(fake).submit_order(access_token=TOKEN, order=request())


async def test_connection_refused_before_sending_is_nothing_sent(make_broker: BrokerFactory) -> None:
    fake = FakeAlpaca().on("POST", "/v2/orders", httpx.ConnectError("connection refused"))
    with pytest.raises(UpstreamConnectError) as caught:
        await make_broker(fake).submit_order(access_token=TOKEN, order=request())
    assert caught.value.maybe_sent is False and not isinstance(caught.value, BrokerOutcomeUnknown)
    assert len(fake.requests) == 1


async def test_a_real_refused_port_is_nothing_sent(make_broker: BrokerFactory) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again at once: nothing listens there
    broker = make_broker(None, alpaca_api_base_url=f"http://127.0.0.1:{port}")
    with pytest.raises(UpstreamConnectError) as caught:
        await asyncio.wait_for(broker.submit_order(access_token=TOKEN, order=request()), timeout=10)
    assert caught.value.maybe_sent is False


async def test_open_breaker_answers_without_any_request(make_broker: BrokerFactory) -> None:
    fake = FakeAlpaca().on("GET", f"/v2/orders/{BROKER_ID}", httpx.Response(500, json={"message": "down"}))
    broker = make_broker(fake, breaker_fail_max=2, breaker_reset_seconds=60)
    for _ in range(2):
        with pytest.raises(BrokerOutcomeUnknown):
            await broker.get_order(access_token=TOKEN, broker_order_id=BROKER_ID)
    seen = len(fake.requests)
    assert seen == 2
    with pytest.raises(CircuitOpenError) as caught:
        await broker.submit_order(access_token=TOKEN, order=request())
    assert caught.value.maybe_sent is False and caught.value.retry_after > 0
    for call in (
        broker.get_order_by_client_order_id(access_token=TOKEN, client_order_id=CLIENT_ORDER_ID),
        broker.cancel_order(access_token=TOKEN, broker_order_id=BROKER_ID),
    ):
        with pytest.raises(CircuitOpenError):
            await call
    assert len(fake.requests) == seen


# --------------------------------------------------------------------------- lookups
async def test_lookup_by_client_order_id(make_broker: BrokerFactory) -> None:
    fake = FakeAlpaca().on(
        "GET", BY_CLIENT_PATH, httpx.Response(200, json=order_json(status="partially_filled", filled_qty="4"))
    )
    found = await make_broker(fake).get_order_by_client_order_id(
        access_token=TOKEN, client_order_id=CLIENT_ORDER_ID
    )
    sent = fake.requests[0]
    assert sent.method == "GET" and sent.url.path == BY_CLIENT_PATH
    assert dict(sent.url.params) == {"client_order_id": CLIENT_ORDER_ID}
    assert found is not None and found.status is BrokerOrderStatus.PARTIALLY_FILLED
    assert found.filled_qty == Decimal("4")


async def test_lookup_404_is_none(make_broker: BrokerFactory) -> None:
    fake = (
        FakeAlpaca()
        .on("GET", BY_CLIENT_PATH, alpaca_error(404, 40410000, "order not found"))
        .on("GET", f"/v2/orders/{BROKER_ID}", alpaca_error(404, 40410000, "order not found"))
    )
    broker = make_broker(fake)
    assert (
        await broker.get_order_by_client_order_id(access_token=TOKEN, client_order_id=CLIENT_ORDER_ID) is None
    )
    assert await broker.get_order(access_token=TOKEN, broker_order_id=BROKER_ID) is None


async def test_a_404_without_alpacas_error_body_proves_nothing(make_broker: BrokerFactory) -> None:
    fake = FakeAlpaca().on("GET", BY_CLIENT_PATH, httpx.Response(404, text="<html>Not Found</html>"))
    with pytest.raises(BrokerOutcomeUnknown):
        await make_broker(fake).get_order_by_client_order_id(
            access_token=TOKEN, client_order_id=CLIENT_ORDER_ID
        )


async def test_lookup_answering_another_order_is_unknown(make_broker: BrokerFactory) -> None:
    fake = FakeAlpaca().on(
        "GET", BY_CLIENT_PATH, httpx.Response(200, json=order_json(client_order_id="other"))
    )
    with pytest.raises(BrokerOutcomeUnknown):
        await make_broker(fake).get_order_by_client_order_id(
            access_token=TOKEN, client_order_id=CLIENT_ORDER_ID
        )


async def test_get_order_by_broker_id_and_gets_are_retried(make_broker: BrokerFactory) -> None:
    path = f"/v2/orders/{BROKER_ID}"
    fake = FakeAlpaca().on(
        "GET", path, httpx.Response(503), httpx.Response(200, json=order_json(status="new"))
    )
    found = await make_broker(fake).get_order(access_token=TOKEN, broker_order_id=BROKER_ID)
    assert found is not None and found.broker_order_id == BROKER_ID and found.status is BrokerOrderStatus.NEW
    assert [r.url.path for r in fake.requests] == [path, path]


async def test_lookup_refused_by_alpaca_is_rejected(make_broker: BrokerFactory) -> None:
    fake = FakeAlpaca().on("GET", BY_CLIENT_PATH, alpaca_error(401, 40110000, "access token revoked"))
    with pytest.raises(BrokerRejected) as caught:
        await make_broker(fake).get_order_by_client_order_id(
            access_token=TOKEN, client_order_id=CLIENT_ORDER_ID
        )
    assert caught.value.status_code == 401 and caught.value.reason == "access token revoked"


async def test_a_malformed_broker_id_is_refused_before_sending(make_broker: BrokerFactory) -> None:
    fake = FakeAlpaca()
    broker = make_broker(fake)
    for bad in ("../account", "a/b", "", "x?y=1"):
        with pytest.raises(ValueError):
            await broker.get_order(access_token=TOKEN, broker_order_id=bad)
        with pytest.raises(ValueError):
            await broker.cancel_order(access_token=TOKEN, broker_order_id=bad)
    assert fake.requests == []


# --------------------------------------------------------------------------- cancel
async def test_cancel_sends_delete_and_handles_204(make_broker: BrokerFactory) -> None:
    fake = FakeAlpaca().on("DELETE", f"/v2/orders/{BROKER_ID}", httpx.Response(204))
    assert await make_broker(fake).cancel_order(access_token=TOKEN, broker_order_id=BROKER_ID) is True
    sent = fake.requests[0]
    assert sent.method == "DELETE" and str(sent.url) == f"{BASE_URL}/v2/orders/{BROKER_ID}"
    assert sent.headers["authorization"] == f"Bearer {TOKEN}"


async def test_cancel_404_means_the_broker_knows_no_such_order(make_broker: BrokerFactory) -> None:
    fake = FakeAlpaca().on(
        "DELETE", f"/v2/orders/{BROKER_ID}", alpaca_error(404, 40410000, "order not found")
    )
    assert await make_broker(fake).cancel_order(access_token=TOKEN, broker_order_id=BROKER_ID) is False


async def test_cancel_of_a_finished_order_is_rejected(make_broker: BrokerFactory) -> None:
    fake = FakeAlpaca().on(
        "DELETE", f"/v2/orders/{BROKER_ID}", alpaca_error(422, 42210000, "order is not cancelable")
    )
    with pytest.raises(BrokerRejected) as caught:
        await make_broker(fake).cancel_order(access_token=TOKEN, broker_order_id=BROKER_ID)
    assert caught.value.reason == "order is not cancelable"


async def test_cancel_is_sent_once_and_a_5xx_is_unknown(make_broker: BrokerFactory) -> None:
    fake = FakeAlpaca().on("DELETE", f"/v2/orders/{BROKER_ID}", httpx.Response(503), httpx.Response(204))
    with pytest.raises(BrokerOutcomeUnknown):
        await make_broker(fake).cancel_order(access_token=TOKEN, broker_order_id=BROKER_ID)
    assert len(fake.requests) == 1


# --------------------------------------------------------------------------- status mapping
S = BrokerOrderStatus
EXPECTED_STATUS: list[tuple[str, str, BrokerOrderStatus]] = [
    ("accepted", "0", S.ACCEPTED),
    ("pending_new", "0", S.ACCEPTED),
    ("accepted_for_bidding", "0", S.ACCEPTED),
    ("pending_review", "0", S.ACCEPTED),
    ("held", "0", S.ACCEPTED),
    ("new", "0", S.NEW),
    ("partially_filled", "4", S.PARTIALLY_FILLED),
    ("filled", "10", S.FILLED),
    ("pending_cancel", "0", S.PENDING_CANCEL),
    ("canceled", "0", S.CANCELED),
    ("canceled", "4", S.CANCELED),
    ("expired", "0", S.EXPIRED),
    ("rejected", "0", S.REJECTED),
    ("replaced", "0", S.REPLACED),
    ("done_for_day", "0", S.NEW),
    ("done_for_day", "4", S.PARTIALLY_FILLED),
    ("calculated", "4", S.PARTIALLY_FILLED),
    ("calculated", "10", S.FILLED),
    ("stopped", "0", S.NEW),
    ("suspended", "0", S.NEW),
    ("pending_replace", "4", S.PARTIALLY_FILLED),
]


def test_every_listed_alpaca_status_is_covered() -> None:
    assert {raw for raw, _, _ in EXPECTED_STATUS} == set(STATUS_MAP) | STATUS_FROM_FILL
    assert len(STATUS_MAP) + len(STATUS_FROM_FILL) == 18  # alpaca-py's OrderStatus has 18 members


@pytest.mark.parametrize("raw, filled, expected", EXPECTED_STATUS)
async def test_status_mapping(
    make_broker: BrokerFactory, raw: str, filled: str, expected: BrokerOrderStatus
) -> None:
    fake = FakeAlpaca().on(
        "GET", f"/v2/orders/{BROKER_ID}", httpx.Response(200, json=order_json(status=raw, filled_qty=filled))
    )
    found = await make_broker(fake).get_order(access_token=TOKEN, broker_order_id=BROKER_ID)
    assert found is not None and found.status is expected and found.raw_status == raw


async def test_an_unknown_status_is_read_from_the_fill_and_logged(
    make_broker: BrokerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeAlpaca().on(
        "GET",
        f"/v2/orders/{BROKER_ID}",
        httpx.Response(200, json=order_json(status="frozen_by_regulator", filled_qty="0")),
    )
    with caplog.at_level(logging.WARNING, logger="tradedesk.broker"):
        found = await make_broker(fake).get_order(access_token=TOKEN, broker_order_id=BROKER_ID)
    assert found is not None and found.status is S.NEW and not found.status.is_terminal
    assert found.raw_status == "frozen_by_regulator"
    assert any("unknown Alpaca order status" in r.getMessage() for r in caplog.records)
