"""Idempotency-Key (app/core/idempotency.py) over HTTP into a real PostgreSQL.

A test-only router uses the dependency the way the orders route will: the work (a row inserted in
``users``, the side effect we count) and the stored response commit in one transaction. Races are made
deterministic with gates (asyncio events the route waits on), never with sleeps.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal
from typing import Annotated

import asyncpg
import httpx
import pytest
from fastapi import APIRouter, Header
from pydantic import BaseModel, Field
from sqlalchemy import text
from starlette.responses import Response

from app.auth.deps import CurrentUser
from app.core.deps import SessionDep
from app.core.errors import ServiceUnavailable, Unprocessable
from app.core.idempotency import IdempotencyRecord, complete_in_flight, idempotency_key
from tests.support import db as dbsupport
from tests.support.metrics import grew, scrape
from tests.support.problems import assert_problem

FIELD = "header.Idempotency-Key"
PREFIX = "/v1/_test/idem"
TAKEOVER_AFTER = 60.0


# --------------------------------------------------------------------------------------
# The test-only routes
# --------------------------------------------------------------------------------------
class Gate:
    """A route waits here (when the body names the gate) so a test controls when it finishes."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()


GATES: dict[str, Gate] = {}
FAIL_NEXT: list[Exception] = []  # the next request through /fail raises this, once


async def header_owner(x_test_user: Annotated[str, Header()]) -> uuid.UUID:
    return uuid.UUID(x_test_user)


async def real_owner(user: CurrentUser) -> uuid.UUID:
    return user.id


Idem = Annotated[IdempotencyRecord, idempotency_key(owner=header_owner, takeover_after=TAKEOVER_AFTER)]
# Like an order: effects outside the completing transaction, recovered by the feature, never re-run.
OutsideEffectsIdem = Annotated[IdempotencyRecord, idempotency_key(owner=header_owner, takeover_after=None)]
UserIdem = Annotated[IdempotencyRecord, idempotency_key(owner=real_owner, takeover_after=TAKEOVER_AFTER)]


class OrderIn(BaseModel):
    symbol: str = Field(min_length=1, max_length=10)
    qty: Decimal = Field(gt=0)
    gate: str | None = None


router = APIRouter(prefix=PREFIX)


async def _effect(session: SessionDep) -> str:
    effect_id = str(uuid.uuid4())
    await session.execute(
        text("INSERT INTO users (email, email_normalized, password_hash) VALUES (:e, :e, 'h')"),
        {"e": f"effect-{effect_id}@x.io"},
    )
    return effect_id


async def _work(
    body: OrderIn, idem: IdempotencyRecord, session: SessionDep, *, gated: bool = True
) -> Response:
    if body.gate and gated:
        gate = GATES[body.gate]
        gate.entered.set()
        await gate.release.wait()
    effect_id = await _effect(session)
    return await idem.complete(
        session,
        status_code=201,
        content={"id": effect_id, "symbol": body.symbol, "qty": str(body.qty)},
        headers={"Location": f"{PREFIX}/orders/{effect_id}"},
    )


@router.post("/orders", status_code=201)
async def place(body: OrderIn, idem: Idem, session: SessionDep) -> Response:
    return await _work(body, idem, session)


@router.post("/other", status_code=201)
async def other(body: OrderIn, idem: Idem, session: SessionDep) -> Response:
    return await _work(body, idem, session)


@router.post("/fail", status_code=201)
async def fail_once(body: OrderIn, idem: Idem, session: SessionDep) -> Response:
    if body.gate:
        gate = GATES[body.gate]
        gate.entered.set()
        await gate.release.wait()
    if FAIL_NEXT:
        await _effect(session)  # rolled back with the error
        raise FAIL_NEXT.pop()
    return await _work(body, idem, session, gated=False)


