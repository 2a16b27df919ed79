"""Default per-IP limit: 429 problem+json with Retry-After and X-RateLimit-*, shared through Redis."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.support.metrics import grew, scrape
from tests.support.routes import router as support_router


def _items(client: httpx.AsyncClient, **kw):
    return client.post("/v1/_test/items", json={"name": "a", "qty": 1}, **kw)


async def test_n_plus_first_request_is_429_with_headers(make_client) -> None:
    client = await make_client(routers=[support_router], rate_limit_default="5/minute")
    before = await scrape(client)
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
    assert grew(before, await scrape(client), "rate_limit_hits_total", route="/v1/_test/items") == 1


async def test_limit_is_per_client_ip(make_client) -> None:
    a = await make_client(routers=[support_router], rate_limit_default="2/minute", client_ip="10.1.1.1")
    # Same app, different peer.
    b = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=a.app, client=("10.2.2.2", 1)), base_url="http://t"
    )
    async with b:
        assert [(await _items(a)).status_code for _ in range(3)] == [200, 200, 429]
        assert (await _items(b)).status_code == 200


async def test_forwarded_for_is_ignored_unless_peer_is_trusted(make_client) -> None:
    untrusted = await make_client(
        routers=[support_router], rate_limit_default="1/minute", client_ip="10.0.0.5"
    )
    assert (await _items(untrusted, headers={"X-Forwarded-For": "1.1.1.1"})).status_code == 200
    # Spoofing another address does not buy a fresh budget.
    assert (await _items(untrusted, headers={"X-Forwarded-For": "2.2.2.2"})).status_code == 429

    trusted = await make_client(
        routers=[support_router],
        rate_limit_default="1/minute",
        client_ip="10.0.0.5",
        trusted_proxies="10.0.0.0/24",
    )
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
    client = await make_client(
        routers=[support_router], rate_limit_default="1/minute", redis_url="redis://127.0.0.1:1/0"
    )
    before = await scrape(client)
    statuses = [(await _items(client)).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    after = await scrape(client)
    # Each hit tried Redis and failed (at most one per cooldown) or skipped it during the cooldown.
    failed = grew(before, after, "rate_limit_storage_errors_total", limit="default")
    skipped = grew(before, after, "rate_limit_storage_skipped_total", limit="default")
    assert failed >= 1 and failed + skipped == 3, (failed, skipped)


@pytest.mark.redis
async def test_single_round_trip_redis_limiter_agrees_with_limits(require_redis: str) -> None:
    """Our one-script hit must leave exactly the window that limits' own strategy reads."""
    from limits import parse

    from app.core.ratelimit import RateLimiter
    from app.core.redisconn import close_redis, connect_redis

    redis = connect_redis(require_redis)
    limiter = RateLimiter(redis)
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
        await close_redis(redis)


