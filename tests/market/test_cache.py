"""The cache on its own: bounded in-memory LRU, Redis backend with its L1, single-flight, stale window."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import redis.asyncio as aioredis

from app.core.http import UpstreamStatusError, UpstreamTimeout
from app.providers.market_data.cache import CacheStatus, MarketDataCache


class Upstream:
    def __init__(self, delay: float = 0.0, gate: asyncio.Event | None = None) -> None:
        self.calls = 0
        self.delay = delay
        self.gate = gate  # if given, a fetch answers only once the test sets it
        self.started = asyncio.Event()  # set when a fetch has begun
        self.fail: Exception | None = None

    def fetch(self, value: object):
        async def run() -> object:
            self.calls += 1
            self.started.set()
            if self.gate is not None:
                await self.gate.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.fail:
                raise self.fail
            return value

        return run


def memory_cache(**kw) -> MarketDataCache:
    kw.setdefault("fresh_seconds", 60)
    return MarketDataCache(namespace="test:md", provider="test", fetch_timeout=1, **kw)


async def test_memory_lru_is_bounded_by_entries() -> None:
    cache = memory_cache(max_entries=3)
    up = Upstream()
    for key in "abcd":
        await cache.get_or_fetch("quote", key, up.fetch(key))
    assert up.calls == 4 and len(cache._local) == 3
    assert (await cache.get_or_fetch("quote", "d", up.fetch("d")))[1] is CacheStatus.HIT
    assert (await cache.get_or_fetch("quote", "a", up.fetch("a")))[1] is CacheStatus.MISS  # evicted
    assert up.calls == 5


async def test_memory_lru_is_bounded_by_bytes() -> None:
    cache = memory_cache(max_bytes=10_000)
    up = Upstream()
    for i in range(10):
        await cache.get_or_fetch("bars", str(i), up.fetch("x" * 3000))
    assert cache._local.bytes <= 10_000 and len(cache._local) == 3
    await cache.get_or_fetch("bars", "huge", up.fetch("x" * 20_000))  # bigger than the budget: not kept
    assert cache._local.bytes <= 10_000


async def test_in_process_single_flight_and_failure_shared_by_waiters() -> None:
    cache = memory_cache()
    up = Upstream(delay=0.1)
    results = await asyncio.gather(*(cache.get_or_fetch("quote", "k", up.fetch(1)) for _ in range(20)))
    assert up.calls == 1 and {r for r in results} == {(1, CacheStatus.MISS)}

    up.fail = UpstreamTimeout("test")
    outcomes = await asyncio.gather(
        *(cache.get_or_fetch("quote", "other", up.fetch(2)) for _ in range(20)), return_exceptions=True
    )
    assert up.calls == 2 and all(isinstance(o, UpstreamTimeout) for o in outcomes)


async def test_a_cancelled_request_does_not_cancel_the_shared_fetch() -> None:
    cache = memory_cache()
    answer = asyncio.Event()
    up = Upstream(gate=answer)  # the provider answers only when the test says so: no race with a timer
    first = asyncio.create_task(cache.get_or_fetch("quote", "k", up.fetch(1)))
    await up.started.wait()  # the first request's fetch is in flight
    second = asyncio.create_task(cache.get_or_fetch("quote", "k", up.fetch(1)))
    await asyncio.sleep(0.01)  # the second joins it (nothing can finish meanwhile: the gate is shut)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    answer.set()
    assert await second == (1, CacheStatus.MISS)  # served by the fetch the cancelled request started
    assert up.calls == 1


async def test_stale_only_within_the_stale_window() -> None:
    # Waits are lower bounds (a sleep never ends early), so each step lands where it should however slow
    # the machine is, except the STALE read, which must come before fresh + stale: a second of slack.
    cache = memory_cache(fresh_seconds=0.2, stale_seconds=1.0)
    up = Upstream()
    await cache.get_or_fetch("quote", "k", up.fetch("v1"))
    up.fail = UpstreamStatusError("test", httpx.Response(502))
    await asyncio.sleep(0.25)  # past the fresh window
    assert await cache.get_or_fetch("quote", "k", up.fetch("v2")) == ("v1", CacheStatus.STALE)
    await asyncio.sleep(1.0)  # past fresh + stale: the copy is gone
    with pytest.raises(UpstreamStatusError):
        await cache.get_or_fetch("quote", "k", up.fetch("v2"))


@pytest.mark.redis
async def test_redis_l1_never_serves_past_the_fresh_window(require_redis: str) -> None:
    redis = aioredis.from_url(require_redis)
    try:
        cache = MarketDataCache(
            namespace="test:md", provider="test", fresh_seconds=1, fetch_timeout=1, redis=redis
        )
        up = Upstream()
        assert await cache.get_or_fetch("quote", "k", up.fetch("v1")) == ("v1", CacheStatus.MISS)
        assert await cache.get_or_fetch("quote", "k", up.fetch("v1")) == ("v1", CacheStatus.HIT)
        assert await redis.pttl("test:md:v:quote:k") > 3_600_000  # kept for the stale window
        await asyncio.sleep(1.05)
        assert await cache.get_or_fetch("quote", "k", up.fetch("v2")) == ("v2", CacheStatus.MISS)
        assert up.calls == 2
    finally:
        await redis.aclose()


@pytest.mark.redis
async def test_l1_answers_hot_keys_without_redis_round_trips(require_redis: str) -> None:
    redis = aioredis.from_url(require_redis)
    try:
        cache = MarketDataCache(
            namespace="test:md", provider="test", fresh_seconds=60, fetch_timeout=1, redis=redis
        )
        up = Upstream()
        await cache.get_or_fetch("quote", "k", up.fetch("v1"))
        await redis.delete("test:md:v:quote:k")  # if the next answer is a HIT it came from L1
        assert await cache.get_or_fetch("quote", "k", up.fetch("v2")) == ("v1", CacheStatus.HIT)
    finally:
        await redis.aclose()