@router.post("/outside", status_code=201)
async def outside_effects(body: OrderIn, idem: OutsideEffectsIdem, session: SessionDep) -> Response:
    if body.gate:
        gate = GATES[body.gate]
        gate.entered.set()
        await gate.release.wait()
    idem.keep()  # phase (a) would commit here, then the broker call
    raise ServiceUnavailable("the broker did not answer")


@router.post("/forgets", status_code=201)
async def forgets(body: OrderIn, idem: Idem) -> dict[str, str]:
    return {"symbol": body.symbol}


@router.post("/as-user", status_code=201)
async def as_user(body: OrderIn, idem: UserIdem, session: SessionDep) -> Response:
    response = await _work(body, idem, session)
    if body.symbol == "BOOM":  # completes in the request session, then fails: that session rolls back
        raise RuntimeError("after completing")
    return response


# --------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _reset_routes():
    GATES.clear()
    FAIL_NEXT.clear()
    yield
    for gate in GATES.values():  # never leave a request hanging
        gate.release.set()


@pytest.fixture
async def sql(database_url: str):
    conn = await asyncpg.connect(dbsupport.asyncpg_dsn(database_url))
    yield conn
    await conn.close()


async def _new_user(sql: asyncpg.Connection) -> str:
    email = f"owner-{uuid.uuid4().hex}@x.io"
    row = await sql.fetchrow(
        "INSERT INTO users (email, email_normalized, password_hash) VALUES ($1, $1, 'h') RETURNING id", email
    )
    return str(row["id"])


@pytest.fixture
async def user(sql: asyncpg.Connection) -> str:
    return await _new_user(sql)


@pytest.fixture
async def client(make_client) -> httpx.AsyncClient:
    return await make_client(routers=[router])


def new_key() -> str:
    return f"key_{uuid.uuid4().hex}"


def headers(user: str, key: str | None) -> dict[str, str]:
    out = {"X-Test-User": user}
    if key is not None:
        out["Idempotency-Key"] = key
    return out


async def effects(sql: asyncpg.Connection) -> int:
    return await sql.fetchval("SELECT count(*) FROM users WHERE email LIKE 'effect-%'")


async def key_row(sql: asyncpg.Connection, user: str, key: str):
    return await sql.fetchrow(
        "SELECT * FROM idempotency_keys WHERE user_id = $1 AND key = $2", uuid.UUID(user), key
    )


ORDER = {"symbol": "AAPL", "qty": "1.5"}


async def _wait_all_but_one(tasks: list[asyncio.Task]) -> asyncio.Task:
    """Wait (bounded) until every task but one has finished; return the unfinished one."""
    pending = set(tasks)
    async with asyncio.timeout(20):
        while len(pending) > 1:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    (last,) = pending
    return last


# --------------------------------------------------------------------------------------
# First request, replay, conflicts
# --------------------------------------------------------------------------------------
async def test_a_retry_replays_the_stored_response_byte_for_byte(client, sql, user) -> None:
    key = new_key()
    before = await scrape(client)
    first = await client.post(f"{PREFIX}/orders", json=ORDER, headers=headers(user, key))
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    assert first.headers["location"] == f"{PREFIX}/orders/{first.json()['id']}"

    again = await client.post(f"{PREFIX}/orders", json=ORDER, headers=headers(user, key))
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    for name in ("content-type", "location", "content-length"):
        assert again.headers[name] == first.headers[name]
    assert again.headers["x-request-id"] != first.headers["x-request-id"]  # per request, never stored
    assert await effects(sql) == 1

    row = await key_row(sql, user, key)
    assert row["state"] == "completed" and row["locked_at"] is None and row["response_status"] == 201
    after = await scrape(client)
    assert grew(before, after, "idempotency_requests_total", outcome="claimed") == 1
    assert grew(before, after, "idempotency_requests_total", outcome="replayed") == 1