# --------------------------------------------------------------------------------------------------
# A Redis that accepts connections but never answers (hung, paused, half-dead network path)
# --------------------------------------------------------------------------------------------------
class LoopbackRedis:
    """A loopback TCP server standing in for Redis: ``silent`` accepts connections and never replies;
    ``forward`` relays bytes to a real Redis (the path recovered)."""

    def __init__(self, target: tuple[str, int] | None = None) -> None:
        self.target = target
        self.mode = "silent"
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> LoopbackRedis:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        if self.mode == "silent":
            while await reader.read(65536):  # swallow every command, answer none, until the client hangs up
                pass
            writer.close()
            return
        assert self.target is not None
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers.append(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
            dst.close()

        for coro in (pipe(reader, up_writer), pipe(up_reader, writer)):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


async def test_silent_redis_costs_one_timeout_not_one_per_request(make_client) -> None:
    from app.core.ratelimit import STORAGE_TIMEOUT_SECONDS

    async with LoopbackRedis() as silent:
        client = await make_client(
            routers=[support_router],
            rate_limit_default="1/minute",
            redis_url=f"redis://127.0.0.1:{silent.port}/0",
        )
        before = await scrape(client)
        connections = silent.connections
        # Bounded generously, so a request left waiting on the silent server for ever fails the test
        # here; that only the first request waited at all is what the counts below show.
        async with asyncio.timeout(STORAGE_TIMEOUT_SECONDS + 5):
            statuses = [(await _items(client)).status_code for _ in range(10)]
        after = await scrape(client)

    assert statuses == [200] * 10  # fail open, although the limit is 1/minute
    # The first request reached the silent server on one connection and waited for it; the nine others
    # never touched it (no connection, no storage call): skipped at once.
    assert silent.connections - connections == 1
    assert grew(before, after, "rate_limit_storage_errors_total", limit="default") == 1
    assert grew(before, after, "rate_limit_storage_skipped_total", limit="default") == 9


@pytest.mark.redis
async def test_limiter_probes_once_after_cooldown_and_recovers_when_redis_answers(require_redis: str) -> None:
    from urllib.parse import urlsplit

    from limits import parse
    from prometheus_client import REGISTRY

    from app.core.ratelimit import STORAGE_TIMEOUT_SECONDS, RateLimiter
    from app.core.redisconn import close_redis, connect_redis

    def count(metric: str) -> float:
        return REGISTRY.get_sample_value(metric, {"limit": "probe"}) or 0.0

    real = urlsplit(require_redis)
    item = parse("3/minute")
    cooldown = 0.5
    async with LoopbackRedis(target=(real.hostname or "127.0.0.1", real.port or 6379)) as proxy:
        redis = connect_redis(f"redis://127.0.0.1:{proxy.port}{real.path}")
        limiter = RateLimiter(redis, cooldown=cooldown)
        try:
            errors0, skipped0 = (
                count("rate_limit_storage_errors_total"),
                count("rate_limit_storage_skipped_total"),
            )

            # 1. Redis silent: the first hit waits the timeout (bounded: not the silent server's for ever),
            #    fails open and starts the cooldown.
            async with asyncio.timeout(STORAGE_TIMEOUT_SECONDS + 5):
                first = await limiter.hit(item, "probe", "1.2.3.4")
            assert proxy.connections == 1  # it did reach the silent server
            assert first.allowed and first.remaining == 3
            assert count("rate_limit_storage_errors_total") - errors0 == 1

            # 2. Within the cooldown: no connection attempt at all.
            connections = proxy.connections
            assert (await limiter.hit(item, "probe", "1.2.3.4")).allowed
            assert proxy.connections == connections
            assert count("rate_limit_storage_skipped_total") - skipped0 == 1

            # 3. Cooldown over, Redis still silent, ten concurrent hits: exactly one probes (and waits),
            #    the nine others skip at once.
            await asyncio.sleep(cooldown + 0.05)  # let the cooldown run out (it is what is under test)
            burst = await asyncio.gather(*(limiter.hit(item, "probe", "1.2.3.4") for _ in range(10)))
            assert all(d.allowed for d in burst)
            assert count("rate_limit_storage_errors_total") - errors0 == 2
            assert count("rate_limit_storage_skipped_total") - skipped0 == 10

            # 4. Redis answers again: still skipped until the cooldown of the failed probe runs out...
            proxy.mode = "forward"
            assert (await limiter.hit(item, "probe", "1.2.3.4")).remaining == 3
            assert count("rate_limit_storage_skipped_total") - skipped0 == 11
            await asyncio.sleep(cooldown + 0.05)
            # ...then the next hit probes, succeeds, and limiting is back for everyone (one shared window).
            decisions = [await limiter.hit(item, "probe", "1.2.3.4") for _ in range(4)]
            assert [d.allowed for d in decisions] == [True, True, True, False]
            assert [d.remaining for d in decisions] == [2, 1, 0, 0]
            assert count("rate_limit_storage_errors_total") - errors0 == 2
            assert count("rate_limit_storage_skipped_total") - skipped0 == 11
            _, remaining = await limiter.strategy.get_window_stats(item, "probe", "1.2.3.4")
            assert remaining == 0
        finally:
            await close_redis(redis)


async def test_docs_are_served_and_rate_limited_like_every_route(make_client) -> None:
    client = await make_client(rate_limit_default="3/minute")
    spec = await client.get("/openapi.json")
    assert spec.status_code == 200 and "/v1/auth/login" in spec.json()["paths"]
    assert "/openapi.json" not in spec.json()["paths"]
    docs = await client.get("/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text and "/openapi.json" in docs.text
    assert (await client.get("/redoc")).status_code == 200
    refused = await client.get("/docs")
    assert refused.status_code == 429 and refused.headers["retry-after"]
    assert (await client.get("/healthz")).status_code == 200  # still exempt
