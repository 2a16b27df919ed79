"""The app's shared Redis connection (breaker state, market-data cache) and the guard that keeps a Redis
outage from ever turning into a 500.

One ``redis.asyncio.Redis`` per process, built in the lifespan when ``REDIS_URL`` is set, with short socket
timeouts: Redis is a shared *optimisation* of state every process could keep on its own, so a slow or
dead Redis must cost milliseconds, not seconds. ``RedisGuard`` wraps each use: after a failure the
component skips Redis for ``cooldown`` seconds and uses its in-process fallback, counts the fallback in
``shared_state_fallbacks_total{component}`` and logs at most once every 10 s.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from app.core.observability import SHARED_STATE_FALLBACKS

log = logging.getLogger("tradedesk.redis")

# What a Redis call may raise when Redis is down, slow or misbehaving (ResponseError included: a script
# error must degrade to the local fallback, never to a 500).
REDIS_FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)

SOCKET_TIMEOUT_SECONDS = 0.5


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

    def __init__(self, component: str, *, cooldown: float = 2.0) -> None:
        self.component = component
        self.cooldown = cooldown
        self._down_until = 0.0
        self._last_log = 0.0
        self._counter = SHARED_STATE_FALLBACKS.labels(component)

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def failed(self, exc: BaseException, operation: str) -> None:
        now = time.monotonic()
        self._down_until = now + self.cooldown
        self._counter.inc()
        if now - self._last_log >= 10:
            self._last_log = now
            log.warning(
                "redis failed; using in-process state",
                extra={"component": self.component, "operation": operation, "error": type(exc).__name__,
                       "cooldown_s": self.cooldown},
            )
