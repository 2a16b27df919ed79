"""Orders across REAL operating-system processes: uvicorn servers (separate interpreters, event loops and
database pools) on the test PostgreSQL database and one Redis database, in front of a loopback fake of
the Alpaca Trading API v2 that keeps orders by ``client_order_id`` as the real broker does (a second POST
with the same id is refused as a duplicate, a lookup answers the stored order or a 404) and records every
request it receives. The in-process tests cannot show these, because there one event loop and one pool
serve every request:

* one Idempotency-Key, 20 truly concurrent POSTs spread over two processes → ONE order at the broker and
  ONE orders row; every 2xx is the same bytes (the first answer, then replays marked
  ``Idempotent-Replayed: true``), every other answer is the 409 "in flight" problem with Retry-After;
* a process SIGKILLed after the broker received the order but before it recorded the answer (between
  phases (a) and (c) of ``app/orders/service.py``) leaves a ``submitting`` order and a key in flight
  (retries: 409); a NEW process's reconciler looks the order up by ``client_order_id`` and settles it to
  the broker's status (event reason ``reconciled``) without a second POST, and the key then replays the
  settled order.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from app.core.crypto import TokenCipher
from tests.auth.helpers import bearer, fetch, signup_and_token
from tests.orders.helpers import events, market, new_key, order_rows, place
from tests.outbound.fake_provider import FakeProvider, Hang, Recorded, Reply
from tests.providers.broker.test_alpaca import order_json
from tests.support.problems import assert_problem
from tests.support.servers import Server, Servers, eventually, flush_redis, server_env
from tests.support.settings import TEST_FERNET_KEY, TEST_JWT_SECRET, TEST_WEBHOOK_SECRET

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BROKER_TIMEOUT_SECONDS = 1.0
RECONCILE_INTERVAL_SECONDS = 0.2
FIRST_CHECK_SECONDS = BROKER_TIMEOUT_SECONDS + 2  # OrderPolicy.first_check: a crashed request's order
SETTLE_SECONDS = 15.0
FIRST_POST_DELAY = 0.5  # the broker's first answer: long enough for the whole wave to overlap it

POST_PATH = r"/v2/orders"
BY_CLIENT_PATH = r"/v2/orders:by_client_order_id"
ORDER_PATH = r"/v2/orders/[^/]+"
IN_FLIGHT_TYPE = "/idempotency-in-flight"

T = TypeVar("T")


# ---------------------------------------------------------------------------------- the fake broker
@dataclass
class FakeAlpacaTrading:
    """Alpaca's order endpoints on a ``FakeProvider``, with the broker's own bookkeeping: orders by
    ``client_order_id``. ``post_delays`` delay the next answers to POST /v2/orders (one per POST, in
    turn). With ``hold_posts`` a POST is received and never answered, and its order is not visible yet
    (the broker is still processing it) until ``finish_held(status)``."""

    fake: FakeProvider
    tokens: set[str] = field(default_factory=set)
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    held: dict[str, dict[str, Any]] = field(default_factory=dict)
    post_delays: list[float] = field(default_factory=list)
    hold_posts: bool = False

    def __post_init__(self) -> None:
        self.fake.on(POST_PATH, self._post).on(BY_CLIENT_PATH, self._by_client).on(ORDER_PATH, self._by_id)

    @property
    def posts(self) -> list[Recorded]:
        return [r for r in self.fake.seen(POST_PATH) if r.method == "POST"]

    def lookups(self, client_order_id: str) -> list[Recorded]:
        return [
            r for r in self.fake.seen(BY_CLIENT_PATH) if r.query.get("client_order_id") == client_order_id
        ]

    def finish_held(self, *, status: str) -> None:
        """The broker finishes processing the held orders: they exist from now on, with ``status``."""
        for coid, order in self.held.items():
            if status == "filled":
                order.update(
                    filled_qty=order["qty"], filled_avg_price="190.01", filled_at=_now(), updated_at=_now()
                )
            self.orders[coid] = {**order, "status": status}
        self.held.clear()

    def _unauthorized(self, request: Recorded) -> Reply | None:
        if request.headers.get("authorization", "").removeprefix("Bearer ") not in self.tokens:
            return Reply(401, {"code": 40110000, "message": "access key verification failed"})
        return None

    def _post(self, request: Recorded) -> Reply | Hang:
        if request.method != "POST":
            return Reply(404, {"code": 40410000, "message": "not in this fake"})
        if refused := self._unauthorized(request):
            return refused
        body = json.loads(request.body)
        coid = body["client_order_id"]
        if coid in self.orders or coid in self.held:
            return Reply(422, {"code": 40010001, "message": "client_order_id must be unique"})
        order = order_json(
            id=str(uuid.uuid4()),
            client_order_id=coid,
            created_at=_now(),
            updated_at=_now(),
            submitted_at=_now(),
            symbol=body["symbol"],
            qty=body["qty"],
            side=body["side"],
            type=body["type"],
            order_type=body["type"],
            time_in_force=body["time_in_force"],
            limit_price=body.get("limit_price"),
            status="accepted",
        )
        if self.hold_posts:
            self.held[coid] = order
            return Hang()
        self.orders[coid] = order
        return Reply(200, order, delay=self.post_delays.pop(0) if self.post_delays else 0.0)

    def _by_client(self, request: Recorded) -> Reply:
        if refused := self._unauthorized(request):
            return refused
        found = self.orders.get(request.query.get("client_order_id", ""))
        return Reply(200, found) if found else Reply(404, {"code": 40410000, "message": "order not found"})

    def _by_id(self, request: Recorded) -> Reply:
        if refused := self._unauthorized(request):
            return refused
        wanted = request.path.rsplit("/", 1)[1]
        found = next((o for o in self.orders.values() if o["id"] == wanted), None)
        return Reply(200, found) if found else Reply(404, {"code": 40410000, "message": "order not found"})


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------------------------- real servers


@pytest.fixture
async def alpaca() -> AsyncIterator[FakeAlpacaTrading]:
    fake = await FakeProvider().start()
    try:
        yield FakeAlpacaTrading(fake)
    finally:
        await fake.stop()


@pytest.fixture
async def servers(
    require_redis: str, database_url: str, alpaca: FakeAlpacaTrading, tmp_path: Path
) -> AsyncIterator[Servers]:
    """Start servers with ``await servers.start()``; every one is stopped (or killed) at teardown."""
    await flush_redis(require_redis)  # breaker state and limits of another run never leak in
    env = server_env(
        DATABASE_URL=database_url,
        REDIS_URL=require_redis,
        FRONTEND_URL="http://localhost:3000",
        JWT_SECRET=TEST_JWT_SECRET,
        STRIPE_WEBHOOK_SECRET=TEST_WEBHOOK_SECRET,
        TOKEN_ENCRYPTION_KEY=TEST_FERNET_KEY,
        APP_ENV="test",
        LOG_LEVEL="INFO",  # order transitions and reconciler lines, for the failure messages
        BROKER_PROVIDER="alpaca",
        ALPACA_API_BASE_URL=alpaca.fake.url,
        BROKER_TIMEOUT_SECONDS=str(BROKER_TIMEOUT_SECONDS),
        RECONCILE_INTERVAL_SECONDS=str(RECONCILE_INTERVAL_SECONDS),
        RECONCILE_GRACE_SECONDS="30",
        RATE_LIMIT_ORDERS="100000/minute",
        RATE_LIMIT_DEFAULT="100000/minute",
        RATE_LIMIT_LOGIN="1000/minute",
        RATE_LIMIT_SIGNUP="1000/hour",
    )
    workdir = tmp_path / "servers"
    workdir.mkdir()
    group = Servers(env, workdir)
    try:
        yield group
    finally:
        try:
            await group.stop_all()
        finally:
            await flush_redis(require_redis)


# ---------------------------------------------------------------------------------- helpers
async def linked_trader(
    server: Server, database_url: str, alpaca: FakeAlpacaTrading
) -> tuple[uuid.UUID, dict[str, str]]:
    """A user signed up and logged in over HTTP, with an Alpaca account linked (an encrypted token row)."""
    user, token = await signup_and_token(server.http)
    user_id = uuid.UUID(user["id"])
    broker_token = f"tok-{uuid.uuid4().hex}"
    await fetch(
        database_url,
        "INSERT INTO broker_connections (user_id, provider, access_token_encrypted) VALUES ($1, 'alpaca', $2)",
        user_id,
        TokenCipher([TEST_FERNET_KEY]).encrypt(broker_token),
    )
    alpaca.tokens.add(broker_token)
    return user_id, bearer(token)


async def idempotency_rows(database_url: str, user_id: uuid.UUID) -> list[Any]:
    return await fetch(
        database_url, "SELECT key, state, response_status FROM idempotency_keys WHERE user_id = $1", user_id
    )


def assert_in_flight_conflict(r: httpx.Response) -> None:
    body = assert_problem(r, 409)
    assert body["type"].endswith(IN_FLIGHT_TYPE), body
    assert int(r.headers["retry-after"]) >= 1, r.headers
    assert "idempotent-replayed" not in r.headers


# ---------------------------------------------------------------------------------- tests
async def test_one_key_twenty_concurrent_posts_over_two_processes_make_one_broker_order(
    servers: Servers, alpaca: FakeAlpacaTrading, database_url: str
) -> None:
    a, b = await asyncio.gather(servers.start(), servers.start())
    with servers.diagnosed():
        user_id, auth = await linked_trader(a, database_url, alpaca)
        for server in (a, b):  # warm both processes (database and Redis pools) before the wave
            warm = await asyncio.gather(*(server.http.get("/v1/orders", headers=auth) for _ in range(5)))
            assert [r.status_code for r in warm] == [200] * 5, [r.text for r in warm]
        assert alpaca.fake.requests == []

        alpaca.post_delays = [FIRST_POST_DELAY]  # the first POST's answer is slow: the wave overlaps it
        key, body = new_key("wave"), market(qty="7")

        # One wave of 20 with the same key and body, alternating between the processes, all in flight
        # together. The first 10 race for the claim itself; the other 10 go out the moment the broker
        # has the order, so they land while its call is running (after phase (a), before (c)).
        async def send(server: Server, during_broker_call: bool) -> httpx.Response:
            if during_broker_call:
                await eventually(lambda: alpaca.posts, within=10, what="the broker received the POST")
            return await place(server.http, auth, body, key)

        plan = [(server, i >= 10) for i, server in enumerate([a, b] * 10)]
        wave = await asyncio.gather(*(send(server, late) for server, late in plan))
        seen = [
            (s.name, late, r.status_code, r.headers.get("idempotent-replayed"))
            for (s, late), r in zip(plan, wave, strict=True)
        ]

        assert {r.status_code for r in wave} <= {201, 409}, [
            (x, r.text) for x, r in zip(seen, wave, strict=True)
        ]
        created = [r for r in wave if r.status_code == 201]
        originals = [r for r in created if "idempotent-replayed" not in r.headers]
        assert len(originals) == 1, seen
        assert all(r.headers["idempotent-replayed"] == "true" for r in created if r is not originals[0]), seen
        assert {r.content for r in created} == {originals[0].content}, [r.text for r in created]
        for r in wave:
            if r.status_code == 409:
                assert_in_flight_conflict(r)
        # Those sent during the broker call, to both processes, found the key in flight.
        assert [r.status_code for (_, late), r in zip(plan, wave, strict=True) if late] == [409] * 10, seen

        # Exactly one order at the broker, sent with the user's token; one row, placed once.
        assert len(alpaca.posts) == 1, [json.loads(p.body) for p in alpaca.posts]
        sent = json.loads(alpaca.posts[0].body)
        assert alpaca.posts[0].headers["authorization"].removeprefix("Bearer ") in alpaca.tokens
        assert list(alpaca.orders) == [sent["client_order_id"]]
        order = originals[0].json()
        assert order["client_order_id"] == sent["client_order_id"]
        assert order["broker_order_id"] == alpaca.orders[sent["client_order_id"]]["id"]
        assert (order["status"], order["qty"], order["symbol"]) == ("accepted", "7", "AAPL")
        assert originals[0].headers["location"] == f"/v1/orders/{order['id']}"
        rows = await order_rows(database_url)
        assert [(str(r["id"]), r["client_order_id"]) for r in rows] == [
            (order["id"], sent["client_order_id"])
        ]
        assert await events(database_url, order["id"]) == [
            (None, "submitting", "submitted"),
            ("submitting", "accepted", "placed"),
        ]
        assert [
            (r["key"], r["state"], r["response_status"])
            for r in await idempotency_rows(database_url, user_id)
        ] == [(key, "completed", 201)]

        # Afterwards, a retry on either process replays the same bytes and reaches no broker.
        for server in (a, b):
            again = await place(server.http, auth, body, key)
            assert again.status_code == 201, again.text
            assert again.headers["idempotent-replayed"] == "true"
            assert again.content == originals[0].content
        assert len(alpaca.posts) == 1
        assert len(await order_rows(database_url)) == 1


async def test_process_killed_between_phases_is_settled_by_a_new_process_with_no_second_broker_order(
    servers: Servers, alpaca: FakeAlpacaTrading, database_url: str
) -> None:
    first = await servers.start()
    with servers.diagnosed():
        user_id, auth = await linked_trader(first, database_url, alpaca)
        key, body = new_key("crash"), market(qty="5")

        # The broker receives the POST and never answers; the process dies while it waits for it.
        alpaca.hold_posts = True
        placing = asyncio.create_task(place(first.http, auth, body, key))
        await eventually(lambda: len(alpaca.posts) == 1, within=10, what="the broker received the POST")
        await servers.kill(first)  # well within BROKER_TIMEOUT_SECONDS of the POST: phase (c) never ran
        with pytest.raises(httpx.TransportError):
            await asyncio.wait_for(placing, 10)

        # Between phases (a) and (c): the intent is committed, the key is still in flight.
        rows = await order_rows(database_url)
        assert [r["status"] for r in rows] == ["submitting"], [dict(r) for r in rows]
        order_id, coid = str(rows[0]["id"]), rows[0]["client_order_id"]
        assert json.loads(alpaca.posts[0].body)["client_order_id"] == coid
        assert await events(database_url, order_id) == [(None, "submitting", "submitted")]
        assert [(r["key"], r["state"]) for r in await idempotency_rows(database_url, user_id)] == [
            (key, "in_flight")
        ]

        # A new process on the same database. Its reconciler asks the broker (after first_check), which
        # has not finished processing the order yet: 404, and within the grace period the order waits.
        alpaca.hold_posts = False
        second = await servers.start()
        await eventually(
            lambda: alpaca.lookups(coid),
            within=FIRST_CHECK_SECONDS + 5,
            what="the new process's reconciler looked the order up by client_order_id",
        )
        pending = await second.http.get(f"/v1/orders/{order_id}", headers=auth)
        assert pending.status_code == 200, pending.text
        assert pending.json()["status"] == "pending_reconciliation"
        early = await place(second.http, auth, body, key)  # before the settle: still in flight
        assert_in_flight_conflict(early)

        # The broker now shows the order, filled: the reconciler settles it and finishes the key.
        alpaca.finish_held(status="filled")
        broker_order = alpaca.orders[coid]

        async def settled() -> dict[str, Any] | None:
            r = await second.http.get(f"/v1/orders/{order_id}", headers=auth)
            assert r.status_code == 200, r.text
            return r.json() if r.json()["status"] == "filled" else None

        order = await eventually(
            settled, within=SETTLE_SECONDS, what="the reconciler settled the order as filled"
        )
        assert (order["filled_qty"], order["filled_avg_price"]) == ("5", "190.01")
        assert order["broker_order_id"] == broker_order["id"] and order["client_order_id"] == coid
        assert await events(database_url, order_id) == [
            (None, "submitting", "submitted"),
            ("submitting", "filled", "reconciled"),
        ]

        # The original request's key now replays the settled order, and nothing reached the broker again.
        retry = await place(second.http, auth, body, key)
        assert retry.status_code == 201, retry.text
        assert retry.headers["idempotent-replayed"] == "true"
        assert retry.json() == order
        assert retry.headers["location"] == f"/v1/orders/{order_id}"
        assert len(alpaca.posts) == 1, [json.loads(p.body) for p in alpaca.posts]
        assert [r["status"] for r in await order_rows(database_url)] == ["filled"]
        assert [
            (r["key"], r["state"], r["response_status"])
            for r in await idempotency_rows(database_url, user_id)
        ] == [(key, "completed", 201)]
