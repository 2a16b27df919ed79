"""Orders with BROKER_PROVIDER=alpaca, end to end: HTTP in, PostgreSQL rows and order_events, and what a fake
Alpaca (an ``httpx.MockTransport`` on the ``alpaca-trading`` outbound client, so the real timeouts, breaker
and classification run) received.

What this file proves, one outcome class each (contract §4, Orders):

* a broker slower than BROKER_TIMEOUT_SECONDS → 202 ``pending_reconciliation``, settled by the reconciler via
  ``GET /v2/orders:by_client_order_id``; the POST is sent once; a replay gets the stored 202;
* an order the broker never got → 202, still pending within RECONCILE_GRACE_SECONDS, ``rejected``
  (``not_found_after_grace``) after it, and revived (``orders_revived_total``) if the broker shows it later;
* a 5xx after sending → 202 and never a second POST; settled or rejected after grace by what the broker has;
* a connection refused before sending → 503 + Retry-After, ``rejected``/``not_sent``, and the key released:
  the same key places a new order under a new client_order_id;
* an open circuit breaker → 503 + Retry-After at once, nothing sent; after the reset a POST goes through;
* a broker 4xx → 422 with the broker's reason, replayed as stored; no linked account → 409, nothing stored
  or sent; a duplicate client_order_id → the broker's order adopted (201);
* cancel → one DELETE at the broker and the state it then reports; 404 for another user's order, 409 for a
  filled one.

Time beyond the grace period is simulated by moving ``created_at`` back in the database, and reconciler
passes are driven with ``app.state.reconciler.run_once()`` (the background loop runs hourly here).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest

from app.core.http import BreakerState
from tests.orders.helpers import events, link_alpaca, make_due, market, new_key, order_row, order_rows, trader
from tests.support.metrics import grew, sample, scrape
from tests.support.problems import assert_problem
from tests.support.timing import collector_paused

pytestmark = pytest.mark.asyncio

BASE_URL = "https://broker.test"
PROVIDER = "alpaca-trading"
ORDERS_PATH = "/v2/orders"
BY_CLIENT_PATH = "/v2/orders:by_client_order_id"
TIMEOUT = 0.3  # BROKER_TIMEOUT_SECONDS for these apps
SLOW = 2.0  # how long a "slow" fake broker takes: well past TIMEOUT (the call is cut off at TIMEOUT)
FILL_PRICE = "187.25"
_TERMINAL = {"filled", "canceled", "expired", "rejected", "replaced"}


def alpaca_error(status: int, code: int, message: str) -> httpx.Response:
    return httpx.Response(status, json={"code": code, "message": message})


def not_found() -> httpx.Response:
    return alpaca_error(404, 40410000, "order not found")


PostBehaviour = Callable[["FakeAlpaca", dict[str, Any]], Awaitable[httpx.Response]]


class FakeAlpaca:
    """A small stateful Alpaca Trading API v2: orders it *has* (by client_order_id), lookups by client id
    and by id, cancel; what ``POST /v2/orders`` does is the test's ``on_post`` behaviour. Every request that
    reached the transport is recorded."""

    def __init__(self, on_post: PostBehaviour | None = None) -> None:
        self.orders: dict[str, dict[str, Any]] = {}
        self.requests: list[httpx.Request] = []
        self.on_post: PostBehaviour = on_post or accept("accepted")
        self.cancel_to = "canceled"

    def keep(self, body: dict[str, Any], status: str) -> dict[str, Any]:
        """The broker now has this order (as Alpaca shows it), under the body's client_order_id."""
        now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
        filled = status == "filled"
        order = {
            "id": str(uuid.uuid4()),
            "client_order_id": body["client_order_id"],
            "created_at": now,
            "updated_at": now,
            "submitted_at": now,
            "filled_at": now if filled else None,
            "canceled_at": None,
            "asset_class": "us_equity",
            "symbol": body["symbol"],
            "qty": body["qty"],
            "filled_qty": body["qty"] if filled else "0",
            "filled_avg_price": FILL_PRICE if filled else None,
            "order_class": "",
            "order_type": body["type"],
            "type": body["type"],
            "side": body["side"],
            "time_in_force": body["time_in_force"],
            "limit_price": body.get("limit_price"),
            "stop_price": None,
            "status": status,
            "extended_hours": False,
            "legs": None,
        }
        self.orders[body["client_order_id"]] = order
        return order

    def by_id(self, broker_id: str) -> dict[str, Any] | None:
        return next((o for o in self.orders.values() if o["id"] == broker_id), None)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path, method = request.url.path, request.method
        if method == "POST" and path == ORDERS_PATH:
            return await self.on_post(self, json.loads(request.content))
        if method == "GET" and path == BY_CLIENT_PATH:
            found = self.orders.get(request.url.params.get("client_order_id", ""))
            return httpx.Response(200, json=found) if found else not_found()
        match = re.fullmatch(r"/v2/orders/([A-Za-z0-9-]+)", path)
        if match:
            found = self.by_id(match[1])
            if found is None:
                return not_found()
            if method == "GET":
                return httpx.Response(200, json=found)
            if method == "DELETE":
                if found["status"] in _TERMINAL:
                    return alpaca_error(422, 42210000, "order is not cancelable")
                found["status"] = self.cancel_to
                found["canceled_at"] = dt.datetime.now(dt.UTC).isoformat()
                return httpx.Response(204)
        return httpx.Response(599, text=f"unscripted request {method} {path}")

    def calls(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and r.url.path == path]

    def posts(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.calls("POST", ORDERS_PATH)]

    def lookups(self) -> list[str]:
        return [r.url.params["client_order_id"] for r in self.calls("GET", BY_CLIENT_PATH)]


