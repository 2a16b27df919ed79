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
import logging
import math
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from app.core.observability import SHARED_STATE_FALLBACKS

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
