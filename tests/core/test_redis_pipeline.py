"""Auto-pipelining of the per-request Redis script (``app.core.redisconn.ScriptPipeline``), on a real Redis:
the calls of one event-loop turn share one round trip, and every caller still gets exactly its own answer."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from limits import parse
from prometheus_client import REGISTRY
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from app.core.ratelimit import RateLimiter
from app.core.redisconn import REDIS_FAILURES, ScriptPipeline, close_redis, connect_redis

pytestmark = pytest.mark.redis

# Answers KEYS[1]:ARGV[1], or a script error for the argument "bad".
ECHO = """
if ARGV[1] == 'bad' then return redis.error_reply('ERR bad argument') end
return KEYS[1] .. ':' .. ARGV[1]
"""


def batches(component: str) -> tuple[float, float]:
    """(round trips, calls) observed for ``component`` so far."""
    labels = {"component": component}
    count = REGISTRY.get_sample_value("redis_pipeline_batch_size_count", labels) or 0.0
    total = REGISTRY.get_sample_value("redis_pipeline_batch_size_sum", labels) or 0.0
    return count, total


def fresh(component: str) -> str:
    """A script source Redis has never seen (so the first call meets NOSCRIPT), for a component of its own."""
    return f"-- {component} {uuid.uuid4().hex}\n{ECHO}"


async def test_concurrent_limiter_hits_share_one_round_trip_and_stay_exact(require_redis: str) -> None:
    redis = connect_redis(require_redis)
    limiter = RateLimiter(redis)
    item = parse("30/minute")
    client = f"10.9.{uuid.uuid4().int % 250}.1"
    try:
        await limiter.hit(item, "batched", "warm-up")  # the script is loaded; the pool has a connection
        trips0, calls0 = batches("ratelimit")
        decisions = await asyncio.gather(*(limiter.hit(item, "batched", client) for _ in range(50)))
        trips, calls = batches("ratelimit")
    finally:
        await limiter.storage.reset()
        await close_redis(redis)

    # One event-loop turn started all fifty: one pipelined round trip, not fifty.
    assert (trips - trips0, calls - calls0) == (1, 50)
    # Each script still ran atomically on its own: exactly the limit was let through, each allowed hit saw
    # its own place in the window, and every decision came from Redis.
    assert sum(d.allowed for d in decisions) == 30
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(30))
    assert all(d.shared for d in decisions)


async def test_each_caller_gets_its_own_answer_or_its_own_error(require_redis: str) -> None:
    redis = connect_redis(require_redis)
    script = ScriptPipeline(redis, fresh("test-own-answers"), component="test-own-answers")
    try:
        answers = await asyncio.gather(
            *(script([f"k{i}"], [arg]) for i, arg in enumerate(["a", "b", "bad", "c"])),
            return_exceptions=True,
        )
    finally:
        await close_redis(redis)
    assert answers[:2] == [b"k0:a", b"k1:b"] and answers[3] == b"k3:c"
    assert isinstance(answers[2], ResponseError) and "bad argument" in str(answers[2])
    # The script was unknown to Redis (NOSCRIPT): it was loaded and those calls retried, within the one batch.
    assert batches("test-own-answers") == (1, 4)


async def test_a_script_redis_has_forgotten_is_loaded_again(require_redis: str) -> None:
    redis = connect_redis(require_redis)
    script = ScriptPipeline(redis, fresh("test-reload"), component="test-reload")
    try:
        assert await script(["x"], ["1"]) == b"x:1"
        await redis.script_flush()  # what a Redis restart does to every loaded script
        assert await asyncio.gather(script(["y"], ["2"]), script(["z"], ["3"])) == [b"y:2", b"z:3"]
    finally:
        await close_redis(redis)


async def test_a_batch_holds_at_most_max_batch_calls(require_redis: str) -> None:
    redis = connect_redis(require_redis)
    script = ScriptPipeline(redis, fresh("test-cap"), component="test-cap", max_batch=4)
    try:
        answers = await asyncio.gather(*(script([f"k{i}"], [str(i)]) for i in range(10)))
    finally:
        await close_redis(redis)
    assert answers == [f"k{i}:{i}".encode() for i in range(10)]
    assert batches("test-cap") == (3, 10)  # 4 + 4 + 2


async def test_a_lost_connection_fails_every_call_of_its_batch_with_a_redis_error() -> None:
    redis = connect_redis("redis://127.0.0.1:1/0")  # nothing listens on port 1
    assert redis is not None
    script = ScriptPipeline(redis, ECHO, component="test-down")
    try:
        answers = await asyncio.gather(*(script(["k"], [str(i)]) for i in range(3)), return_exceptions=True)
    finally:
        await close_redis(redis)
    assert all(isinstance(a, RedisConnectionError) for a in answers), answers
    assert all(isinstance(a, REDIS_FAILURES) for a in answers)  # what the limiter's fail-open catches


async def test_a_caller_that_goes_away_does_not_disturb_the_others(require_redis: str) -> None:
    redis = connect_redis(require_redis)
    script = ScriptPipeline(redis, fresh("test-cancel"), component="test-cancel")
    try:
        tasks = [asyncio.create_task(script([f"k{i}"], [str(i)])) for i in range(3)]
        await asyncio.sleep(0)  # all three are queued
        tasks[1].cancel()
        answers = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await close_redis(redis)
    assert answers[0] == b"k0:0" and answers[2] == b"k2:2"
    assert isinstance(answers[1], asyncio.CancelledError)