# --------------------------------------------------------------------------- POST behaviours
def accept(status: str) -> PostBehaviour:
    async def behaviour(fake: FakeAlpaca, body: dict[str, Any]) -> httpx.Response:
        return httpx.Response(200, json=fake.keep(body, status))

    return behaviour


def slow_but_placed(status: str) -> PostBehaviour:
    """The broker creates the order at once, then answers only after SLOW seconds (too late)."""

    async def behaviour(fake: FakeAlpaca, body: dict[str, Any]) -> httpx.Response:
        order = fake.keep(body, status)
        await asyncio.sleep(SLOW)
        return httpx.Response(200, json=order)

    return behaviour


async def hang_and_lose(fake: FakeAlpaca, body: dict[str, Any]) -> httpx.Response:
    """The request went out and nothing came back in time; the broker never created the order."""
    await asyncio.sleep(SLOW)
    return httpx.Response(599, text="too late")


def raise_(exc: Exception) -> PostBehaviour:
    async def behaviour(fake: FakeAlpaca, body: dict[str, Any]) -> httpx.Response:
        raise exc

    return behaviour


def status_answer(code: int, *, kept: str | None) -> PostBehaviour:
    """Answer ``code``; with ``kept``, the broker created the order anyway (with that status)."""

    async def behaviour(fake: FakeAlpaca, body: dict[str, Any]) -> httpx.Response:
        if kept is not None:
            fake.keep(body, kept)
        return httpx.Response(code, json={"message": "internal server error"})

    return behaviour


def refuse(status: int, code: int, message: str) -> PostBehaviour:
    async def behaviour(fake: FakeAlpaca, body: dict[str, Any]) -> httpx.Response:
        return alpaca_error(status, code, message)

    return behaviour


def duplicate_of_existing(status: str) -> PostBehaviour:
    """An earlier attempt (whose answer was lost) already created this client_order_id's order."""

    async def behaviour(fake: FakeAlpaca, body: dict[str, Any]) -> httpx.Response:
        fake.keep(body, status)
        return alpaca_error(422, 40010001, "client_order_id must be unique")

    return behaviour


# --------------------------------------------------------------------------- app and users
async def alpaca_client(make_client: Any, fake: FakeAlpaca, **overrides: Any) -> httpx.AsyncClient:
    def hook(app: Any) -> None:
        app.state.http_transports = {PROVIDER: httpx.MockTransport(fake)}

    settings: dict[str, Any] = {
        "broker_provider": "alpaca",
        "alpaca_api_base_url": BASE_URL,
        "broker_timeout_seconds": TIMEOUT,
        "reconcile_interval_seconds": 3600,
        "reconcile_grace_seconds": 60,
    }
    settings.update(overrides)
    client = await make_client(app_hook=hook, **settings)
    assert client.app.state.broker.name == "alpaca"  # type: ignore[attr-defined]
    return client


