"""The Redis-backed breaker: state shared by every process, one trial across processes, and a local
fallback when Redis itself fails (never an exception to the caller)."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
import redis.asyncio as aioredis

from app.core.breaker import BreakerState, CircuitOpenError, Permit, RedisBreaker
from app.core.http import OutboundClient, UpstreamStatusError


@pytest.fixture
async def redis_client(require_redis: str):
    client = aioredis.from_url(require_redis)
    yield client
    await client.aclose()


def pair(redis_a, redis_b, *, fail_max: int = 3, reset: float = 0.5) -> tuple[RedisBreaker, RedisBreaker]:
    provider = f"shared-{uuid.uuid4().hex[:8]}"
    return (
        RedisBreaker(provider, redis_a, fail_max=fail_max, reset_seconds=reset, trial_seconds=5),
        RedisBreaker(provider, redis_b, fail_max=fail_max, reset_seconds=reset, trial_seconds=5),
    )


@pytest.mark.redis
async def test_state_is_shared_between_processes(require_redis: str) -> None:
    # Two separate connection pools stand for two processes.
    a_conn, b_conn = aioredis.from_url(require_redis), aioredis.from_url(require_redis)
    try:
        a, b = pair(a_conn, b_conn, fail_max=3, reset=0.5)
        for _ in range(3):
            await a.record_failure(await a.acquire())
        with pytest.raises(CircuitOpenError) as info:
            await b.acquire()
        assert 0 < info.value.retry_after <= 0.5
        state, failures, _ = await b.snapshot()
        assert state is BreakerState.OPEN and failures == 3

        await asyncio.sleep(0.55)
        permits = await asyncio.gather(*(x.acquire() for x in (a, b, a, b, a, b)), return_exceptions=True)
        trials = [p for p in permits if isinstance(p, Permit)]
        assert len(trials) == 1 and trials[0].trial
        assert all(isinstance(p, CircuitOpenError) for p in permits if not isinstance(p, Permit))
        assert (await a.snapshot())[0] is BreakerState.HALF_OPEN

        owner = a if trials[0] in permits[::2] else b
        await owner.record_success(trials[0])
        assert (await b.snapshot())[0] is BreakerState.CLOSED
        assert not (await a.acquire()).trial
    finally:
        await a_conn.aclose()
        await b_conn.aclose()


@pytest.mark.redis
async def test_consecutive_failures_reset_on_success_from_any_process(redis_client) -> None:
    a, b = pair(redis_client, redis_client, fail_max=3)
    await a.record_failure(await a.acquire())
    await b.record_failure(await b.acquire())
    await a.record_success(await a.acquire())
    await b.record_failure(await b.acquire())
    await a.record_failure(await a.acquire())
    assert (await a.snapshot())[:2] == (BreakerState.CLOSED, 2)


@pytest.mark.redis
async def test_4xx_answers_are_not_failures_of_the_shared_breaker(require_redis: str) -> None:
    """Through the real outbound client: a 4xx is the caller's business, an answer from a provider that
    is up. It never counts as a failure and, like any answer below 500, ends a run of consecutive
    failures — in the state every process shares."""
    a_conn, b_conn = aioredis.from_url(require_redis), aioredis.from_url(require_redis)
    script = [500, 404, 500, 422, 500, 400, 401, 403, 404, 409, 500]
    seen: list[int] = []

    def provider(request: httpx.Request) -> httpx.Response:
        seen.append(script[len(seen)])
        return httpx.Response(seen[-1], json={"status": seen[-1]})

    a, b = pair(a_conn, b_conn, fail_max=2, reset=5)
    client = OutboundClient(
        a.provider,
        base_url="https://provider.test",
        timeout=2,
        breaker=a,
        transport=httpx.MockTransport(provider),
        backoff=0.01,
    )
    try:
        for code in script:
            if code >= 500:
                with pytest.raises(UpstreamStatusError):
                    await client.get("/q")
            else:
                assert (await client.get("/q")).status_code == code
        # Every call reached the provider: the breaker (2 consecutive failures open it) stayed closed,
        # and the other process sees one failure in a row, not five failures or eleven.
        assert seen == script
        assert (await b.snapshot())[:2] == (BreakerState.CLOSED, 1)
        await b.record_failure(await b.acquire())  # one more real failure from anywhere opens it
        assert (await a.snapshot())[0] is BreakerState.OPEN
    finally:
        await client.aclose()
        await a_conn.aclose()
        await b_conn.aclose()


@pytest.mark.redis
async def test_failed_trial_reopens_for_a_full_period(redis_client) -> None:
    a, b = pair(redis_client, redis_client, fail_max=1, reset=0.3)
    await a.record_failure(await a.acquire())
    await asyncio.sleep(0.35)
    trial = await b.acquire()
    assert trial.trial
    await b.record_failure(trial)
    with pytest.raises(CircuitOpenError) as info:
        await a.acquire()
    assert info.value.retry_after > 0.2


@pytest.mark.redis
async def test_released_trial_frees_the_slot_for_another_process(redis_client) -> None:
    a, b = pair(redis_client, redis_client, fail_max=1, reset=0.1)
    await a.record_failure(await a.acquire())
    await asyncio.sleep(0.15)
    trial = await a.acquire()
    with pytest.raises(CircuitOpenError):
        await b.acquire()
    await a.release(trial)  # e.g. the caller was cancelled
    assert (await b.acquire()).trial


@pytest.mark.redis
async def test_late_success_of_a_pre_open_call_does_not_close(redis_client) -> None:
    a, _ = pair(redis_client, redis_client, fail_max=1, reset=5)
    slow = await a.acquire()  # started while closed
    await a.record_failure(await a.acquire())  # another call opens the breaker
    await a.record_success(slow)  # the slow one finishes fine: not a trial, must not close
    assert (await a.snapshot())[0] is BreakerState.OPEN


async def test_redis_down_falls_back_to_local_breaker() -> None:
    dead = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2, socket_timeout=0.2)
    try:
        breaker = RedisBreaker("dead-redis", dead, fail_max=2, reset_seconds=5, trial_seconds=5)
        permit = await breaker.acquire()  # no exception
        assert permit.backend == "local"
        await breaker.record_failure(permit)
        await breaker.record_failure(await breaker.acquire())
        with pytest.raises(CircuitOpenError):
            await breaker.acquire()
        assert (await breaker.snapshot())[0] is BreakerState.OPEN
    finally:
        await dead.aclose()