async def test_the_same_json_spelled_differently_is_the_same_request(client, sql, user) -> None:
    key = new_key()
    first = await client.post(
        f"{PREFIX}/orders",
        content=b'{"symbol":"AAPL","qty":1}',
        headers={**headers(user, key), "Content-Type": "application/json"},
    )
    assert first.status_code == 201
    # Keys reordered, whitespace, 1 written as 1.0: the same JSON value, so a replay.
    respelled = await client.post(
        f"{PREFIX}/orders",
        content=b'{ "qty" : 1.0 ,\n "symbol" : "\\u0041APL" }',
        headers={**headers(user, key), "Content-Type": "application/json"},
    )
    assert respelled.status_code == 201 and respelled.headers["idempotent-replayed"] == "true"
    assert respelled.content == first.content
    # A string is not a number (documented): the route would coerce "1", the fingerprint does not.
    as_string = await client.post(
        f"{PREFIX}/orders", json={"symbol": "AAPL", "qty": "1"}, headers=headers(user, key)
    )
    assert_problem(as_string, 422)
    assert await effects(sql) == 1


async def test_another_body_with_the_same_key_is_422_naming_the_header(client, sql, user) -> None:
    key = new_key()
    assert (await client.post(f"{PREFIX}/orders", json=ORDER, headers=headers(user, key))).status_code == 201
    before = await scrape(client)
    other = await client.post(f"{PREFIX}/orders", json={**ORDER, "qty": "2"}, headers=headers(user, key))
    body = assert_problem(other, 422)
    assert body["type"] == "/problems/idempotency-key-reused"
    assert [e["field"] for e in body["errors"]] == [FIELD]
    assert "idempotent-replayed" not in other.headers
    # Another route with the same key and body is another request too.
    elsewhere = await client.post(f"{PREFIX}/other", json=ORDER, headers=headers(user, key))
    assert_problem(elsewhere, 422)
    assert await effects(sql) == 1
    after = await scrape(client)
    assert grew(before, after, "idempotency_requests_total", outcome="conflict") == 2


async def test_keys_belong_to_their_user(client, sql, user) -> None:
    key = new_key()
    someone_else = await _new_user(sql)
    mine = await client.post(f"{PREFIX}/orders", json=ORDER, headers=headers(user, key))
    theirs = await client.post(f"{PREFIX}/orders", json=ORDER, headers=headers(someone_else, key))
    assert mine.status_code == theirs.status_code == 201
    assert "idempotent-replayed" not in theirs.headers and theirs.json()["id"] != mine.json()["id"]
    assert await effects(sql) == 2


# --------------------------------------------------------------------------------------
# The header
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key",
    [
        pytest.param("seven77", id="too-short"),
        pytest.param("k" * 65, id="too-long"),
        pytest.param("has space", id="space"),
        pytest.param("semi;colon", id="punctuation"),
        pytest.param("dot.ted.key", id="dot"),
        pytest.param("comma,key,a,b", id="comma"),
        pytest.param("", id="empty"),
    ],
)
async def test_a_malformed_key_is_400_naming_the_header(client, sql, user, key: str) -> None:
    before = await scrape(client)
    r = await client.post(f"{PREFIX}/orders", json=ORDER, headers=headers(user, key))
    body = assert_problem(r, 400)
    assert body["type"] == "/problems/idempotency-key"
    assert [e["field"] for e in body["errors"]] == [FIELD]
    assert "Idempotency-Key" in body["detail"]
    assert await effects(sql) == 0
    assert await sql.fetchval("SELECT count(*) FROM idempotency_keys") == 0
    assert grew(before, await scrape(client), "idempotency_requests_total", outcome="bad_key") == 1


async def test_a_non_ascii_key_is_400(client, sql, user) -> None:
    r = await client.post(
        f"{PREFIX}/orders",
        json=ORDER,
        headers=[("X-Test-User", user), ("Idempotency-Key", "ключ-ключ-ключ".encode())],
    )
    assert assert_problem(r, 400)["errors"][0]["field"] == FIELD


