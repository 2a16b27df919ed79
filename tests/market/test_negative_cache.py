"""An unknown symbol's "not found" is cached (security review, issue 10, item 4): a flood of requests for
symbols the provider does not know reaches the provider once per symbol and kind, not once per request.
The negative entry is kept per kind and symbol, for ``NOT_FOUND_SECONDS`` (a minute), then expires."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from app.core.errors import NotFound
from app.providers.market_data import cache as md_cache
from app.providers.market_data.cache import CacheStatus, MarketDataCache
from tests.outbound.fake_provider import BARS_PATH, SNAPSHOT_PATH, FakeProvider, Reply, alpaca_snapshot
from tests.support.metrics import grew, scrape

QUOTE = "/v1/market-data/quotes/{}"
BARS = "/v1/market-data/bars/{}"
NOT_FOUND = Reply(404, {"message": "not found"})


def assert_404(r, symbol: str) -> None:
    assert r.status_code == 404, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert symbol in r.json()["detail"]


async def test_unknown_symbol_quote_reaches_the_provider_once_a_minute(
    alpaca_app, fake: FakeProvider
) -> None:
    fake.on(SNAPSHOT_PATH, NOT_FOUND)
    client = await alpaca_app()
    before = await scrape(client)
    first = await client.get(QUOTE.format("NOPE"))
    assert_404(first, "NOPE")
    assert first.headers["x-cache"] == "MISS"
    for _ in range(20):
        r = await client.get(QUOTE.format("nope"))
        assert_404(r, "NOPE")
        assert r.headers["x-cache"] == "HIT"  # answered from the negative entry
    assert fake.count(SNAPSHOT_PATH) == 1
    assert (
        grew(before, await scrape(client), "market_data_cache_total", kind="quote", result="NOT_FOUND") == 20
    )


async def test_the_negative_entry_is_per_symbol_and_per_kind(alpaca_app, fake: FakeProvider) -> None:
    fake.on(SNAPSHOT_PATH, NOT_FOUND).on(BARS_PATH, Reply(422, {"message": "invalid symbol: NOPE"}))
    client = await alpaca_app()
    assert_404(await client.get(QUOTE.format("NOPE")), "NOPE")
    assert_404(await client.get(QUOTE.format("NOPF")), "NOPF")  # another symbol: asked
    assert fake.count(SNAPSHOT_PATH) == 2
    # Bars are another kind (a symbol may have history and no quote): asked once for the symbol, whatever
    # the range — every bars query for an unknown symbol shares its one negative entry.
    for start in ("2024-01-02", "2024-01-03", "2024-02-01T10:00:00Z"):
        assert_404(
            await client.get(BARS.format("NOPE"), params={"start": start, "end": "2024-03-01"}), "NOPE"
        )
    assert fake.count(BARS_PATH) == 1
    # A known symbol is not affected by its neighbours' negative entries.
    fake.on(SNAPSHOT_PATH, alpaca_snapshot)
    assert (await client.get(QUOTE.format("AAPL"))).status_code == 200


@pytest.mark.redis
async def test_the_negative_entry_is_shared_and_expires_in_redis(
    alpaca_app, fake: FakeProvider, require_redis: str
) -> None:
    fake.on(SNAPSHOT_PATH, NOT_FOUND)
    one = await alpaca_app(use_redis=True)
    two = await alpaca_app(use_redis=True)
    assert_404(await one.get(QUOTE.format("NOPE")), "NOPE")
    r = await two.get(QUOTE.format("NOPE"))  # the other instance: from the shared entry
    assert_404(r, "NOPE")
    assert r.headers["x-cache"] == "HIT" and fake.count(SNAPSHOT_PATH) == 1
    redis = aioredis.from_url(require_redis)
    try:
        ttl = await redis.pttl("tradedesk:md:alpaca:nf:quote:NOPE")
    finally:
        await redis.aclose()
    assert 0 < ttl <= md_cache.NOT_FOUND_SECONDS * 1000


async def test_the_negative_entry_expires_in_process() -> None:
    cache = MarketDataCache(
        namespace="test:nf", provider="test", fresh_seconds=60, fetch_timeout=1, not_found_seconds=0.2
    )
    calls = 0
    found = False

    async def fetch() -> object:
        nonlocal calls
        calls += 1
        if not found:
            raise NotFound("The market-data provider knows no symbol NOPE.")
        return {"symbol": "NOPE"}

    for _ in range(3):
        with pytest.raises(NotFound):
            await cache.get_or_fetch("quote", "NOPE", fetch)
    assert calls == 1
    found = True  # listed meanwhile
    await asyncio.sleep(0.25)  # past the negative entry's lifetime (a sleep never ends early)
    assert await cache.get_or_fetch("quote", "NOPE", fetch) == ({"symbol": "NOPE"}, CacheStatus.MISS)
    assert calls == 2


async def test_negative_entries_in_process_are_bounded() -> None:
    cache = MarketDataCache(
        namespace="test:nf", provider="test", fresh_seconds=60, fetch_timeout=1, not_found_max_entries=100
    )

    async def fetch() -> object:
        raise NotFound("unknown")

    for i in range(150):
        with pytest.raises(NotFound):
            await cache.get_or_fetch("quote", f"N{i}", fetch)
    assert len(cache._not_found) == 100
