"""Default per-IP limit: 429 problem+json with Retry-After and X-RateLimit-*, shared through Redis."""

from __future__ import annotations

import httpx
import pytest

from tests.support.routes import router as support_router


def _items(client: httpx.AsyncClient, **kw):
    return client.post("/v1/_test/items", json={"name": "a", "qty": 1}, **kw)


async def test_n_plus_first_request_is_429_with_headers(make_client) -> None:
    client = await make_client(routers=[support_router], rate_limit_default="5/minute")
    for i in range(5):
        r = await _items(client)
        assert r.status_code == 200
        assert r.headers["x-ratelimit-limit"] == "5"
        assert r.headers["x-ratelimit-remaining"] == str(4 - i)
        assert int(r.headers["x-ratelimit-reset"]) >= 0
    r = await _items(client)
    assert r.status_code == 429
    assert r.headers["content-type"].startswith("application/problem+json")
    assert 1 <= int(r.headers["retry-after"]) <= 120
    assert r.headers["x-ratelimit-remaining"] == "0"
    assert r.headers["x-ratelimit-limit"] == "5"
    # Health, readiness and metrics are exempt.
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await client.get(path)).status_code == 200
    metrics = (await client.get("/metrics")).text
    assert 'rate_limit_hits_total{route="/v1/_test/items"}' in metrics


async def test_limit_is_per_client_ip(make_client) -> None:
    a = await make_client(routers=[support_router], rate_limit_default="2/minute", client_ip="10.1.1.1")
    # Same app, different peer.
    b = httpx.AsyncClient(transport=httpx.ASGITransport(app=a.app, client=("10.2.2.2", 1)), base_url="http://t")
    async with b:
        assert [(await _items(a)).status_code for _ in range(3)] == [200, 200, 429]
        assert (await _items(b)).status_code == 200


async def test_forwarded_for_is_ignored_unless_peer_is_trusted(make_client) -> None:
    untrusted = await make_client(routers=[support_router], rate_limit_default="1/minute", client_ip="10.0.0.5")
    assert (await _items(untrusted, headers={"X-Forwarded-For": "1.1.1.1"})).status_code == 200
    # Spoofing another address does not buy a fresh budget.
    assert (await _items(untrusted, headers={"X-Forwarded-For": "2.2.2.2"})).status_code == 429

    trusted = await make_client(routers=[support_router], rate_limit_default="1/minute", client_ip="10.0.0.5",
                                trusted_proxies="10.0.0.0/24")
    assert (await _items(trusted, headers={"X-Forwarded-For": "1.1.1.1"})).status_code == 200
    assert (await _items(trusted, headers={"X-Forwarded-For": "2.2.2.2"})).status_code == 200
    assert (await _items(trusted, headers={"X-Forwarded-For": "2.2.2.2"})).status_code == 429
    # A client cannot prepend fake hops: the right-most untrusted hop is the client.
    assert (await _items(trusted, headers={"X-Forwarded-For": "9.9.9.9, 2.2.2.2"})).status_code == 429


@pytest.mark.redis
async def test_limit_shared_across_two_app_instances_via_redis(make_client, require_redis) -> None:
    one = await make_client(routers=[support_router], rate_limit_default="4/minute", use_redis=True)
    two = await make_client(routers=[support_router], rate_limit_default="4/minute", use_redis=True)
    statuses = [(await _items(c)).status_code for c in (one, two, one, two)]
    assert statuses == [200, 200, 200, 200]
    r = await _items(one)
    assert r.status_code == 429 and r.headers["retry-after"]
    assert (await _items(two)).status_code == 429


async def test_redis_down_fails_open_with_metric_not_500(make_client) -> None:
    # Nothing listens on port 1: every storage call fails fast; requests are served, the metric counts.
    client = await make_client(routers=[support_router], rate_limit_default="1/minute",
                               redis_url="redis://127.0.0.1:1/0")
    statuses = [(await _items(client)).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    metrics = (await client.get("/metrics")).text
    assert 'rate_limit_storage_errors_total{limit="default"}' in metrics


@pytest.mark.redis
async def test_single_round_trip_redis_limiter_agrees_with_limits(require_redis: str) -> None:
    """Our one-script hit must leave exactly the window that limits' own strategy reads."""
    from limits import parse

    from app.core.ratelimit import RateLimiter

    limiter = RateLimiter(require_redis)
    item = parse("5/minute")
    try:
        decisions = [await limiter.hit(item, "agree", "1.2.3.4") for _ in range(7)]
        assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
        assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0, 0]
        reset_at, remaining = await limiter.strategy.get_window_stats(item, "agree", "1.2.3.4")
        assert remaining == 0
        assert abs(reset_at - decisions[-1].reset_at) < 1.0
        assert await limiter.strategy.test(item, "agree", "1.2.3.4") is False
        other = await limiter.hit(item, "agree", "5.6.7.8")
        assert other.allowed and other.remaining == 4
    finally:
        await limiter.storage.reset()
        await limiter.close()