async def test_a_missing_or_repeated_key_is_400(client, sql, user) -> None:
    missing = await client.post(f"{PREFIX}/orders", json=ORDER, headers=headers(user, None))
    assert assert_problem(missing, 400)["errors"] == [
        {"field": FIELD, "message": "the Idempotency-Key header is required on this route"}
    ]
    twice = await client.post(
        f"{PREFIX}/orders",
        json=ORDER,
        headers=[("X-Test-User", user), ("Idempotency-Key", new_key()), ("Idempotency-Key", new_key())],
    )
    assert assert_problem(twice, 400)["errors"][0]["field"] == FIELD
    assert await effects(sql) == 0


@pytest.mark.parametrize("key", ["A-b_0123", "Z" * 64], ids=["8-chars", "64-chars"])
async def test_keys_at_the_length_limits_are_accepted(client, user, key: str) -> None:
    r = await client.post(f"{PREFIX}/orders", json=ORDER, headers=headers(user, key))
    assert r.status_code == 201, r.text


# --------------------------------------------------------------------------------------
# Concurrency
# --------------------------------------------------------------------------------------
async def test_a_duplicate_while_the_first_is_in_flight_is_409_with_retry_after(client, sql, user) -> None:
    key, gate = new_key(), Gate()
    GATES["g"] = gate
    body = {**ORDER, "gate": "g"}
    first = asyncio.create_task(client.post(f"{PREFIX}/orders", json=body, headers=headers(user, key)))
    async with asyncio.timeout(10):
        await gate.entered.wait()
    before = await scrape(client)
    async with asyncio.timeout(10):  # a duplicate that ran would wait at the gate: fail, do not hang
        dup = await client.post(f"{PREFIX}/orders", json=body, headers=headers(user, key))
    problem = assert_problem(dup, 409)
    assert problem["type"] == "/problems/idempotency-in-flight"
    assert int(dup.headers["retry-after"]) >= 1
    assert grew(before, await scrape(client), "idempotency_requests_total", outcome="in_flight") == 1
    # Another body is 422 even while the first is in flight.
    async with asyncio.timeout(10):
        assert_problem(await client.post(f"{PREFIX}/orders", json=ORDER, headers=headers(user, key)), 422)
    gate.release.set()
    assert (await first).status_code == 201
    assert await effects(sql) == 1


async def test_twenty_concurrent_posts_with_one_key_run_the_work_once(client, sql, user) -> None:
    """The claimer is held inside the route until every other request has been answered: all 19 must
    have been refused with 409 while it was in flight, then one retry replays the single 201."""
    key, gate = new_key(), Gate()
    GATES["g20"] = gate
    body = {**ORDER, "gate": "g20"}
    tasks = [
        asyncio.create_task(client.post(f"{PREFIX}/orders", json=body, headers=headers(user, key)))
        for _ in range(20)
    ]
    claimer = await _wait_all_but_one(tasks)
    assert gate.entered.is_set()
    refused = [t.result() for t in tasks if t is not claimer]
    assert [r.status_code for r in refused] == [409] * 19, [r.text for r in refused if r.status_code != 409]
    gate.release.set()
    created = await claimer
    assert created.status_code == 201 and "idempotent-replayed" not in created.headers
    replay = await client.post(f"{PREFIX}/orders", json=body, headers=headers(user, key))
    assert replay.content == created.content and replay.headers["idempotent-replayed"] == "true"
    assert await effects(sql) == 1


async def test_twenty_concurrent_posts_across_two_apps_free_running(make_client, sql, user) -> None:
    """No gate: the requests race freely through two apps (two engines and pools, as two processes
    would). The work runs once; every 2xx carries the same body; the rest are 409s."""
    apps = [await make_client(routers=[router]), await make_client(routers=[router])]
    key = new_key()
    results = await asyncio.gather(
        *(apps[i % 2].post(f"{PREFIX}/orders", json=ORDER, headers=headers(user, key)) for i in range(20))
    )
    statuses = sorted(r.status_code for r in results)
    assert set(statuses) <= {201, 409}, statuses
    successes = [r for r in results if r.status_code == 201]
    assert successes, statuses
    assert len({r.content for r in successes}) == 1
    assert sum("idempotent-replayed" not in r.headers for r in successes) == 1  # one ran, others replayed
    assert await effects(sql) == 1