async def linked_trader(client: httpx.AsyncClient, database_url: str) -> tuple[dict[str, str], str]:
    """A new user with a linked Alpaca account: (Authorization header, the user's broker token)."""
    user, auth = await trader(client)
    token = f"tok-{uuid.uuid4().hex}"
    await link_alpaca(database_url, user["id"], token)
    return auth, token


async def post_order(
    client: httpx.AsyncClient, auth: dict[str, str], key: str, body: dict[str, Any] | None = None
) -> httpx.Response:
    return await client.post("/v1/orders", json=body or market(), headers={**auth, "Idempotency-Key": key})


async def reconcile(client: httpx.AsyncClient) -> Any:
    report = await client.app.state.reconciler.run_once()  # type: ignore[attr-defined]
    assert report is not None, "the reconciler pass failed (see the log)"
    return report


def assert_bearer(fake: FakeAlpaca, token: str) -> None:
    assert fake.requests
    assert {r.headers["authorization"] for r in fake.requests} == {f"Bearer {token}"}


# --------------------------------------------------------------------------- 1. slow broker
async def test_slow_broker_that_placed_the_order_is_202_then_settled_by_client_order_id(
    make_client: Any, database_url: str
) -> None:
    fake = FakeAlpaca(slow_but_placed("filled"))
    client = await alpaca_client(make_client, fake)
    auth, token = await linked_trader(client, database_url)
    key = new_key("slow")

    started = time.perf_counter()
    r = await post_order(client, auth, key, market(qty="5"))
    took = time.perf_counter() - started
    assert r.status_code == 202, r.text
    assert took < SLOW, (
        f"the request waited for the broker ({took:.2f} s) instead of its {TIMEOUT} s deadline"
    )
    first = r.json()
    assert first["status"] == "pending_reconciliation" and first["broker_order_id"] is None
    coid = first["client_order_id"]
    assert coid.startswith("td-") and len(coid) <= 48
    assert r.headers["location"] == f"/v1/orders/{first['id']}"
    assert fake.posts() == [
        {
            "symbol": "AAPL",
            "qty": "5",
            "side": "buy",
            "type": "market",
            "time_in_force": "day",
            "client_order_id": coid,
        }
    ]
    assert (await order_row(database_url, first["id"]))["status"] == "pending_reconciliation"

    await make_due(database_url, first["id"])
    report = await reconcile(client)
    assert report.settled == 1

    broker_order = fake.orders[coid]
    assert fake.lookups() == [coid]
    row = await order_row(database_url, first["id"])
    assert row["status"] == "filled" and row["broker_order_id"] == broker_order["id"]
    assert row["filled_qty"] == Decimal("5") and row["filled_avg_price"] == Decimal(FILL_PRICE)
    assert row["next_reconcile_at"] is None  # terminal: nothing left to watch
    assert [e[1:] for e in await events(database_url, first["id"])] == [
        ("submitting", "submitted"),
        ("pending_reconciliation", "outcome_unknown"),
        ("filled", "reconciled"),
    ]
    got = await client.get(f"/v1/orders/{first['id']}", headers=auth)
    assert got.status_code == 200 and got.json()["status"] == "filled"

    replay = await post_order(client, auth, key, market(qty="5"))
    assert replay.status_code == 202 and replay.headers["idempotent-replayed"] == "true"
    assert replay.content == r.content
    assert len(fake.calls("POST", ORDERS_PATH)) == 1  # neither the reconciler nor the replay re-sent it
    assert_bearer(fake, token)


