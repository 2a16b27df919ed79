"""Large bars answers (security review, issue 10, item 4): their JSON is built off the event loop, once,
and served from the cache as stored bytes; one cached entry is bounded (``cache.MAX_ENTRY_BYTES``): a bigger
answer is served but not cached."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from app.core.errors import NotFound
from app.market.deps import get_market_data
from app.providers.market_data import MarketData, base
from app.providers.market_data import cache as md_cache
from app.providers.market_data.base import Bar, BarsQuery, Quote, Timeframe
from app.providers.market_data.cache import CacheStatus, MarketDataCache

BARS = "/v1/market-data/bars/AAPL"


class Stamp(dt.datetime):
    """A bar time that records which thread turned it into JSON text (``iso`` converts it to UTC)."""

    threads: list[int]

    def astimezone(self, tz: dt.tzinfo | None = None) -> dt.datetime:
        Stamp.threads.append(threading.get_ident())
        return super().astimezone(tz)


class RecordingProvider:
    """Bars whose times report the thread that rendered them."""

    name = "recording"

    def grid(self, timeframe: Timeframe) -> base.Grid:
        return base.EpochGrid(timeframe.seconds)

    async def latest_quote(self, symbol: str) -> Quote:
        raise NotFound(f"No quote for {symbol}.")

    async def bars(self, query: BarsQuery) -> list[Bar]:
        first = int(query.start.timestamp())
        one = Decimal("1.00")
        return [
            Bar(
                t=Stamp.fromtimestamp(first + i * query.timeframe.seconds, dt.UTC),
                o=one,
                h=one,
                l=one,
                c=one,
                v=Decimal(1),
            )
            for i in range(query.limit)
        ]

    async def aclose(self) -> None:
        return None


@pytest.fixture
async def recording_client(make_client):
    market = MarketData(
        provider=RecordingProvider(),
        cache=MarketDataCache(
            namespace="test:large", provider="recording", fresh_seconds=60, fetch_timeout=1
        ),
    )

    async def market_data() -> MarketData:
        return market

    return await make_client(
        app_hook=lambda app: app.dependency_overrides.update({get_market_data: market_data})
    )


@pytest.mark.parametrize(("limit", "off_loop"), [(5000, True), (10, False)])
async def test_large_answers_are_rendered_off_the_event_loop_small_ones_on_it(
    recording_client, limit: int, off_loop: bool
) -> None:
    loop_thread = threading.get_ident()  # the test, the app and its event loop share this thread
    Stamp.threads = []
    params = {
        "timeframe": "1Min",
        "start": "2024-01-02T00:00:00Z",
        "end": "2024-01-31T00:00:00Z",
        "limit": limit,
    }
    r = await recording_client.get(BARS, params=params)
    assert r.status_code == 200 and len(r.json()["bars"]) == limit
    assert len(Stamp.threads) == limit
    assert (loop_thread not in Stamp.threads) is off_loop, (
        "rendered on the event loop" if off_loop else "hopped"
    )
    Stamp.threads = []
    again = await recording_client.get(BARS, params=params)
    assert again.headers["x-cache"] == "HIT" and again.content == r.content
    assert Stamp.threads == []  # a HIT serves the stored text: nothing is rendered again


async def test_the_largest_legitimate_answer_fits_the_entry_bound(client) -> None:
    params = {
        "timeframe": "1Min",
        "start": "2024-01-02T00:00:00Z",
        "end": "2024-02-01T00:00:00Z",
        "limit": 10_000,
    }
    r = await client.get(BARS, params=params)
    assert r.status_code == 200 and len(r.json()["bars"]) == 10_000
    assert (
        len(r.content) < md_cache.MAX_ENTRY_BYTES / 2
    )  # room for bigger prices and volumes than the synthetic ones
    assert (await client.get(BARS, params=params)).headers["x-cache"] == "HIT"


async def test_an_entry_over_the_bound_is_served_but_not_cached() -> None:
    cache = MarketDataCache(
        namespace="test:large", provider="test", fresh_seconds=60, fetch_timeout=1, max_entry_bytes=10_000
    )
    calls = 0

    async def fetch(size: int):
        nonlocal calls
        calls += 1
        return b"x" * size

    for _ in range(2):
        assert await cache.get_or_fetch("bars", "big", lambda: fetch(20_000)) == (
            b"x" * 20_000,
            CacheStatus.MISS,
        )
    assert calls == 2 and len(cache._local) == 0
    assert await cache.get_or_fetch("bars", "small", lambda: fetch(5_000)) == (b"x" * 5_000, CacheStatus.MISS)
    assert await cache.get_or_fetch("bars", "small", lambda: fetch(5_000)) == (b"x" * 5_000, CacheStatus.HIT)
    assert calls == 3


@pytest.mark.redis
async def test_an_entry_over_the_bound_is_not_written_to_redis(require_redis: str) -> None:
    redis = aioredis.from_url(require_redis)
    try:
        cache = MarketDataCache(
            namespace="test:large",
            provider="test",
            fresh_seconds=60,
            fetch_timeout=1,
            redis=redis,
            max_entry_bytes=10_000,
        )

        async def big() -> bytes:
            return b"x" * 20_000

        async def small() -> bytes:
            return b"y" * 5_000

        assert (await cache.get_or_fetch("bars", "big", big))[1] is CacheStatus.MISS
        assert await redis.exists("test:large:v:bars:big") == 0
        assert (await cache.get_or_fetch("bars", "big", big))[1] is CacheStatus.MISS  # nor kept in L1
        assert (await cache.get_or_fetch("bars", "small", small))[1] is CacheStatus.MISS
        stored = await redis.get("test:large:v:bars:small")
        assert (
            stored is not None and stored.endswith(b"y" * 5_000) and len(stored) < 5_100
        )  # raw, not escaped
        cache._l1 = None  # read it back from Redis, not from L1
        assert await cache.get_or_fetch("bars", "small", small) == (b"y" * 5_000, CacheStatus.HIT)
    finally:
        await redis.aclose()


@pytest.mark.redis
async def test_an_entry_in_the_previous_format_is_never_served(make_client, require_redis: str) -> None:
    # Earlier versions stored a bars answer as a JSON object under the bare query; a process of this version
    # sharing their Redis (a rolling deploy) must neither serve nor trip over it.
    client = await make_client(use_redis=True)
    params = {"timeframe": "1Day", "start": "2024-01-02T00:00:00Z", "end": "2024-01-05T00:00:00Z", "limit": 3}
    old_key = "tradedesk:md:synthetic:v:bars:AAPL:1Day:2024-01-02T00:00:00Z:2024-01-05T00:00:00Z:3"
    redis = aioredis.from_url(require_redis)
    try:
        await redis.set(
            old_key,
            json.dumps({"at": time.time(), "v": {"symbol": "AAPL", "timeframe": "1Day", "bars": []}}),
            px=60_000,
        )
        r = await client.get(BARS, params=params)
        assert r.status_code == 200 and r.headers["x-cache"] == "MISS" and len(r.json()["bars"]) == 3
        again = await client.get(BARS, params=params)
        assert again.headers["x-cache"] == "HIT" and again.content == r.content
        assert await redis.exists(old_key) == 1  # untouched: it expires on its own
    finally:
        await redis.aclose()