# --------------------------------------------------------------------------------------
# Expiry
# --------------------------------------------------------------------------------------
async def test_an_expired_key_is_free_again(client, sql, user) -> None:
    key = new_key()
    first = await client.post(f"{PREFIX}/orders", json=ORDER, headers=headers(user, key))
    assert first.status_code == 201
    await sql.execute(
        "UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE key = $1", key
    )
    # Expired: a new request with the key (even another body) runs and is stored afresh.
    reused = await client.post(f"{PREFIX}/orders", json={**ORDER, "qty": "7"}, headers=headers(user, key))
    assert reused.status_code == 201 and "idempotent-replayed" not in reused.headers
    assert reused.json()["id"] != first.json()["id"]
    row = await key_row(sql, user, key)
    assert row["state"] == "completed"
    assert await sql.fetchval("SELECT $1::timestamptz > now() + interval '23 hours'", row["expires_at"])
    replay = await client.post(f"{PREFIX}/orders", json={**ORDER, "qty": "7"}, headers=headers(user, key))
    assert replay.content == reused.content and replay.headers["idempotent-replayed"] == "true"
    assert await effects(sql) == 2


async def test_the_ttl_comes_from_the_settings(make_client, sql, user) -> None:
    client = await make_client(routers=[router], idempotency_ttl_seconds=120)
    key = new_key()
    assert (await client.post(f"{PREFIX}/orders", json=ORDER, headers=headers(user, key))).status_code == 201
    lifetime = await sql.fetchval(
        "SELECT extract(epoch FROM expires_at - created_at) FROM idempotency_keys WHERE key = $1", key
    )
    assert lifetime == 120


# --------------------------------------------------------------------------------------
# Failures and recovery
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("error", "status"),
    [
        pytest.param(Unprocessable("the broker refused it"), 422, id="4xx"),
        pytest.param(ServiceUnavailable("try later"), 503, id="5xx"),
        pytest.param(RuntimeError("bug"), 500, id="unexpected"),
    ],
)
async def test_a_route_error_releases_the_claim(client, sql, user, error: Exception, status: int) -> None:
    key = new_key()
    FAIL_NEXT.append(error)
    before = await scrape(client)
    failed = await client.post(f"{PREFIX}/fail", json=ORDER, headers=headers(user, key))
    assert_problem(failed, status)
    assert await effects(sql) == 0  # the work rolled back with the error
    assert await key_row(sql, user, key) is None
    assert grew(before, await scrape(client), "idempotency_released_total") == 1
    # The same request with the same key now runs.
    retried = await client.post(f"{PREFIX}/fail", json=ORDER, headers=headers(user, key))
    assert retried.status_code == 201 and "idempotent-replayed" not in retried.headers
    assert await effects(sql) == 1


async def test_a_body_that_fails_validation_releases_the_claim(client, sql, user) -> None:
    key = new_key()
    invalid = await client.post(
        f"{PREFIX}/orders", json={"symbol": "AAPL", "qty": "-1"}, headers=headers(user, key)
    )
    assert assert_problem(invalid, 422)["errors"][0]["field"] == "qty"
    assert await key_row(sql, user, key) is None
    # Were the claim kept, this corrected request would be refused as another body (422).
    fixed = await client.post(f"{PREFIX}/orders", json=ORDER, headers=headers(user, key))
    assert fixed.status_code == 201, fixed.text