# --------------------------------------------------------------------------- 2. never received
@pytest.mark.parametrize(
    "lost",
    [
        pytest.param(hang_and_lose, id="hang-past-deadline"),
        pytest.param(raise_(httpx.ReadTimeout("read timed out")), id="read-timeout"),
    ],
)
async def test_order_the_broker_never_got_is_rejected_after_grace_and_revived_when_it_appears(
    make_client: Any, database_url: str, lost: PostBehaviour
) -> None:
    fake = FakeAlpaca(lost)
    client = await alpaca_client(make_client, fake)
    auth, token = await linked_trader(client, database_url)

    r = await post_order(client, auth, new_key("lost"))
    assert r.status_code == 202, r.text
    order = r.json()
    assert order["status"] == "pending_reconciliation"
    coid, oid = order["client_order_id"], order["id"]

    # Within the grace period a 404 proves nothing yet.
    await make_due(database_url, oid)
    report = await reconcile(client)
    assert report.unchanged == 1 and report.rejected_after_grace == 0
    assert fake.lookups() == [coid]
    row = await order_row(database_url, oid)
    assert row["status"] == "pending_reconciliation" and row["reject_reason"] is None

    # Past RECONCILE_GRACE_SECONDS the broker still does not know it: rejected.
    before = await scrape(client)
    await make_due(database_url, oid, past_grace=True)
    report = await reconcile(client)
    assert report.rejected_after_grace == 1
    row = await order_row(database_url, oid)
    assert row["status"] == "rejected" and row["reject_reason"]
    assert (await events(database_url, oid))[-1] == (
        "pending_reconciliation",
        "rejected",
        "not_found_after_grace",
    )
    assert (await client.get(f"/v1/orders/{oid}", headers=auth)).json()["status"] == "rejected"

    # The broker shows the order after all: revived, never dropped.
    fake.keep(fake.posts()[0], "accepted")
    await make_due(database_url, oid)
    report = await reconcile(client)
    assert report.revived == 1
    row = await order_row(database_url, oid)
    assert row["status"] == "accepted" and row["broker_order_id"] == fake.orders[coid]["id"]
    assert row["reject_reason"] is None
    assert (await events(database_url, oid))[-1] == ("rejected", "accepted", "revived")
    after = await scrape(client)
    assert grew(before, after, "orders_revived_total") == 1
    assert grew(before, after, "orders_reconciled_total", result="rejected_after_grace") == 1

    assert len(fake.calls("POST", ORDERS_PATH)) == 1
    assert fake.lookups() == [coid] * 3
    assert_bearer(fake, token)


# --------------------------------------------------------------------------- 3. broker 5xx
@pytest.mark.parametrize("code", [500, 503])
async def test_broker_5xx_is_unknown_never_retried_and_settled_by_what_the_broker_has(
    make_client: Any, database_url: str, code: int
) -> None:
    fake = FakeAlpaca()
    client = await alpaca_client(make_client, fake)
    auth, token = await linked_trader(client, database_url)

    fake.on_post = status_answer(code, kept="accepted")
    kept = await post_order(client, auth, new_key("kept"))
    fake.on_post = status_answer(code, kept=None)
    dropped = await post_order(client, auth, new_key("dropped"))
    for r in (kept, dropped):
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "pending_reconciliation"
    kept_order, dropped_order = kept.json(), dropped.json()
    assert [p["client_order_id"] for p in fake.posts()] == [
        kept_order["client_order_id"],
        dropped_order["client_order_id"],
    ]

    await make_due(database_url, kept_order["id"])
    await make_due(database_url, dropped_order["id"])
    report = await reconcile(client)
    assert report.settled == 1 and report.unchanged == 1
    row = await order_row(database_url, kept_order["id"])
    assert row["status"] == "accepted"
    assert row["broker_order_id"] == fake.orders[kept_order["client_order_id"]]["id"]
    assert (await order_row(database_url, dropped_order["id"]))["status"] == "pending_reconciliation"

    await make_due(database_url, dropped_order["id"], past_grace=True)
    report = await reconcile(client)
    assert report.rejected_after_grace == 1
    row = await order_row(database_url, dropped_order["id"])
    assert row["status"] == "rejected" and row["reject_reason"]
    assert (await events(database_url, dropped_order["id"]))[-1][2] == "not_found_after_grace"

    # One POST per order, whatever the 5xx: a POST is never retried.
    assert len(fake.calls("POST", ORDERS_PATH)) == 2
    assert_bearer(fake, token)


