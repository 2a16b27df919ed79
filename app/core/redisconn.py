"""The app's shared Redis connection (breaker state, market-data cache) and the guard that keeps a Redis
outage from ever turning into a 500.

One ``redis.asyncio.Redis`` per process, built in the lifespan when ``REDIS_URL`` is set, with short socket
timeouts: Redis is a shared *optimisation* of state every process could keep on its own, so a slow or
dead Redis must cost milliseconds, not seconds. ``RedisGuard`` wraps each use: after a failure the
component skips Redis for ``cooldown`` seconds and uses its fallback (in-process state, or for the rate
limiter: failing open), counts the fallback in ``shared_state_fallbacks_total{component}`` and logs at
most once every 10 s. ``attempt()`` adds a single probe: once the cooldown is over, exactly one caller
tries Redis again while the others keep skipping until that probe answers (``succeeded()``) or fails.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from app.core.observability import REDIS_PIPELINE_BATCH, SHARED_STATE_FALLBACKS

log = logging.getLogger("tradedesk.redis")

# What a Redis call may raise when Redis is down, slow or misbehaving (ResponseError included: a script
# error must degrade to the local fallback, never to a 500).
REDIS_FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)

# Connect, pool wait and every reply: Redis normally answers in well under a millisecond, so 0.25 s
# already means it is in trouble. The rate limiter checks every request against it (STORAGE_TIMEOUT_SECONDS).
SOCKET_TIMEOUT_SECONDS = 0.25


def connect_redis(url: str | None) -> aioredis.Redis | None:
    """A pooled async client for ``url`` (no I/O yet), or None when Redis is not configured."""
    if not url:
        return None
    # A blocking pool: past 64 connections a caller waits (up to the socket timeout) for a free one
    # instead of failing with "Too many connections", which would needlessly trip the fallback.
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=64,
        timeout=SOCKET_TIMEOUT_SECONDS,
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=SOCKET_TIMEOUT_SECONDS,
        health_check_interval=30,
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool and closes it


async def close_redis(client: aioredis.Redis | None) -> None:
    if client is not None:
        await client.aclose()


class RedisGuard:
    """Tracks whether Redis is usable for one component; trips for ``cooldown`` seconds on a failure."""

    def __init__(self, component: str, *, cooldown: float = 2.0, fallback: str = "in-process state") -> None:
        self.component = component
        self.cooldown = cooldown
        self.fallback = fallback
        # 0.0 while Redis is healthy (then ``attempt`` reads no clock); else the monotonic time until
        # which Redis is skipped.
        self._down_until = 0.0
        self._last_log = -math.inf
        self._counter = SHARED_STATE_FALLBACKS.labels(component)

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def attempt(self) -> bool:
        """May this caller use Redis now? After a failure: no until the cooldown is over, then yes for
        exactly one caller (the probe), whose outcome must be reported with ``succeeded`` or ``failed``."""
        if not self._down_until:
            return True
        now = time.monotonic()
        if now < self._down_until:
            return False
        self._down_until = now + self.cooldown  # this caller probes; the others skip until it answers
        return True

    def succeeded(self) -> None:
        """Redis answered: clear a pending cooldown (after a probe) so every caller uses it again."""
        if self._down_until:
            self._down_until = 0.0
            log.info("redis answers again", extra={"component": self.component})

    def failed(self, exc: BaseException, operation: str) -> None:
        now = time.monotonic()
        self._down_until = now + self.cooldown
        self._counter.inc()
        if now - self._last_log >= 10:
            self._last_log = now
            log.warning(
                f"redis failed; using {self.fallback}",
                extra={
                    "component": self.component,
                    "operation": operation,
                    "error": type(exc).__name__,
                    "cooldown_s": self.cooldown,
                },
            )


_Call = tuple[Sequence[str], Sequence[Any], "asyncio.Future[Any]"]


class ScriptPipeline:
    """One Lua script called by many concurrent requests, sent as one pipelined round trip per event-loop
    turn (auto-pipelining) instead of one round trip each.

    Under load every request that a loop turn starts reaches the rate limiter in that same turn; one
    ``EVALSHA`` round trip each (a pool checkout, a write, a wait, a read, a pool checkin) was the largest
    cost of a cached quote, and a Redis busy answering them one by one. Here a call queues its arguments and
    waits; the first call of a turn schedules a flush for the end of the turn (``call_soon``), which sends
    everything queued in one pipeline (``transaction=False``: the calls are independent, and each script
    is atomic on its own in Redis) and hands every caller its own answer or error. At most ``max_batch``
    calls go in one pipeline; several pipelines can be in flight (each on its own pooled connection). A
    caller alone in its turn pays one round trip as before. What a caller gets back is exactly what its
    ``EVALSHA`` would have returned: a script error is that caller's ``ResponseError``, a lost connection
    fails every call of that pipeline (each caller then takes its own fallback).

    The script is loaded on first use and again whenever Redis answers ``NOSCRIPT`` (a restart, a
    ``SCRIPT FLUSH``): those calls are retried once after the load. Batch sizes are observed in
    ``redis_pipeline_batch_size{component}``.
    """

    def __init__(self, redis: aioredis.Redis, source: str, *, component: str, max_batch: int = 128) -> None:
        self._redis = redis
        self._source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        self.max_batch = max_batch
        self._pending: list[_Call] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._batch_size = REDIS_PIPELINE_BATCH.labels(component)

    async def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """The script's answer for ``keys``/``args``; raises what Redis or the connection raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((keys, args, future))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif len(self._pending) == 1:
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:  # already sent: the batch filled up before the end of the turn
            return
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _send(self, batch: list[_Call]) -> None:
        self._batch_size.observe(len(batch))
        try:
            results = await self._execute(batch)
            unknown = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
            if unknown:  # Redis restarted or flushed its scripts: load it, then retry those calls once
                await self._redis.script_load(self._source)
                for i, result in zip(unknown, await self._execute([batch[i] for i in unknown]), strict=True):
                    results[i] = result
        except BaseException as exc:  # the connection, the pool wait, a timeout, or cancellation at shutdown
            for _, _, future in batch:
                if not future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, future), result in zip(batch, results, strict=True):
            if future.done():  # its caller went away (cancelled) meanwhile
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _execute(self, batch: list[_Call]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for keys, args, _ in batch:
            pipe.evalsha(self.sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))
