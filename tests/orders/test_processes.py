"""Orders across REAL operating-system processes: uvicorn servers (separate interpreters, event loops and
database pools) on the test PostgreSQL database and one Redis database, in front of the loopback fake
Alpaca Trading API (tests/orders/alpaca_fake.py). The in-process tests cannot show this, because there one
event loop and one pool serve every request:

* a process SIGKILLed after the broker received the order but before it recorded the answer (between
  phases (a) and (c) of ``app/orders/service.py``) leaves a ``submitting`` order and a key in flight
  (retries: 409); a NEW process's reconciler looks the order up by ``client_order_id`` and settles it to
  the broker's status (event reason ``reconciled``) without a second POST, and the key then replays the
  settled order.

One Idempotency-Key sent concurrently to two running processes (one broker order, one row, the same
answer replayed) is proven with the other cross-instance guarantees in tests/core/test_two_instances.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.orders.alpaca_fake import FakeAlpacaTrading, fake_alpaca_trading
from tests.orders.helpers import (
    assert_in_flight_conflict,
    events,
    idempotency_rows,
    linked_trader,
    market,
    new_key,
    order_rows,
    place,
)
from tests.support.servers import Servers, eventually, flush_redis, server_env
from tests.support.settings import TEST_FERNET_KEY, TEST_JWT_SECRET, TEST_WEBHOOK_SECRET

pytestmark = [pytest.mark.redis, pytest.mark.slow]

BROKER_TIMEOUT_SECONDS = 1.0
RECONCILE_INTERVAL_SECONDS = 0.2
FIRST_CHECK_SECONDS = BROKER_TIMEOUT_SECONDS + 2  # OrderPolicy.first_check: a crashed request's order
SETTLE_SECONDS = 15.0


# ---------------------------------------------------------------------------------- real servers


@pytest.fixture
async def alpaca() -> AsyncIterator[FakeAlpacaTrading]:
    async with fake_alpaca_trading() as fake:
        yield fake


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


# ---------------------------------------------------------------------------------- tests
async def test_process_killed_between_phases_is_settled_by_a_new_process_with_no_second_broker_order(
    servers: Servers, alpaca: FakeAlpacaTrading, database_url: str
) -> None:
    first = await servers.start()
    with servers.diagnosed():
        user_id, auth = await linked_trader(first.http, database_url, alpaca)
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