async def test_a_kept_claim_survives_an_error_and_the_recovery_hook_completes_it(client, sql, user) -> None:
    """takeover_after=None and keep(): the order's case. An error after the outside effect leaves the
    key in flight (no automatic re-run, even once stale); the feature's recovery stores the answer."""
    key = new_key()
    failed = await client.post(f"{PREFIX}/outside", json=ORDER, headers=headers(user, key))
    assert_problem(failed, 503)
    row = await key_row(sql, user, key)
    assert row["state"] == "in_flight" and row["locked_at"] is not None
    assert_problem(await client.post(f"{PREFIX}/outside", json=ORDER, headers=headers(user, key)), 409)
    await sql.execute("UPDATE idempotency_keys SET locked_at = now() - interval '1 day' WHERE key = $1", key)
    assert_problem(await client.post(f"{PREFIX}/outside", json=ORDER, headers=headers(user, key)), 409)

    database = client.app.state.database
    async with database.own_transaction() as session:  # what the reconciler will do
        assert await complete_in_flight(
            session,
            user_id=uuid.UUID(user),
            key=key,
            status_code=202,
            content={"status": "pending_reconciliation"},
        )
    replay = await client.post(f"{PREFIX}/outside", json=ORDER, headers=headers(user, key))
    assert replay.status_code == 202 and replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == {"status": "pending_reconciliation"}
    assert replay.headers["content-type"] == "application/json"


async def _stall_then_take_over(client, sql, user: str, key: str, route: str):
    """Request A enters the route and stalls; its claim is made stale; request B (the same request)
    takes the claim over and stalls in the route too. Returns (A's task, B's gate)."""
    first, second = Gate(), Gate()
    GATES["stall"] = first
    body = {**ORDER, "gate": "stall"}
    slow = asyncio.create_task(client.post(f"{PREFIX}/{route}", json=body, headers=headers(user, key)))
    async with asyncio.timeout(10):
        await first.entered.wait()
        assert_problem(await client.post(f"{PREFIX}/{route}", json=body, headers=headers(user, key)), 409)
    await sql.execute(
        "UPDATE idempotency_keys SET locked_at = locked_at - $2 * interval '1 second' WHERE key = $1",
        key,
        TAKEOVER_AFTER + 1,
    )
    GATES["stall"] = second
    taker = asyncio.create_task(client.post(f"{PREFIX}/{route}", json=body, headers=headers(user, key)))
    async with asyncio.timeout(10):
        await second.entered.wait()
    first.release.set()
    return slow, taker, second


async def test_a_stale_claim_is_taken_over_and_the_slow_original_rolls_back(client, sql, user) -> None:
    """A stalls past takeover_after; B takes the claim over. A, finishing while B still runs, finds the
    claim is no longer its own: 409, and its work rolls back. B completes. One effect, B's."""
    key = new_key()
    slow, taker, taker_gate = await _stall_then_take_over(client, sql, user, key, "orders")
    async with asyncio.timeout(10):
        late = await slow
    assert_problem(late, 409)
    taker_gate.release.set()
    async with asyncio.timeout(10):
        retry = await taker
    assert retry.status_code == 201 and "idempotent-replayed" not in retry.headers
    assert await effects(sql) == 1
    body = {**ORDER, "gate": "stall"}
    replay = await client.post(f"{PREFIX}/orders", json=body, headers=headers(user, key))
    assert replay.content == retry.content


async def test_a_request_that_lost_its_claim_does_not_release_the_new_holders(client, sql, user) -> None:
    """A stalls, B takes over; then A fails. A's release must leave B's claim alone: a third request
    meanwhile is still refused (409), and only B runs the work."""
    key = new_key()
    FAIL_NEXT.append(Unprocessable("A fails after losing its claim"))
    slow, taker, taker_gate = await _stall_then_take_over(client, sql, user, key, "fail")
    async with asyncio.timeout(10):
        assert_problem(await slow, 422)
        third = await client.post(
            f"{PREFIX}/fail", json={**ORDER, "gate": "stall"}, headers=headers(user, key)
        )
    assert_problem(third, 409)
    taker_gate.release.set()
    async with asyncio.timeout(10):
        assert (await taker).status_code == 201
    assert await effects(sql) == 1


