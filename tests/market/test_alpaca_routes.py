"""Market-data routes on MARKET_DATA_PROVIDER=alpaca against a loopback fake of Alpaca Market Data v2:
cache (HIT/MISS/STALE, single-flight), timeouts, retries, breaker, 429 back-off, pagination, parsing."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.market.conftest import ALPACA_KEY_ID, ALPACA_SECRET
from tests.outbound.fake_provider import (
    BARS_PATH,
    LATEST_QUOTE,
    LATEST_TRADE,
    SNAPSHOT_PATH,
    Drip,
    FakeProvider,
    Hang,
    Recorded,
    Reply,
    alpaca_snapshot,
    slow_snapshot,
)
from tests.support.metrics import grew, sample, scrape

QUOTE = "/v1/market-data/quotes/{}"


def assert_problem(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["type"]
    return body


def retry_after(r: httpx.Response) -> int:
    return int(r.headers["retry-after"])


async def timed_get(client: httpx.AsyncClient, url: str, **kw) -> tuple[httpx.Response, float]:
    start = time.perf_counter()
    r = await client.get(url, **kw)
    return r, time.perf_counter() - start


# --------------------------------------------------------------------------- cache and single-flight
async def test_50_concurrent_misses_make_one_upstream_request_then_hits(
    alpaca_app, fake: FakeProvider
) -> None:
    fake.on(SNAPSHOT_PATH, slow_snapshot(0.2))
    client = await alpaca_app()
    responses = await asyncio.gather(*(client.get(QUOTE.format("aapl")) for _ in range(50)))
    assert [r.status_code for r in responses] == [200] * 50
    assert {r.headers["x-cache"] for r in responses} == {"MISS"}
    assert len({r.text for r in responses}) == 1
    assert len(fake.requests) == 1  # ONE HTTP request in total: the snapshot
    assert fake.requests[0].path == "/v2/stocks/AAPL/snapshot"

    body = responses[0].json()
    assert body == {
        "symbol": "AAPL",
        "bid": "189.95",
        "ask": "190.05",
        "last": "190.01",
        "timestamp": "2024-01-02T15:30:00.123456Z",
    }

    repeats = await asyncio.gather(*(client.get(QUOTE.format("AAPL")) for _ in range(10)))
    assert {r.headers["x-cache"] for r in repeats} == {"HIT"}
    assert {r.text for r in repeats} == {responses[0].text}
    assert len(fake.requests) == 1


async def test_concurrent_bars_misses_make_one_upstream_call(alpaca_app, fake: FakeProvider) -> None:
    client = await alpaca_app()
    params = {"timeframe": "1Min", "start": "2024-01-02T14:30:00Z", "end": "2024-01-02T21:00:00Z", "limit": 5}
    responses = await asyncio.gather(
        *(client.get("/v1/market-data/bars/msft", params=params) for _ in range(50))
    )
    assert {r.status_code for r in responses} == {200}
    assert fake.count(BARS_PATH) == 1
    again = await client.get("/v1/market-data/bars/MSFT", params=params)
    assert again.headers["x-cache"] == "HIT" and fake.count(BARS_PATH) == 1


async def test_sends_alpaca_credentials_and_user_agent(alpaca_app, fake: FakeProvider) -> None:
    client = await alpaca_app()
    assert (await client.get(QUOTE.format("IBM"))).status_code == 200
    seen = fake.seen(SNAPSHOT_PATH)[0]
    assert seen.headers["apca-api-key-id"] == ALPACA_KEY_ID
    assert seen.headers["apca-api-secret-key"] == ALPACA_SECRET
    assert seen.headers["user-agent"].startswith("tradedesk/")
    assert seen.path == "/v2/stocks/IBM/snapshot"


async def test_provider_down_serves_stale_copy_else_503(alpaca_app, fake: FakeProvider) -> None:
    client = await alpaca_app(market_data_cache_seconds=1, breaker_fail_max=50)
    first = await client.get(QUOTE.format("AAPL"))
    assert first.status_code == 200 and first.headers["x-cache"] == "MISS"

    fake.on(SNAPSHOT_PATH, Reply(500, {"message": "internal"}))
    await asyncio.sleep(1.1)  # let the fresh window (MARKET_DATA_CACHE_SECONDS=1) lapse
    stale = await client.get(QUOTE.format("AAPL"))
    assert stale.status_code == 200, stale.text
    assert stale.headers["x-cache"] == "STALE"
    assert stale.json() == first.json()

    none = await client.get(QUOTE.format("MSFT"))
    body = assert_problem(none, 503)
    assert retry_after(none) >= 1
    assert "no cached copy" in body["detail"]


async def test_open_breaker_still_serves_stale_copies_without_calling(alpaca_app, fake: FakeProvider) -> None:
    client = await alpaca_app(market_data_cache_seconds=1, breaker_fail_max=2, breaker_reset_seconds=30)
    assert (await client.get(QUOTE.format("AAPL"))).status_code == 200
    fake.on(SNAPSHOT_PATH, Reply(500, {}))
    await asyncio.sleep(1.1)
    for symbol in ("X1", "X2"):
        assert_problem(await client.get(QUOTE.format(symbol)), 503)
    calls = fake.count(SNAPSHOT_PATH)
    r = await client.get(QUOTE.format("AAPL"))
    assert r.status_code == 200 and r.headers["x-cache"] == "STALE"
    assert fake.count(SNAPSHOT_PATH) == calls


# --------------------------------------------------------------------------- timeouts
async def test_hanging_provider_answers_503_within_timeout_plus_one_second(
    alpaca_app, fake: FakeProvider
) -> None:
    fake.on(SNAPSHOT_PATH, Hang())
    client = await alpaca_app(http_timeout_seconds=1)
    r, elapsed = await timed_get(client, QUOTE.format("AAPL"))
    body = assert_problem(r, 503)
    assert "did not answer in time" in body["detail"]
    assert elapsed < 2.0, elapsed
    assert fake.count(SNAPSHOT_PATH) == 1  # a read timeout is not retried


async def test_slow_drip_provider_is_cut_at_the_total_deadline(alpaca_app, fake: FakeProvider) -> None:
    # One byte every 0.2 s never trips httpx's per-chunk read timeout (1 s); only our deadline stops it.
    fake.on(SNAPSHOT_PATH, Drip(interval=0.2, size=200))
    client = await alpaca_app(http_timeout_seconds=1)
    r, elapsed = await timed_get(client, QUOTE.format("AAPL"))
    assert_problem(r, 503)
    assert elapsed < 2.0, elapsed


# --------------------------------------------------------------------------- retries
async def test_get_is_retried_on_503_then_succeeds(alpaca_app, fake: FakeProvider) -> None:
    fake.on(SNAPSHOT_PATH, Reply(503, {}), Reply(503, {}), alpaca_snapshot)
    client = await alpaca_app(http_timeout_seconds=5)
    before = await scrape(client)
    r = await client.get(QUOTE.format("AAPL"))
    assert r.status_code == 200, r.text
    assert fake.count(SNAPSHOT_PATH) == 3
    assert grew(before, await scrape(client), "external_api_retries_total", provider="alpaca-data") == 2


# --------------------------------------------------------------------------- breaker
async def test_breaker_opens_answers_fast_without_calling_then_one_trial_closes_it(
    alpaca_app, fake: FakeProvider
) -> None:
    fake.on(SNAPSHOT_PATH, Reply(500, {"message": "boom"}))  # 500 is a failure but not retried
    client = await alpaca_app(breaker_fail_max=3, breaker_reset_seconds=1)
    for symbol in ("A", "B", "C"):
        assert_problem(await client.get(QUOTE.format(symbol)), 503)
    assert fake.count(SNAPSHOT_PATH) == 3

    before = await scrape(client)
    for symbol in ("D", "E", "F"):
        r = await client.get(QUOTE.format(symbol))
        body = assert_problem(r, 503)
        assert retry_after(r) == 1  # the remaining open time, rounded up
        assert "circuit open" in body["detail"]
    # Answered without calling: the provider saw nothing while open, and each refusal was the breaker's.
    assert fake.count(SNAPSHOT_PATH) == 3
    metrics = await scrape(client)
    assert sample(metrics, "circuit_breaker_state", provider="alpaca-data") == 2.0
    assert (
        grew(before, metrics, "external_api_requests_total", provider="alpaca-data", outcome="circuit_open")
        == 3
    )

    await asyncio.sleep(1.05)  # BREAKER_RESET_SECONDS=1
    fake.on(SNAPSHOT_PATH, slow_snapshot(0.3))
    trial_wave = await asyncio.gather(*(client.get(QUOTE.format(f"S{i}")) for i in range(10)))
    statuses = sorted(r.status_code for r in trial_wave)
    assert statuses == [200] + [503] * 9, statuses
    assert fake.count(SNAPSHOT_PATH) == 4  # exactly one trial went through

    after = await client.get(QUOTE.format("G"))  # the successful trial closed the breaker
    assert after.status_code == 200 and fake.count(SNAPSHOT_PATH) == 5
    metrics = (await client.get("/metrics")).text
    assert 'circuit_breaker_state{provider="alpaca-data"} 0.0' in metrics


async def test_failed_trial_reopens_the_breaker(alpaca_app, fake: FakeProvider) -> None:
    fake.on(SNAPSHOT_PATH, Reply(500, {}))
    client = await alpaca_app(breaker_fail_max=2, breaker_reset_seconds=1)
    for symbol in ("A", "B"):
        assert_problem(await client.get(QUOTE.format(symbol)), 503)
    await asyncio.sleep(1.05)
    assert_problem(await client.get(QUOTE.format("C")), 503)  # the trial, failing
    assert fake.count(SNAPSHOT_PATH) == 3
    body = assert_problem(await client.get(QUOTE.format("D")), 503)
    assert "circuit open" in body["detail"] and fake.count(SNAPSHOT_PATH) == 3  # open again: no call


async def test_4xx_answers_do_not_open_the_breaker(alpaca_app, fake: FakeProvider) -> None:
    fake.on(SNAPSHOT_PATH, Reply(404, {"message": "not found"}))
    client = await alpaca_app(breaker_fail_max=2)
    for symbol in (
        "NOPEA",
        "NOPEB",
        "NOPEC",
        "NOPED",
        "NOPEE",
    ):  # distinct: a "not found" is cached per symbol
        body = assert_problem(await client.get(QUOTE.format(symbol)), 404)
        assert symbol in body["detail"]
    assert fake.count(SNAPSHOT_PATH) == 5  # every one reached the provider: the breaker stayed closed
    fake.on(SNAPSHOT_PATH, alpaca_snapshot)
    assert (await client.get(QUOTE.format("YEP"))).status_code == 200


# --------------------------------------------------------------------------- provider rate limit
async def test_provider_429_is_honoured_stale_if_copy_else_503_with_its_reset(
    alpaca_app, fake: FakeProvider
) -> None:
    client = await alpaca_app(market_data_cache_seconds=1)
    assert (await client.get(QUOTE.format("AAPL"))).status_code == 200
    fake.on(SNAPSHOT_PATH, Reply(429, {"message": "too many requests"}, headers={"Retry-After": "30"}))
    await asyncio.sleep(1.1)

    r = await client.get(QUOTE.format("AAPL"))
    assert r.status_code == 200 and r.headers["x-cache"] == "STALE"
    assert fake.count(SNAPSHOT_PATH) == 2  # a 30 s Retry-After is over the cap: no retry, no sleep

    r = await client.get(QUOTE.format("MSFT"))
    body = assert_problem(r, 503)
    assert 28 <= retry_after(r) <= 30
    assert "rate limit" in body["detail"]
    assert fake.count(SNAPSHOT_PATH) == 2  # no upstream call until the provider's reset


async def test_alpaca_x_ratelimit_reset_epoch_is_honoured(alpaca_app, fake: FakeProvider) -> None:
    reset = int(time.time()) + 20
    fake.on(
        SNAPSHOT_PATH, Reply(429, {}, headers={"X-RateLimit-Reset": str(reset), "X-RateLimit-Remaining": "0"})
    )
    client = await alpaca_app()
    r = await client.get(QUOTE.format("AAPL"))
    assert_problem(r, 503)
    assert 18 <= retry_after(r) <= 21
    assert fake.count(SNAPSHOT_PATH) == 1


# --------------------------------------------------------------------------- parsing and pagination
async def test_bars_pagination_is_followed_up_to_limit(alpaca_app, fake: FakeProvider) -> None:
    from tests.outbound.fake_provider import alpaca_bars

    fake.on(BARS_PATH, alpaca_bars(page_size=3))
    client = await alpaca_app()
    r = await client.get(
        "/v1/market-data/bars/aapl",
        params={
            "timeframe": "1Min",
            "start": "2024-01-02T14:30:00Z",
            "end": "2024-01-02T21:00:00Z",
            "limit": 7,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["symbol"] == "AAPL" and body["timeframe"] == "1Min"
    assert len(body["bars"]) == 7
    assert body["bars"][0] == {
        "t": "2024-01-02T14:30:00Z",
        "o": "100.0",
        "h": "100.5",
        "l": "99.5",
        "c": "100.25",
        "v": "1000",
    }
    assert [b["t"] for b in body["bars"]] == sorted(b["t"] for b in body["bars"])
    pages = fake.seen(BARS_PATH)
    assert [p.query.get("page_token") for p in pages] == [None, "3", "6"]
    assert [p.query["limit"] for p in pages] == ["7", "4", "1"]
    assert {p.query["timeframe"] for p in pages} == {"1Min"}
    assert (
        pages[0].query["start"] == "2024-01-02T14:30:00Z" and pages[0].query["end"] == "2024-01-02T21:00:00Z"
    )


async def test_bars_stop_when_there_is_no_next_page(alpaca_app, fake: FakeProvider) -> None:
    def last_page(req: Recorded) -> Reply:
        return Reply(
            json={
                "symbol": "AAPL",
                "next_page_token": None,
                "bars": [
                    {
                        "t": "2024-01-02T00:00:00Z",
                        "o": 1.5,
                        "h": 2,
                        "l": 1,
                        "c": 1.75,
                        "v": 10,
                        "n": 1,
                        "vw": 1.6,
                    }
                ],
            }
        )

    fake.on(BARS_PATH, last_page)
    client = await alpaca_app()
    r = await client.get(
        "/v1/market-data/bars/AAPL", params={"start": "2024-01-01", "end": "2024-01-10", "limit": 100}
    )
    assert r.status_code == 200 and len(r.json()["bars"]) == 1
    assert r.json()["timeframe"] == "1Day"
    assert fake.count(BARS_PATH) == 1


async def test_empty_bars_from_alpaca_is_an_empty_list(alpaca_app, fake: FakeProvider) -> None:
    fake.on(BARS_PATH, Reply(json={"symbol": "AAPL", "bars": None, "next_page_token": None}))
    client = await alpaca_app()
    r = await client.get("/v1/market-data/bars/AAPL", params={"start": "2024-01-01", "end": "2024-01-02"})
    assert r.status_code == 200 and r.json()["bars"] == []


async def test_unparseable_provider_answer_is_503_not_500(alpaca_app, fake: FakeProvider) -> None:
    fake.on(SNAPSHOT_PATH, Reply(body=b"<html>oops</html>"))
    client = await alpaca_app()
    assert_problem(await client.get(QUOTE.format("AAPL")), 503)
    fake.on(
        SNAPSHOT_PATH, Reply(json={"symbol": "AAPL", "latestQuote": {"t": "yesterday", "ap": 1, "bp": 1}})
    )
    assert_problem(await client.get(QUOTE.format("AAPL")), 503)
    fake.on(SNAPSHOT_PATH, lambda req: alpaca_snapshot(req, trade={**LATEST_TRADE, "p": "NaN"}))
    assert_problem(await client.get(QUOTE.format("AAPL")), 503)


async def test_refused_credentials_answer_503_and_do_not_open_the_breaker(
    alpaca_app, fake: FakeProvider
) -> None:
    fake.on(SNAPSHOT_PATH, Reply(401, {"message": "unauthorized."}))
    client = await alpaca_app(breaker_fail_max=2)
    for _ in range(3):
        assert_problem(await client.get(QUOTE.format("AAPL")), 503)
    assert fake.count(SNAPSHOT_PATH) == 3


async def test_quote_maps_the_snapshot_in_one_request(alpaca_app, fake: FakeProvider) -> None:
    client = await alpaca_app()
    r = await client.get(QUOTE.format("MSFT"))
    assert r.status_code == 200, r.text
    # bid/ask from latestQuote (bp/ap), last from latestTrade (p); the quote (15:30:00.123456789) is newer
    # than the trade (15:29:59.5), so it gives the timestamp (nanoseconds cut to microseconds).
    assert r.json() == {
        "symbol": "MSFT",
        "bid": "189.95",
        "ask": "190.05",
        "last": "190.01",
        "timestamp": "2024-01-02T15:30:00.123456Z",
    }
    assert [req.path for req in fake.requests] == ["/v2/stocks/MSFT/snapshot"]


async def test_timestamp_is_the_newer_of_quote_and_trade(alpaca_app, fake: FakeProvider) -> None:
    fake.on(
        SNAPSHOT_PATH,
        lambda req: alpaca_snapshot(req, trade={**LATEST_TRADE, "t": "2024-01-02T15:30:01.25Z"}),
    )
    client = await alpaca_app()
    body = (await client.get(QUOTE.format("AAPL"))).json()
    assert body["timestamp"] == "2024-01-02T15:30:01.250000Z" and body["last"] == "190.01"
    assert len(fake.requests) == 1


@pytest.mark.parametrize("trade", [None, {**LATEST_TRADE, "p": None}])
async def test_missing_latest_trade_gives_null_last(alpaca_app, fake: FakeProvider, trade) -> None:
    fake.on(SNAPSHOT_PATH, lambda req: alpaca_snapshot(req, trade=trade))
    client = await alpaca_app()
    r = await client.get(QUOTE.format("AAPL"))
    assert r.status_code == 200, r.text
    assert r.json()["last"] is None
    assert r.json()["timestamp"] == "2024-01-02T15:30:00.123456Z"  # the quote's
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    "reply",
    [
        Reply(404, {"message": "not found"}),
        Reply(422, {"message": "invalid symbol: ZZZZ"}),
        Reply(
            json={
                "symbol": "ZZZZ",
                "latestTrade": None,
                "latestQuote": None,
                "minuteBar": None,
                "dailyBar": None,
                "prevDailyBar": None,
            }
        ),
        Reply(
            json={"symbol": "ZZZZ", "latestTrade": LATEST_TRADE, "latestQuote": {**LATEST_QUOTE, "bp": None}}
        ),
    ],
    ids=["404", "422-invalid-symbol", "empty-snapshot", "no-bid"],
)
async def test_unknown_symbol_or_no_quote_is_404(alpaca_app, fake: FakeProvider, reply: Reply) -> None:
    fake.on(SNAPSHOT_PATH, reply)
    client = await alpaca_app(breaker_fail_max=1)
    body = assert_problem(await client.get(QUOTE.format("ZZZZ")), 404)
    assert "ZZZZ" in body["detail"]
    assert len(fake.requests) == 1
    fake.on(SNAPSHOT_PATH, alpaca_snapshot)  # not a failure: the breaker (1 failure opens it) stayed closed
    assert (await client.get(QUOTE.format("AAPL"))).status_code == 200


# --------------------------------------------------------------------------- shared state through Redis
@pytest.mark.redis
async def test_single_flight_and_cache_shared_across_two_instances(alpaca_app, fake: FakeProvider) -> None:
    fake.on(SNAPSHOT_PATH, slow_snapshot(0.3))
    one = await alpaca_app(use_redis=True)
    two = await alpaca_app(use_redis=True)
    responses = await asyncio.gather(*(c.get(QUOTE.format("AAPL")) for c in [one, two] * 25))
    assert {r.status_code for r in responses} == {200}
    assert len({r.text for r in responses}) == 1
    assert len(fake.requests) == 1

    # A copy fetched by one instance is a HIT on the other.
    assert (await one.get(QUOTE.format("IBM"))).headers["x-cache"] == "MISS"
    r = await two.get(QUOTE.format("IBM"))
    assert r.headers["x-cache"] == "HIT" and len(fake.requests) == 2


@pytest.mark.redis
async def test_leader_failure_is_shared_with_waiting_instances(alpaca_app, fake: FakeProvider) -> None:
    fake.on(SNAPSHOT_PATH, Reply(500, {}, delay=0.3))
    one = await alpaca_app(use_redis=True, breaker_fail_max=50)
    two = await alpaca_app(use_redis=True, breaker_fail_max=50)
    responses = await asyncio.gather(*(c.get(QUOTE.format("AAPL")) for c in [one, two] * 10))
    assert {r.status_code for r in responses} == {503}
    assert fake.count(SNAPSHOT_PATH) == 1  # the other instance waited for the leader's outcome


@pytest.mark.redis
async def test_unknown_symbol_is_asked_once_across_instances(alpaca_app, fake: FakeProvider) -> None:
    fake.on(SNAPSHOT_PATH, Reply(404, {"message": "not found"}, delay=0.3))
    one = await alpaca_app(use_redis=True)
    two = await alpaca_app(use_redis=True)
    responses = await asyncio.gather(*(c.get(QUOTE.format("NOPE")) for c in [one, two] * 10))
    assert {r.status_code for r in responses} == {404}
    assert fake.count(SNAPSHOT_PATH) == 1


@pytest.mark.redis
async def test_breaker_state_shared_across_two_instances(alpaca_app, fake: FakeProvider) -> None:
    fake.on(SNAPSHOT_PATH, Reply(500, {}))
    one = await alpaca_app(use_redis=True, breaker_fail_max=3, breaker_reset_seconds=1)
    two = await alpaca_app(use_redis=True, breaker_fail_max=3, breaker_reset_seconds=1)
    for symbol in ("A", "B", "C"):
        assert_problem(await one.get(QUOTE.format(symbol)), 503)
    assert fake.count(SNAPSHOT_PATH) == 3
    r = await two.get(QUOTE.format("D"))  # the other instance: refused by the shared state, no call
    assert "circuit open" in assert_problem(r, 503)["detail"]
    assert retry_after(r) == 1
    assert fake.count(SNAPSHOT_PATH) == 3

    await asyncio.sleep(1.05)
    fake.on(SNAPSHOT_PATH, slow_snapshot(0.3))
    wave = await asyncio.gather(*(c.get(QUOTE.format(f"T{i}")) for i, c in enumerate([one, two] * 5)))
    assert sorted(r.status_code for r in wave) == [200] + [503] * 9
    assert fake.count(SNAPSHOT_PATH) == 4  # one trial across both instances
    assert (await two.get(QUOTE.format("E"))).status_code == 200
    assert (await one.get(QUOTE.format("F"))).status_code == 200


async def test_redis_down_falls_back_to_local_state_never_500(alpaca_app, fake: FakeProvider) -> None:
    client = await alpaca_app(redis_url="redis://127.0.0.1:1/0", breaker_fail_max=2)
    before = await scrape(client)
    first = await client.get(QUOTE.format("AAPL"))
    assert first.status_code == 200 and first.headers["x-cache"] == "MISS"
    assert (await client.get(QUOTE.format("AAPL"))).headers["x-cache"] == "HIT"
    fake.on(SNAPSHOT_PATH, Reply(500, {}))
    for symbol in ("A", "B"):
        assert_problem(await client.get(QUOTE.format(symbol)), 503)
    calls = fake.count(SNAPSHOT_PATH)
    body = assert_problem(await client.get(QUOTE.format("C")), 503)
    assert "circuit open" in body["detail"]  # the local breaker opened: no call
    assert fake.count(SNAPSHOT_PATH) == calls
    after = await scrape(client)
    # This app fell back for both (each fallback counts once per failed Redis call, one per cooldown).
    assert grew(before, after, "shared_state_fallbacks_total", component="breaker") >= 1
    assert grew(before, after, "shared_state_fallbacks_total", component="cache") >= 1


async def test_lifespan_builds_one_client_per_provider_and_closes_it(
    database_url: str, fake: FakeProvider
) -> None:
    from asgi_lifespan import LifespanManager

    from app.main import create_app
    from tests.support.settings import make_settings

    app = create_app(
        make_settings(database_url, market_data_provider="alpaca", alpaca_data_base_url=fake.url)
    )
    async with LifespanManager(app):
        client = app.state.outbound["alpaca-data"]
        assert client.deadline == app.state.settings.http_timeout_seconds
        inner = client._client
        assert not inner.is_closed and inner.headers["user-agent"].startswith("tradedesk/")
    assert inner.is_closed