# --------------------------------------------------------------------------- 4. refused before sending
async def test_connection_refused_is_503_rejected_not_sent_and_the_key_is_released(
    make_client: Any, database_url: str
) -> None:
    fake = FakeAlpaca(raise_(httpx.ConnectError("connection refused")))
    client = await alpaca_client(make_client, fake)
    auth, token = await linked_trader(client, database_url)
    key = new_key("refused")

    r = await post_order(client, auth, key)
    assert_problem(r, 503)
    assert int(r.headers["retry-after"]) >= 1
    assert "idempotent-replayed" not in r.headers
    rows = await order_rows(database_url)
    assert len(rows) == 1
    first = rows[0]
    assert first["status"] == "rejected" and first["reject_reason"]
    assert (await events(database_url, str(first["id"])))[-1] == ("submitting", "rejected", "not_sent")

    # Nothing was sent: the same key is a new attempt, with a new client_order_id.
    fake.on_post = accept("accepted")
    again = await post_order(client, auth, key)
    assert again.status_code == 201, again.text
    assert "idempotent-replayed" not in again.headers
    second = again.json()
    assert second["status"] == "accepted" and second["id"] != str(first["id"])
    assert second["client_order_id"] != first["client_order_id"]
    assert second["broker_order_id"] == fake.orders[second["client_order_id"]]["id"]
    assert [p["client_order_id"] for p in fake.posts()] == [
        first["client_order_id"],
        second["client_order_id"],
    ]
    assert (await order_row(database_url, str(first["id"])))["status"] == "rejected"

    replay = await post_order(client, auth, key)
    assert replay.status_code == 201 and replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["id"] == second["id"]
    assert len(fake.calls("POST", ORDERS_PATH)) == 2
    assert_bearer(fake, token)


# --------------------------------------------------------------------------- 5. circuit breaker
async def test_open_breaker_answers_503_at_once_without_calling_the_broker_then_recovers(
    make_client: Any, database_url: str
) -> None:
    fake = FakeAlpaca(status_answer(500, kept=None))
    client = await alpaca_client(make_client, fake, breaker_fail_max=3, breaker_reset_seconds=1)
    auth, token = await linked_trader(client, database_url)
    breaker = client.app.state.outbound[PROVIDER].breaker  # type: ignore[attr-defined]

    for _ in range(3):
        r = await post_order(client, auth, new_key("fail"))
        assert r.status_code == 202, r.text
    assert len(fake.requests) == 3
    state, _, _ = await breaker.snapshot()
    assert state is BreakerState.OPEN
    assert sample(await scrape(client), "circuit_breaker_state", provider=PROVIDER) == BreakerState.OPEN

    fake.on_post = accept("accepted")
    with collector_paused():  # the time measured is the breaker's, not this process's collector's
        started = time.perf_counter()
        r = await post_order(client, auth, new_key("open"))
        took = time.perf_counter() - started
    assert_problem(r, 503)
    assert int(r.headers["retry-after"]) >= 1
    assert took < 0.1, f"the open breaker took {took * 1000:.0f} ms to answer"
    assert len(fake.requests) == 3  # nothing reached the broker
    rows = await order_rows(database_url)
    refused = rows[-1]
    assert len(rows) == 4 and refused["status"] == "rejected" and refused["reject_reason"]
    assert (await events(database_url, str(refused["id"])))[-1] == ("submitting", "rejected", "not_sent")

    # Wait out the breaker's reset window (the behaviour under test), then one trial goes through.
    state, _, remaining = await breaker.snapshot()
    assert state is BreakerState.OPEN and 0 < remaining <= 1
    await asyncio.sleep(remaining + 0.05)
    r = await post_order(client, auth, new_key("after-reset"))
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "accepted"
    assert len(fake.calls("POST", ORDERS_PATH)) == 4
    state, failures, _ = await breaker.snapshot()
    assert state is BreakerState.CLOSED and failures == 0
    assert_bearer(fake, token)


# --------------------------------------------------------------------------- 6. broker 4xx
async def test_broker_4xx_is_422_with_the_brokers_reason_and_replayed_as_stored(
    make_client: Any, database_url: str
) -> None:
    fake = FakeAlpaca(refuse(403, 40310000, "insufficient buying power"))
    client = await alpaca_client(make_client, fake)
    auth, token = await linked_trader(client, database_url)
    key = new_key("poor")

    r = await post_order(client, auth, key)
    body = assert_problem(r, 422)
    assert "insufficient buying power" in body["detail"]
    rows = await order_rows(database_url)
    assert len(rows) == 1
    assert rows[0]["status"] == "rejected" and rows[0]["reject_reason"] == "insufficient buying power"
    assert (await events(database_url, str(rows[0]["id"])))[-1] == (
        "submitting",
        "rejected",
        "broker_rejected",
    )

    replay = await post_order(client, auth, key)
    assert replay.status_code == 422 and replay.headers["idempotent-replayed"] == "true"
    assert replay.headers["content-type"].startswith("application/problem+json")
    assert replay.content == r.content
    assert len(fake.requests) == 1 and len(await order_rows(database_url)) == 1
    assert_bearer(fake, token)