async def test_a_fresh_in_flight_claim_is_not_taken_over(client, sql, user) -> None:
    key, gate = new_key(), Gate()
    GATES["g"] = gate
    body = {**ORDER, "gate": "g"}
    first = asyncio.create_task(client.post(f"{PREFIX}/orders", json=body, headers=headers(user, key)))
    async with asyncio.timeout(10):
        await gate.entered.wait()
    await sql.execute(
        "UPDATE idempotency_keys SET locked_at = locked_at - $2 * interval '1 second' WHERE key = $1",
        key,
        TAKEOVER_AFTER - 5,
    )
    async with asyncio.timeout(10):
        assert_problem(await client.post(f"{PREFIX}/orders", json=body, headers=headers(user, key)), 409)
    gate.release.set()
    assert (await first).status_code == 201


async def test_a_route_that_returns_without_completing_is_a_500(client, sql, user) -> None:
    key = new_key()
    r = await client.post(f"{PREFIX}/forgets", json=ORDER, headers=headers(user, key))
    assert_problem(r, 500)
    assert (await key_row(sql, user, key))["state"] == "in_flight"


# --------------------------------------------------------------------------------------
# With the real current user as the owner (what the orders route does)
# --------------------------------------------------------------------------------------
async def _login(client: httpx.AsyncClient) -> dict[str, str]:
    email, password = f"idem-{uuid.uuid4().hex[:8]}@example.com", "correct horse battery staple"
    assert (
        await client.post("/v1/auth/signup", json={"email": email, "password": password})
    ).status_code == 201
    login = await client.post("/v1/auth/login", json={"email": email, "password": password})
    return {"Authorization": f"Bearer {login.json()['access_token']}"}


async def test_the_current_user_owns_the_keys(client, sql) -> None:
    auth, other = await _login(client), await _login(client)
    key = new_key()
    first = await client.post(f"{PREFIX}/as-user", json=ORDER, headers={**auth, "Idempotency-Key": key})
    assert first.status_code == 201
    replay = await client.post(f"{PREFIX}/as-user", json=ORDER, headers={**auth, "Idempotency-Key": key})
    assert replay.content == first.content and replay.headers["idempotent-replayed"] == "true"
    theirs = await client.post(f"{PREFIX}/as-user", json=ORDER, headers={**other, "Idempotency-Key": key})
    assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]
    no_token = await client.post(f"{PREFIX}/as-user", json=ORDER, headers={"Idempotency-Key": key})
    assert_problem(no_token, 401)
    assert await effects(sql) == 2


async def test_an_error_after_completing_in_the_request_session_never_waits_on_it(client, sql) -> None:
    """The request session (opened by the current-user dependency, so it ends after this dependency)
    still holds the completed row's lock when the release runs: the release must skip it, not wait
    for a rollback that only comes after it (that would hang until the statement timeout)."""
    auth, key = await _login(client), new_key()
    async with asyncio.timeout(10):
        r = await client.post(
            f"{PREFIX}/as-user", json={**ORDER, "symbol": "BOOM"}, headers={**auth, "Idempotency-Key": key}
        )
    assert_problem(r, 500)
    assert await effects(sql) == 0
    row = await sql.fetchrow("SELECT state, response_body FROM idempotency_keys WHERE key = $1", key)
    # The completion rolled back with the session; the claim stays until takeover_after (documented).
    assert row["state"] == "in_flight" and row["response_body"] is None


async def test_the_header_is_documented_on_the_route(client) -> None:
    app = client.app
    schema = app.openapi()
    parameters = schema["paths"][f"{PREFIX}/orders"]["post"]["parameters"]
    header = next(p for p in parameters if p["name"] == "Idempotency-Key")
    assert header["in"] == "header" and "8–64" in header["description"]
    assert json.dumps(schema)  # serialisable
