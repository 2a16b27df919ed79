"""The outbound layer itself (app.core.http): timeouts and the total deadline, retries, Retry-After,
the breaker around async calls, metrics. Fakes sit at the HTTP boundary: httpx.MockTransport on the real
client, or a loopback server when real sockets matter (hangs, slow drip, refused connections)."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from app import __version__
from app.core.breaker import BreakerState, LocalBreaker
from app.core.http import (
    CircuitOpenError,
    Outbound,
    OutboundClient,
    UpstreamBadResponse,
    UpstreamConnectError,
    UpstreamRateLimited,
    UpstreamStatusError,
    UpstreamTimeout,
    parse_retry_after,
)
from tests.outbound.fake_provider import Drip, FakeProvider, Hang
from tests.support.settings import make_settings

_counter = 0


def provider_name() -> str:
    global _counter
    _counter += 1
    return f"test-provider-{_counter}"


class Counting:
    """A MockTransport handler answering from a script (the last item repeats), counting requests."""

    def __init__(self, *script: Any, delay: float = 0.0) -> None:
        self.script = list(script)
        self.delay = delay
        self.requests: list[httpx.Request] = []
        self.arrivals: list[float] = []  # time.monotonic() of each request

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.arrivals.append(time.monotonic())
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if self.delay:
            await asyncio.sleep(self.delay)
        if isinstance(item, Exception):
            raise item
        if isinstance(item, Callable):  # type: ignore[arg-type]
            return item(request)
        return item

    @property
    def count(self) -> int:
        return len(self.requests)


def ok(json: Any = None, **kw: Any) -> httpx.Response:
    return httpx.Response(200, json={"ok": True} if json is None else json, **kw)


def status(code: int, **kw: Any) -> httpx.Response:
    return httpx.Response(code, json={"status": code}, **kw)


def make(
    handler: Any = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    timeout: float = 2.0,
    fail_max: int = 3,
    reset: float = 1.0,
    base_url: str = "https://provider.test",
    **kw: Any,
) -> OutboundClient:
    name = provider_name()
    breaker = LocalBreaker(name, fail_max=fail_max, reset_seconds=reset, trial_seconds=timeout + 2)
    return OutboundClient(
        name,
        base_url=base_url,
        timeout=timeout,
        breaker=breaker,
        transport=transport or httpx.MockTransport(handler),
        backoff=0.01,
        **kw,
    )


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    provider = await FakeProvider().start()
    yield provider
    await provider.stop()


# --------------------------------------------------------------------------- construction
async def test_client_has_explicit_timeouts_limits_and_user_agent() -> None:
    handler = Counting(ok())
    client = make(handler, timeout=7.0)
    try:
        assert client.timeouts.connect == 5.0 and client.timeouts.read == 7.0
        assert client.timeouts.write == 7.0 and client.timeouts.pool == 5.0
        assert client.deadline == 7.0
        await client.get("/x")
        assert handler.requests[0].headers["user-agent"] == f"tradedesk/{__version__}"
    finally:
        await client.aclose()


async def test_outbound_registry_builds_one_client_per_provider_with_injected_transport() -> None:
    handler = Counting(ok())
    settings = make_settings("postgresql://u@localhost/db", http_timeout_seconds=3, broker_timeout_seconds=4)
    outbound = Outbound(settings, transports={"broker": httpx.MockTransport(handler)})
    broker = outbound.create(
        "broker", base_url="https://broker.test", timeout=settings.broker_timeout_seconds
    )
    data = outbound.create("data", base_url="https://data.test")
    assert broker.deadline == 4 and data.deadline == 3
    assert outbound["broker"] is broker
    with pytest.raises(ValueError):
        outbound.create("broker", base_url="https://broker.test")
    assert (await broker.get("/v2/orders")).status_code == 200
    assert handler.count == 1
    await outbound.aclose()


# --------------------------------------------------------------------------- retries
async def test_get_retried_on_503_until_success() -> None:
    handler = Counting(status(503), status(503), ok())
    client = make(handler)
    before = metric("external_api_retries_total", provider=client.provider)
    r = await client.get("/quotes")
    assert r.status_code == 200 and handler.count == 3
    assert metric("external_api_retries_total", provider=client.provider) - before == 2


@pytest.mark.parametrize("code", [502, 503, 504])
async def test_gateway_errors_retried_then_raised(code: int) -> None:
    handler = Counting(status(code))
    client = make(handler, fail_max=100)
    with pytest.raises(UpstreamStatusError) as info:
        await client.get("/quotes")
    assert info.value.status_code == code
    assert handler.count == 3  # DEFAULT_MAX_ATTEMPTS
    assert metric("external_api_requests_total", provider=client.provider, outcome="server_error") == 1


async def test_500_is_not_retried() -> None:
    handler = Counting(status(500))
    client = make(handler)
    with pytest.raises(UpstreamStatusError):
        await client.get("/quotes")
    assert handler.count == 1


async def test_post_is_never_retried() -> None:
    for failure in (
        status(503),
        status(502),
        httpx.ConnectError("refused"),
        status(429, headers={"Retry-After": "0"}),
    ):
        handler = Counting(failure, ok())
        client = make(handler)
        with pytest.raises((UpstreamStatusError, UpstreamConnectError, UpstreamRateLimited)):
            await client.post("/v2/orders", json={"symbol": "AAPL"})
        assert handler.count == 1, failure


async def test_post_with_idempotency_flag_is_retried() -> None:
    handler = Counting(status(503), ok())
    client = make(handler)
    r = await client.post("/v2/orders", json={"client_order_id": "abc"}, idempotent=True)
    assert r.status_code == 200 and handler.count == 2


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE", "OPTIONS"])
async def test_idempotent_methods_are_retried(method: str) -> None:
    handler = Counting(status(503), ok())
    client = make(handler)
    assert (await client.request(method, "/thing")).status_code == 200
    assert handler.count == 2


async def test_connection_errors_retried_for_get_and_report_not_sent() -> None:
    handler = Counting(httpx.ConnectError("refused"))
    client = make(handler)
    with pytest.raises(UpstreamConnectError) as info:
        await client.get("/quotes")
    assert handler.count == 3
    assert info.value.maybe_sent is False
    assert metric("external_api_requests_total", provider=client.provider, outcome="connection_error") == 1


async def test_refused_connection_on_a_real_socket(fake: FakeProvider) -> None:
    port = fake.port
    await fake.stop()  # nothing listens there any more
    real = OutboundClient(
        provider_name(),
        base_url=f"http://127.0.0.1:{port}",
        timeout=2,
        breaker=LocalBreaker("x", fail_max=5, reset_seconds=1, trial_seconds=3),
        backoff=0.01,
    )
    try:
        # Refused at once: had the connect waited, the 2 s deadline would have raised UpstreamTimeout.
        with pytest.raises(UpstreamConnectError) as info:
            await real.post("/v2/orders", json={})
        assert info.value.maybe_sent is False  # e.g. an order can safely be marked rejected
    finally:
        await real.aclose()


async def test_4xx_is_returned_not_retried_and_not_a_breaker_failure() -> None:
    handler = Counting(status(404))
    client = make(handler, fail_max=2)
    for _ in range(5):
        r = await client.get("/quotes/NOPE")
        assert r.status_code == 404
    assert handler.count == 5
    assert (await client.breaker.snapshot())[0] is BreakerState.CLOSED
    assert metric("external_api_requests_total", provider=client.provider, outcome="client_error") == 5


# --------------------------------------------------------------------------- Retry-After
async def test_429_retry_after_is_honoured() -> None:
    handler = Counting(status(429, headers={"Retry-After": "1"}), ok())
    client = make(handler, timeout=5)
    r = await client.get("/quotes")
    assert r.status_code == 200 and handler.count == 2
    waited = handler.arrivals[1] - handler.arrivals[0]
    # The retry came after the second asked for, not after the back-off (0.01 s here); and not much
    # later either (the 5 s deadline would have let it wait up to 5 s).
    assert 0.95 <= waited < 2.0, waited


async def test_429_retry_after_over_the_cap_ends_the_call_with_the_wait() -> None:
    handler = Counting(status(429, headers={"Retry-After": "120"}), ok())
    client = make(handler, timeout=5)
    # Not slept: sleeping the 120 s would run into the 5 s deadline and raise UpstreamTimeout instead.
    with pytest.raises(UpstreamRateLimited) as info:
        await client.get("/quotes")
    assert handler.count == 1
    assert info.value.retry_after == 120
    assert info.value.headers["Retry-After"] == "120"
    assert (await client.breaker.snapshot())[0] is BreakerState.CLOSED  # 429 is not a failure


async def test_retry_after_longer_than_the_remaining_deadline_is_not_slept() -> None:
    handler = Counting(status(503, headers={"Retry-After": "3"}), ok())
    client = make(handler, timeout=1, max_retry_after=10)
    # It fails at once with the real reason (the 503): sleeping into the 1 s deadline would raise
    # UpstreamTimeout, and a retry would make a second request.
    with pytest.raises(UpstreamStatusError) as info:
        await client.get("/quotes")
    assert info.value.status_code == 503 and handler.count == 1


def test_parse_retry_after_forms() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after({"retry-after": "7"}, now=now) == 7
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after({"x-ratelimit-reset": str(int(now + 12))}, now=now) == pytest.approx(12)
    assert parse_retry_after({"x-ratelimit-reset-after": "2.5"}, now=now) == 2.5
    assert parse_retry_after({"retry-after": "garbage"}, now=now) is None
    assert parse_retry_after({}, now=now) is None
    assert parse_retry_after({"retry-after": "-5"}, now=now) == 0


# --------------------------------------------------------------------------- deadline
async def test_hanging_server_is_cut_at_the_deadline(fake: FakeProvider) -> None:
    fake.on("/hang", Hang())
    client = OutboundClient(
        provider_name(),
        base_url=fake.url,
        timeout=1,
        breaker=LocalBreaker("h", fail_max=5, reset_seconds=1, trial_seconds=3),
    )
    try:
        # The server never answers: the call ends at its 1 s deadline (bounded generously here).
        async with asyncio.timeout(5):
            with pytest.raises(UpstreamTimeout) as info:
                await client.get("/hang")
        assert "within 1 s" in info.value.detail
        assert info.value.maybe_sent is True
        assert fake.count("/hang") == 1  # a timeout after sending is not retried
    finally:
        await client.aclose()


async def test_slow_drip_cannot_outlive_the_total_deadline(fake: FakeProvider) -> None:
    # Each byte arrives well inside the 1 s read timeout, so httpx alone would wait ~20 s for the body.
    fake.on("/drip", Drip(interval=0.1, size=200))
    client = OutboundClient(
        provider_name(),
        base_url=fake.url,
        timeout=1,
        breaker=LocalBreaker("d", fail_max=5, reset_seconds=1, trial_seconds=3),
    )
    try:
        assert client.timeouts.read == 1
        async with asyncio.timeout(5):  # instead of ~20 s
            with pytest.raises(UpstreamTimeout) as info:
                await client.get("/drip")
        assert "within 1 s" in info.value.detail
    finally:
        await client.aclose()


async def test_per_call_deadline_can_only_shorten(fake: FakeProvider) -> None:
    fake.on("/hang", Hang())
    long = OutboundClient(
        provider_name(),
        base_url=fake.url,
        timeout=30,
        breaker=LocalBreaker("s", fail_max=5, reset_seconds=1, trial_seconds=3),
    )
    short = OutboundClient(
        provider_name(),
        base_url=fake.url,
        timeout=0.3,
        breaker=LocalBreaker("s2", fail_max=5, reset_seconds=1, trial_seconds=3),
    )
    try:
        # Shorter than the client's: it applies (the client's own 30 s would outlast the bound).
        async with asyncio.timeout(5):
            with pytest.raises(UpstreamTimeout) as info:
                await long.get("/hang", deadline=0.3)
        assert "within 0.3 s" in info.value.detail
        # Longer than the client's: ignored, the client's 0.3 s holds.
        async with asyncio.timeout(5):
            with pytest.raises(UpstreamTimeout) as info:
                await short.get("/hang", deadline=30)
        assert "within 0.3 s" in info.value.detail
    finally:
        await long.aclose()
        await short.aclose()


async def test_oversized_body_is_refused() -> None:
    handler = Counting(httpx.Response(200, content=b"x" * 5000))
    client = make(handler, max_response_bytes=1000)
    with pytest.raises(UpstreamBadResponse):
        await client.get("/big")


# --------------------------------------------------------------------------- breaker around async calls
async def test_async_failures_open_the_breaker_and_it_answers_without_network() -> None:
    handler = Counting(status(500))
    client = make(handler, fail_max=3, reset=5)
    for _ in range(3):
        with pytest.raises(UpstreamStatusError):
            await client.get("/quotes")
    assert handler.count == 3
    state, failures, remaining = await client.breaker.snapshot()
    assert state is BreakerState.OPEN and failures >= 3 and 4 < remaining <= 5

    with pytest.raises(CircuitOpenError) as info:
        await client.get("/quotes")
    assert handler.count == 3  # answered without a request
    assert 4 < info.value.retry_after <= 5
    assert info.value.status == 503 and info.value.headers["Retry-After"] == "5"
    assert metric("circuit_breaker_state", provider=client.provider) == 2


async def test_timeouts_count_as_failures() -> None:
    handler = Counting(ok(), delay=5)
    client = make(handler, timeout=0.1, fail_max=2, reset=5)
    for _ in range(2):
        with pytest.raises(UpstreamTimeout):
            await client.get("/slow")
    with pytest.raises(CircuitOpenError):
        await client.get("/slow")
    assert handler.count == 2


async def test_success_resets_the_consecutive_failure_count() -> None:
    handler = Counting(status(500), status(500), ok(), status(500), status(500), ok())
    client = make(handler, fail_max=3)
    outcomes = []
    for _ in range(6):
        try:
            outcomes.append((await client.get("/q")).status_code)
        except UpstreamStatusError as exc:
            outcomes.append(exc.status_code)
    assert outcomes == [500, 500, 200, 500, 500, 200]
    assert (await client.breaker.snapshot())[0] is BreakerState.CLOSED


async def test_half_open_lets_exactly_one_trial_through_and_success_closes() -> None:
    handler = Counting(status(500), status(500), ok())
    client = make(handler, fail_max=2, reset=0.3)
    for _ in range(2):
        with pytest.raises(UpstreamStatusError):
            await client.get("/q")
    await asyncio.sleep(0.35)
    handler.delay = 0.2  # the trial is slow, so the others arrive while it is in flight
    results = await asyncio.gather(*(client.get("/q") for _ in range(10)), return_exceptions=True)
    assert sum(isinstance(r, httpx.Response) for r in results) == 1
    assert all(isinstance(r, CircuitOpenError) for r in results if not isinstance(r, httpx.Response))
    assert handler.count == 3
    assert (await client.breaker.snapshot())[0] is BreakerState.CLOSED
    handler.delay = 0
    assert (await client.get("/q")).status_code == 200


async def test_trial_is_a_single_attempt_and_its_failure_reopens() -> None:
    handler = Counting(status(503))
    client = make(handler, fail_max=1, reset=0.2)
    with pytest.raises(UpstreamStatusError):
        await client.get("/q")
    assert handler.count == 3  # a normal call: retried
    await asyncio.sleep(0.25)
    with pytest.raises(UpstreamStatusError):
        await client.get("/q")
    assert handler.count == 4  # the trial: one attempt only
    assert (await client.breaker.snapshot())[0] is BreakerState.OPEN


async def test_cancelled_trial_frees_the_slot() -> None:
    handler = Counting(status(500))
    client = make(handler, fail_max=1, reset=0.1)
    with pytest.raises(UpstreamStatusError):
        await client.get("/q")
    await asyncio.sleep(0.15)
    handler.script = [ok()]
    handler.delay = 5
    trial = asyncio.create_task(client.get("/q"))
    await asyncio.sleep(0.05)
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial
    handler.delay = 0
    assert (await client.get("/q")).status_code == 200  # a new trial was allowed at once


async def test_breaker_opened_by_others_stops_pending_retries() -> None:
    """A GET is between attempts (its first got a 503, retries pending) when another call's failure
    opens the breaker: the GET stops there instead of making its remaining attempts."""
    calls = {"/q": 0, "/other": 0}
    first_attempt_in_flight = asyncio.Event()
    breaker_opened = asyncio.Event()

    async def provider(request: httpx.Request) -> httpx.Response:
        calls[request.url.path] += 1
        if request.url.path == "/other":
            return status(500)  # not retried: one failure, which opens the breaker (fail_max=1)
        first_attempt_in_flight.set()
        await breaker_opened.wait()  # answers once the other call has opened the breaker
        return status(503)  # retryable: without the breaker, two more attempts would follow

    client = make(provider, fail_max=1, reset=5, timeout=5)
    retrying = asyncio.create_task(client.get("/q"))
    await first_attempt_in_flight.wait()
    with pytest.raises(UpstreamStatusError):
        await client.get("/other")
    assert (await client.breaker.snapshot())[0] is BreakerState.OPEN
    breaker_opened.set()
    with pytest.raises(CircuitOpenError):
        await retrying
    assert calls == {"/q": 1, "/other": 1}  # /q: 1 of DEFAULT_MAX_ATTEMPTS (3), the retries not made


async def test_metrics_record_outcomes_and_latency() -> None:
    handler = Counting(ok(), status(404), status(500))
    client = make(handler)
    await client.get("/a")
    await client.get("/b")
    with pytest.raises(UpstreamStatusError):
        await client.get("/c")
    p = client.provider
    assert metric("external_api_requests_total", provider=p, outcome="success") == 1
    assert metric("external_api_requests_total", provider=p, outcome="client_error") == 1
    assert metric("external_api_requests_total", provider=p, outcome="server_error") == 1
    assert metric("external_api_latency_seconds_count", provider=p) == 3
    assert metric("circuit_breaker_state", provider=p) == 0