# --------------------------------------------------------------------------- 7. no linked account
async def test_no_linked_account_is_409_with_no_order_and_no_broker_call(
    make_client: Any, database_url: str
) -> None:
    fake = FakeAlpaca()
    client = await alpaca_client(make_client, fake)
    user, auth = await trader(client)
    key = new_key("unlinked")

    r = await post_order(client, auth, key)
    assert_problem(r, 409)
    assert await order_rows(database_url) == []
    assert fake.requests == []

    # Nothing was attempted, so the key was not spent: once linked, the same key places the order.
    await link_alpaca(database_url, user["id"], "tok-linked-later")
    r = await post_order(client, auth, key)
    assert r.status_code == 201, r.text
    assert "idempotent-replayed" not in r.headers
    assert len(fake.calls("POST", ORDERS_PATH)) == 1
    assert_bearer(fake, "tok-linked-later")


# --------------------------------------------------------------------------- 8. duplicate adopted
async def test_duplicate_client_order_id_adopts_the_brokers_order(
    make_client: Any, database_url: str
) -> None:
    fake = FakeAlpaca(duplicate_of_existing("new"))
    client = await alpaca_client(make_client, fake)
    auth, token = await linked_trader(client, database_url)

    r = await post_order(client, auth, new_key("dup"))
    assert r.status_code == 201, r.text
    order = r.json()
    coid = order["client_order_id"]
    assert order["status"] == "new"
    assert order["broker_order_id"] == fake.orders[coid]["id"]
    assert len(fake.calls("POST", ORDERS_PATH)) == 1 and fake.lookups() == [coid]
    row = await order_row(database_url, order["id"])
    assert row["status"] == "new" and row["broker_order_id"] == fake.orders[coid]["id"]
    assert (await events(database_url, order["id"]))[-1] == ("submitting", "new", "placed")
    assert_bearer(fake, token)


# --------------------------------------------------------------------------- 9. cancel
@pytest.mark.parametrize("reported", ["canceled", "pending_cancel"])
async def test_cancel_sends_one_delete_and_records_what_the_broker_then_reports(
    make_client: Any, database_url: str, reported: str
) -> None:
    fake = FakeAlpaca(accept("new"))
    fake.cancel_to = reported
    client = await alpaca_client(make_client, fake)
    auth, token = await linked_trader(client, database_url)
    other_auth, _ = await linked_trader(client, database_url)

    r = await post_order(client, auth, new_key("open"))
    assert r.status_code == 201 and r.json()["status"] == "new", r.text
    order = r.json()
    broker_id = order["broker_order_id"]
    assert broker_id == fake.orders[order["client_order_id"]]["id"]

    foreign = await client.delete(f"/v1/orders/{order['id']}", headers=other_auth)
    assert_problem(foreign, 404)
    assert fake.calls("DELETE", f"/v2/orders/{broker_id}") == []

    c = await client.delete(f"/v1/orders/{order['id']}", headers=auth)
    assert c.status_code == 200, c.text
    assert c.json()["id"] == order["id"] and c.json()["status"] == reported
    deletes = fake.calls("DELETE", f"/v2/orders/{broker_id}")
    assert len(deletes) == 1 and deletes[0].headers["authorization"] == f"Bearer {token}"
    assert (await order_row(database_url, order["id"]))["status"] == reported
    assert (await events(database_url, order["id"]))[-1] == ("new", reported, "cancel_requested")

    fake.on_post = accept("filled")
    filled = await post_order(client, auth, new_key("filled"))
    assert filled.status_code == 201 and filled.json()["status"] == "filled", filled.text
    filled_broker_id = filled.json()["broker_order_id"]
    refused = await client.delete(f"/v1/orders/{filled.json()['id']}", headers=auth)
    assert_problem(refused, 409)
    assert fake.calls("DELETE", f"/v2/orders/{filled_broker_id}") == []
    assert (await order_row(database_url, filled.json()["id"]))["status"] == "filled"
    assert len([r for r in fake.requests if r.method == "DELETE"]) == 1
