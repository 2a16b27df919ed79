"""Two instances behind one load balancer (issue 15): two REAL uvicorn processes (separate interpreters,
event loops, database pools, Redis pools, dispatchers and tool sandboxes) on two ports, sharing one
PostgreSQL database and one Redis database, in front of loopback fakes that count what they receive: Alpaca
Market Data (tests/outbound/fake_provider.py), the Alpaca Trading API (tests/orders/alpaca_fake.py) and
Discord (tests/support/fake_discord.py). The pair is started once for the module; every test splits its
requests between instance A and instance B — concurrently wherever "exactly once" is claimed — and every
assertion is one that per-process state would break:

* login limits: failed logins for one email spread over A and B hit the one ``RATE_LIMIT_LOGIN``; the
  sixth on either is a 429 (per process, A would have seen 3 and B 2). A concurrent burst over both lets
  exactly five through (per process: ten). One client address spraying emails over both: the same;
* breaker: ``BREAKER_FAIL_MAX`` failures of the market-data provider through A open the breaker for B,
  which answers at once with the circuit-open 503 without a request to the provider (per process, B would
  call it and wait for its slow failure); after the reset period exactly one half-open trial goes through
  across both;
* market-data single-flight: 40 concurrent identical uncached quote requests over A and B make ONE
  upstream request (per process: two), and a copy fetched through one is a HIT in the other;
* idempotency keys: one Idempotency-Key sent 20 times at once over A and B creates ONE broker order and
  ONE row; every 2xx is the same bytes (replays marked ``Idempotent-Replayed: true``), every other answer
  the in-flight 409, and a later retry on either replays the first answer;
* alert delivery: both instances run dispatchers; every alert (each user's enqueued alternately through A
  and B) is delivered exactly once, in the user's order, and the two logs together account for each once;
* the tool pool: ``RATE_LIMIT_TOOLS`` (per user, REST and MCP together) is one budget over both instances:
  of 12 concurrent calls split over A and B and over ``POST /v1/tools/{name}/execute`` and ``POST /mcp``,
  exactly 6 run (per process: all 12). The sandbox itself (``TOOL_WORKERS``, ``TOOL_MAX_WAITING``) is per
  instance, as docs/scaling.md says.

Every request the test sends carries a fresh ``X-Forwarded-For`` (the servers trust 127.0.0.1 as their
proxy, as behind a load balancer), so the per-IP limits only meet where a test means them to.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from tests.alerts.helpers import (
    HoldingDiscord,
    all_ended,
    assert_each_delivered_once_in_order,
    contents_for,
    enqueue,
    subscriber,
)
from tests.auth.helpers import PASSWORD, bearer, fetch, login, signup, signup_and_token, unique_email
from tests.market.conftest import ALPACA_KEY_ID, ALPACA_SECRET
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
from tests.outbound.fake_provider import SNAPSHOT_PATH, FakeProvider, Reply, alpaca_snapshot, slow_snapshot
from tests.support.metrics import grew, scrape
from tests.support.problems import assert_problem
from tests.support.servers import Server, Servers, eventually, flush_redis, server_env
from tests.support.settings import TEST_FERNET_KEY, TEST_JWT_SECRET, TEST_WEBHOOK_SECRET
from tests.tools.test_mcp import JSONRPC_HEADERS, OPTION, call_message

pytestmark = [pytest.mark.redis, pytest.mark.slow]

QUOTE = "/v1/market-data/quotes/{}"
LOGIN_LIMIT = 5  # RATE_LIMIT_LOGIN: 5/minute (on Redis a window starts at its first hit)
TOOLS_LIMIT = 6  # RATE_LIMIT_TOOLS: 6/minute
FAIL_MAX = 2
RESET_SECONDS = 2
SLOW_FAILURE = 1.5  # how long the failing provider takes to answer its 500
BROKER_TIMEOUT_SECONDS = 3.0
FIRST_POST_DELAY = 0.5  # the broker's first answer: long enough for the whole wave to overlap it
STOP_SECONDS = 15.0  # SIGTERM: uvicorn's graceful shutdown (3 s) plus the lifespan (the dispatcher's pass)
WRONG = "not the right password"


# ---------------------------------------------------------------------------------- the pair
@dataclass
class Pair:
    a: Server
    b: Server
    servers: Servers
    market: FakeProvider
    trading: FakeAlpacaTrading
    discord: HoldingDiscord

    @property
    def both(self) -> tuple[Server, Server]:
        return self.a, self.b


_addresses = itertools.count(1)


def client_address() -> str:
    """A client address no other request of the run used (198.18.0.0/15, the benchmarking range)."""
    n = next(_addresses)
    return f"198.{18 + n // 65536 % 2}.{n // 256 % 256}.{n % 256}"


def from_address(ip: str) -> dict[str, str]:
    """Headers that make the load balancer (the trusted proxy 127.0.0.1) say the request came from ``ip``."""
    return {"X-Forwarded-For": ip}


async def _fresh_address(request: httpx.Request) -> None:
    if "x-forwarded-for" not in request.headers:
        request.headers["X-Forwarded-For"] = client_address()


@pytest.fixture(scope="module")
async def fakes() -> AsyncIterator[tuple[FakeProvider, FakeAlpacaTrading, HoldingDiscord]]:
    market_data = await FakeProvider().start()
    try:
        async with fake_alpaca_trading() as trading, HoldingDiscord() as discord:
            yield market_data, trading, discord
    finally:
        await market_data.stop()


@pytest.fixture(scope="module")
async def pair(
    database_url: str,
    redis_url: str | None,
    fakes: tuple[FakeProvider, FakeAlpacaTrading, HoldingDiscord],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Pair]:
    """Instances A and B, started once for the module with settings that cover every scenario."""
    if redis_url is None:
        pytest.skip("needs Redis: set REDIS_URL (CI does)")
    market_data, trading, discord = fakes
    await flush_redis(redis_url)  # limits, breaker state and cached quotes of another run never leak in
    env = server_env(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        FRONTEND_URL="http://localhost:3000",
        JWT_SECRET=TEST_JWT_SECRET,
        STRIPE_WEBHOOK_SECRET=TEST_WEBHOOK_SECRET,
        TOKEN_ENCRYPTION_KEY=TEST_FERNET_KEY,
        APP_ENV="test",
        LOG_LEVEL="INFO",  # "alert sent" lines, and context for the failure messages
        TRUSTED_PROXIES="127.0.0.1",  # the test plays the load balancer: X-Forwarded-For names the client
        RATE_LIMIT_DEFAULT="100000/minute",
        RATE_LIMIT_SIGNUP="100000/hour",
        RATE_LIMIT_LOGIN=f"{LOGIN_LIMIT}/minute",
        RATE_LIMIT_ORDERS="100000/minute",
        RATE_LIMIT_ALERTS="100000/minute",
        RATE_LIMIT_TOOLS=f"{TOOLS_LIMIT}/minute",
        MARKET_DATA_PROVIDER="alpaca",
        ALPACA_DATA_BASE_URL=market_data.url,
        ALPACA_API_KEY_ID=ALPACA_KEY_ID,
        ALPACA_API_SECRET_KEY=ALPACA_SECRET,
        MARKET_DATA_CACHE_SECONDS="60",
        BROKER_PROVIDER="alpaca",
        ALPACA_API_BASE_URL=trading.fake.url,
        BROKER_TIMEOUT_SECONDS=str(BROKER_TIMEOUT_SECONDS),
        DISCORD_API_BASE_URL=discord.base_url,
        ALERT_RETRY_BASE_SECONDS="0.05",
        HTTP_TIMEOUT_SECONDS="3",
        BREAKER_FAIL_MAX=str(FAIL_MAX),
        BREAKER_RESET_SECONDS=str(RESET_SECONDS),
        TOOL_WORKERS="1",
    )
    workdir = tmp_path_factory.mktemp("two-instances")

    def describe() -> str:
        return (
            f"market data saw {[r.path for r in market_data.requests]}; broker saw "
            f"{[(r.method, r.path) for r in trading.fake.requests]}; {discord.summary()}"
        )

    servers = Servers(env, workdir, describe, stop_seconds=STOP_SECONDS)
    try:
        a, b = await asyncio.gather(servers.start(), servers.start())
        for server in (a, b):
            server.http.event_hooks["request"].append(_fresh_address)
        yield Pair(a, b, servers, market_data, trading, discord)
    finally:
        try:
            await servers.stop_all()
        finally:
            await flush_redis(redis_url)


@pytest.fixture
async def two(pair: Pair) -> AsyncIterator[Pair]:
    """The pair for one test: the market-data fake forgets the previous test's rules and requests, and
    every failure carries the fakes' view and both servers' output. (After each test the shared
    conftest empties the tables and the Redis database, so breaker state and limits start afresh.)"""
    pair.market.reset()
    with pair.servers.diagnosed():
        yield pair


async def scrapes(pair: Pair) -> list[str]:
    return list(await asyncio.gather(*(scrape(s.http) for s in pair.both)))


def assert_decided_by_redis(before: list[str], after: list[str], limit: str) -> None:
    """Every check of ``limit`` on both instances was decided by the shared count in Redis: none fell
    back to a per-process one (a Redis call past the limiter's timeout would be decided locally)."""
    for b, a in zip(before, after, strict=True):
        for counter in ("rate_limit_storage_errors_total", "rate_limit_storage_skipped_total"):
            assert grew(b, a, counter, limit=limit) == 0, (counter, limit)


# ---------------------------------------------------------------------------------- login limits
def assert_login_refused(r: httpx.Response, limit: str) -> None:
    body = assert_problem(r, 429)
    assert limit in body["detail"], body
    assert 1 <= int(r.headers["retry-after"]) <= 60, r.headers
    assert r.headers["x-ratelimit-remaining"] == "0" and r.headers["x-ratelimit-limit"] == str(LOGIN_LIMIT)
    assert "access_token" not in r.text


async def test_failed_logins_over_both_instances_hit_the_one_login_limit(two: Pair) -> None:
    a, b = two.both
    email = unique_email("shared-email")
    assert (await signup(a.http, email)).status_code == 201

    # Per email: five wrong passwords from five addresses, alternating A, B, A, B, A.
    for i, server in enumerate([a, b, a, b, a]):
        r = await login(server.http, email, WRONG, headers=from_address(f"10.30.0.{i + 1}"))
        assert r.status_code == 401, (server.name, r.text)
    # The sixth, on either instance and even with the right password, is over the one shared limit.
    for server, ip in ((b, "10.30.0.50"), (a, "10.30.0.51")):
        assert_login_refused(
            await login(server.http, email, PASSWORD, headers=from_address(ip)), "login-email"
        )

    # Per client address: one address spraying five unknown emails over both instances; its sixth
    # attempt, for a real account with the right password, is refused on the other instance.
    target = unique_email("shared-ip")
    assert (await signup(b.http, target)).status_code == 201
    for i, server in enumerate([b, a, b, a, b]):
        r = await login(server.http, unique_email(f"spray{i}"), WRONG, headers=from_address("10.31.0.7"))
        assert r.status_code == 401, (server.name, r.text)
    assert_login_refused(await login(a.http, target, PASSWORD, headers=from_address("10.31.0.7")), "login-ip")
    assert (await login(a.http, target, PASSWORD, headers=from_address("10.31.0.8"))).status_code == 200


async def test_a_concurrent_login_burst_over_both_instances_lets_exactly_the_limit_through(two: Pair) -> None:
    email = unique_email("burst")
    assert (await signup(two.a.http, email)).status_code == 201
    before = await scrapes(two)
    plan = [(two.both[i % 2], f"10.32.0.{i + 1}") for i in range(20)]
    responses = await asyncio.gather(
        *(login(server.http, email, PASSWORD, headers=from_address(ip)) for server, ip in plan)
    )
    assert_decided_by_redis(before, await scrapes(two), "login-email")
    seen = [(server.name, r.status_code) for (server, _), r in zip(plan, responses, strict=True)]
    assert sorted(r.status_code for r in responses) == [200] * LOGIN_LIMIT + [429] * (20 - LOGIN_LIMIT), seen
    for r in responses:
        if r.status_code == 429:
            assert_login_refused(r, "login-email")


# ---------------------------------------------------------------------------------- breaker
async def test_failures_through_a_open_the_breaker_for_b_which_answers_fast_without_calling(
    two: Pair,
) -> None:
    a, b = two.both
    fake = two.market
    fake.on(SNAPSHOT_PATH, alpaca_snapshot)
    for server in (a, b):  # warm both (connections, Redis pool): one successful call each
        assert (await server.http.get(QUOTE.format(f"WARM{server.name[-1]}"))).status_code == 200
    assert len(fake.requests) == 2

    # The provider fails slowly; FAIL_MAX failures through A (in flight together) open the breaker.
    fake.on(SNAPSHOT_PATH, Reply(500, {"message": "boom"}, delay=SLOW_FAILURE))  # a failure, never retried
    failed = await asyncio.gather(*(a.http.get(QUOTE.format(f"FAIL{i}")) for i in range(FAIL_MAX)))
    assert [r.status_code for r in failed] == [503] * FAIL_MAX, [r.text for r in failed]
    assert len(fake.requests) == 2 + FAIL_MAX

    # B refuses at once, from the shared state: nothing sent, no slow failure waited for.
    started = time.monotonic()
    refused = await b.http.get(QUOTE.format("MSFT"))
    elapsed = time.monotonic() - started
    assert refused.status_code == 503, refused.text
    assert "circuit open" in assert_problem(refused, 503)["detail"]
    assert 1 <= int(refused.headers["retry-after"]) <= RESET_SECONDS
    assert len(fake.requests) == 2 + FAIL_MAX, [r.path for r in fake.requests]  # B sent nothing
    assert elapsed < SLOW_FAILURE, f"B took {elapsed:.2f} s: it waited for the provider"
    assert 'circuit_breaker_state{provider="alpaca-data"} 2.0' in await scrape(b.http)

    # After the reset period (waiting it out is the behaviour under test), exactly one half-open trial
    # goes through across both instances; its success closes the breaker for both.
    await asyncio.sleep(RESET_SECONDS + 0.1)
    fake.on(SNAPSHOT_PATH, slow_snapshot(0.5))
    trial_wave = await asyncio.gather(
        *(s.http.get(QUOTE.format(f"T{i}")) for i, s in enumerate(two.both * 5))
    )
    assert sorted(r.status_code for r in trial_wave) == [200] + [503] * 9, [r.text for r in trial_wave]
    assert len(fake.requests) == 2 + FAIL_MAX + 1
    fake.on(SNAPSHOT_PATH, alpaca_snapshot)
    for server, symbol in ((a, "CLOSEDA"), (b, "CLOSEDB")):
        assert (await server.http.get(QUOTE.format(symbol))).status_code == 200
    assert len(fake.requests) == 2 + FAIL_MAX + 3


# ---------------------------------------------------------------------------------- single-flight
async def test_concurrent_identical_misses_over_both_instances_make_one_upstream_call(two: Pair) -> None:
    a, b = two.both
    fake = two.market
    fake.on(SNAPSHOT_PATH, slow_snapshot(1.0))  # keeps every request of the wave in flight together
    for server in (a, b):  # warm both without an upstream call: a bad symbol is a 422
        assert (await server.http.get(QUOTE.format("1BAD"))).status_code == 422
    assert fake.requests == []

    # 40 concurrent misses for one symbol, alternating between the instances: ONE upstream request.
    wave = await asyncio.gather(*(s.http.get(QUOTE.format("AAPL")) for s in two.both * 20))
    assert [r.status_code for r in wave] == [200] * 40, [r.text for r in wave if r.status_code != 200]
    assert {r.headers["x-cache"] for r in wave} == {"MISS"}  # all were waiting on the one fetch
    assert len({r.text for r in wave}) == 1
    assert [req.path for req in fake.requests] == ["/v2/stocks/AAPL/snapshot"]

    # A copy fetched through one instance is a HIT in the other, with no upstream call.
    fake.on(SNAPSHOT_PATH, alpaca_snapshot)
    first = await a.http.get(QUOTE.format("IBM"))
    assert first.status_code == 200 and first.headers["x-cache"] == "MISS"
    other = await b.http.get(QUOTE.format("IBM"))
    assert other.status_code == 200 and other.headers["x-cache"] == "HIT"
    assert other.json() == first.json()
    for server in (a, b):
        assert (await server.http.get(QUOTE.format("AAPL"))).headers["x-cache"] == "HIT"
    assert len(fake.requests) == 2


# ---------------------------------------------------------------------------------- idempotency keys
async def test_one_key_twenty_concurrent_posts_over_both_instances_make_one_order(
    two: Pair, database_url: str
) -> None:
    a, b = two.both
    alpaca = two.trading
    user_id, auth = await linked_trader(a.http, database_url, alpaca)
    for server in (a, b):  # warm both (database and Redis pools) before the wave
        warm = await asyncio.gather(*(server.http.get("/v1/orders", headers=auth) for _ in range(5)))
        assert [r.status_code for r in warm] == [200] * 5, [r.text for r in warm]
    assert alpaca.posts == []

    alpaca.post_delays = [FIRST_POST_DELAY]  # the first POST's answer is slow: the wave overlaps it
    key, body = new_key("wave"), market(qty="7")

    # One wave of 20 with the same key and body, alternating between the instances, all in flight
    # together. The first 10 race for the claim itself; the other 10 go out the moment the broker has
    # the order, so they land while its call is running (after phase (a), before (c)).
    async def send(server: Server, during_broker_call: bool) -> httpx.Response:
        if during_broker_call:
            await eventually(lambda: alpaca.posts, within=10, what="the broker received the POST")
        return await place(server.http, auth, body, key)

    plan = [(server, i >= 10) for i, server in enumerate(two.both * 10)]
    wave = await asyncio.gather(*(send(server, late) for server, late in plan))
    seen = [
        (s.name, late, r.status_code, r.headers.get("idempotent-replayed"))
        for (s, late), r in zip(plan, wave, strict=True)
    ]

    assert {r.status_code for r in wave} <= {201, 409}, [(x, r.text) for x, r in zip(seen, wave, strict=True)]
    created = [r for r in wave if r.status_code == 201]
    originals = [r for r in created if "idempotent-replayed" not in r.headers]
    assert len(originals) == 1, seen
    assert all(r.headers["idempotent-replayed"] == "true" for r in created if r is not originals[0]), seen
    assert {r.content for r in created} == {originals[0].content}, [r.text for r in created]
    for r in wave:
        if r.status_code == 409:
            assert_in_flight_conflict(r)
    # Those sent during the broker call, to both instances, found the key in flight.
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
    assert [(str(r["id"]), r["client_order_id"]) for r in rows] == [(order["id"], sent["client_order_id"])]
    assert await events(database_url, order["id"]) == [
        (None, "submitting", "submitted"),
        ("submitting", "accepted", "placed"),
    ]
    assert [
        (r["key"], r["state"], r["response_status"]) for r in await idempotency_rows(database_url, user_id)
    ] == [(key, "completed", 201)]

    # Afterwards, a retry on either instance replays the same bytes and reaches no broker.
    for server in (a, b):
        again = await place(server.http, auth, body, key)
        assert again.status_code == 201, again.text
        assert again.headers["idempotent-replayed"] == "true"
        assert again.content == originals[0].content
    assert len(alpaca.posts) == 1
    assert len(await order_rows(database_url)) == 1


# ---------------------------------------------------------------------------------- alert delivery
async def test_both_dispatchers_deliver_each_alert_exactly_once_in_each_users_order(
    two: Pair, database_url: str
) -> None:
    a, b = two.both
    users, per_user = 5, 8
    sent_before = {s.name: s.log_messages("alert sent") for s in (a, b)}
    subs = [await subscriber(two.both[u % 2], f"72{u:016d}") for u in range(users)]
    # Each user's alerts alternate between the instances (starting on a different one per user); the
    # users enqueue side by side. Both dispatchers run the whole time.
    await asyncio.gather(
        *(enqueue((a, b) if u % 2 == 0 else (b, a), s, contents_for(u, per_user)) for u, s in enumerate(subs))
    )
    counts = await all_ended(database_url, users * per_user)
    assert counts == {"sent": users * per_user}, counts
    await assert_each_delivered_once_in_order(database_url, two.discord, subs)
    # Learnt buckets are shared through the database: at most one 429 per webhook.
    for s in subs:
        assert two.discord.count_429(s.webhook_id) <= 1, two.discord.summary()
    # Both instances' logs together account for every alert, once.
    sent_by = {s.name: s.log_messages("alert sent") - sent_before[s.name] for s in (a, b)}
    assert sum(sent_by.values()) == users * per_user, sent_by


# ---------------------------------------------------------------------------------- the tool pool
async def call_tool(server: Server, auth: dict[str, str], way: str, rid: int) -> tuple[bool, httpx.Response]:
    """One ``greeks`` call through REST or MCP; whether it ran (True) or was refused by the limit."""
    if way == "rest":
        r = await server.http.post("/v1/tools/greeks/execute", json={"arguments": OPTION}, headers=auth)
        if r.status_code == 429:
            assert "tools" in assert_problem(r, 429)["detail"], r.text
            return False, r
        assert r.status_code == 200, r.text
        assert set(r.json()["result"]) >= {"price", "delta", "gamma", "vega", "theta", "rho"}
        return True, r
    message = call_message("greeks", OPTION, rid)
    r = await server.http.post("/mcp", json=message, headers={**JSONRPC_HEADERS, **auth})
    body = r.json()
    assert body["id"] == rid, body
    if r.status_code == 429:
        assert body["error"]["code"] == -32010 and int(r.headers["retry-after"]) > 0, body
        return False, r
    assert r.status_code == 200, r.text
    assert body["result"]["isError"] is False, body
    assert set(body["result"]["structuredContent"]) >= {"price", "delta"}, body
    return True, r


async def tool_outcomes(database_url: str, user_id: str) -> list[tuple[str, str]]:
    rows = await fetch(
        database_url, "SELECT outcome, via FROM tool_calls WHERE user_id = $1::uuid ORDER BY id", user_id
    )
    return [(r["outcome"], r["via"]) for r in rows]


async def test_tool_calls_through_both_instances_share_one_per_user_limit(
    two: Pair, database_url: str
) -> None:
    a, b = two.both
    # Start both sandboxes with another user's calls (the limit is per user: this costs the caller nothing).
    _, warm_token = await signup_and_token(a.http)
    for server in (a, b):
        assert (await call_tool(server, bearer(warm_token), "rest", 0))[0]

    user, token = await signup_and_token(b.http)
    auth = bearer(token)
    before = await scrapes(two)
    plan = [(a, "rest"), (b, "mcp"), (b, "rest"), (a, "mcp")] * 3
    results = await asyncio.gather(*(call_tool(s, auth, way, i) for i, (s, way) in enumerate(plan, 1)))
    assert_decided_by_redis(before, await scrapes(two), "tools")
    ran = [(s.name, way) for (s, way), (ok, _) in zip(plan, results, strict=True) if ok]
    assert len(ran) == TOOLS_LIMIT, f"{len(ran)} of 12 calls ran: {ran}"
    # Exactly that many reached a sandbox, over both instances (one audit row per call that ran).
    outcomes = await tool_outcomes(database_url, user["id"])
    assert sorted(o for o, _ in outcomes) == ["ok"] * TOOLS_LIMIT, outcomes
    assert sorted(via for _, via in outcomes) == sorted("mcp" if w == "mcp" else "http" for _, w in ran)

    # The budget is spent on both instances and both ways in; another user's is untouched.
    for server, way in ((a, "rest"), (b, "mcp")):
        assert not (await call_tool(server, auth, way, 99))[0]
    _, other = await signup_and_token(a.http)
    assert (await call_tool(b, bearer(other), "mcp", 100))[0]
