"""Rate limiting as shared machinery, on the ``limits`` library's async API.

* Storage: Redis (``REDIS_URL``) so every process shares one budget; in-process memory otherwise.
* Strategy: sliding-window counter — O(1) per hit in Redis, no burst at window edges.
* Identity: the client IP as resolved by the request-context middleware (``X-Forwarded-For`` is
  honoured only from ``TRUSTED_PROXIES``), folded to its /64 for IPv6 and to the IPv4 address for an
  IPv4-mapped one (``client_key``); the user id; or any key a route chooses (an email, as an HMAC).
* Answers 429 problem+json with ``Retry-After`` and ``X-RateLimit-*``; successful responses carry
  the ``X-RateLimit-*`` of the tightest limit the request passed.
* If the storage fails (Redis down), the limiter **fails open**: the request is served, the
  ``rate_limit_storage_errors_total`` counter goes up and a warning is logged (at most every 10 s).
  Availability of the trading API beats strict limiting during a cache outage; operators alert
  on that counter.
* The limiter uses the app's one Redis client (``app.core.redisconn``): no pool of its own. A hit is one
  script call, and the hits of one event-loop turn share one pipelined round trip (``ScriptPipeline``).
* A storage call waits at most ``STORAGE_TIMEOUT_SECONDS`` (connect or answer). After a failure the
  limiter's ``RedisGuard`` skips the storage for ``STORAGE_COOLDOWN_SECONDS`` (requests are served
  unlimited and counted in ``rate_limit_storage_skipped_total``), then lets **one** request probe it
  again; the others keep skipping until that probe answers. So a Redis that accepts connections but
  never replies costs one timeout per cooldown per process, not one per request.
* Offenders: a per-client label on ``rate_limit_hits_total`` would be unbounded cardinality, so "one
  client keeps hitting a limit" is detected here instead. Each refusal (429) counts against its key (the
  limit's name and identifiers) in a window of ``RATE_LIMIT_OFFENDER_WINDOW_SECONDS`` that starts at the
  key's first refusal: in Redis when the refusal came from Redis (every process adds to one count; one
  atomic ``INCR``, so exactly one refusal sees the threshold however many race), else in this process'
  memory (bounded). The refusal that reaches ``RATE_LIMIT_OFFENDER_THRESHOLD`` increments
  ``rate_limit_offenders_total{limit}`` and logs one "rate limit offender" warning naming the key —
  once per key and window. Allowed requests pay nothing for it.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from fastapi import Request
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter

from app.core.errors import TooManyRequests
from app.core.middleware import RATELIMIT_STATE_KEY, route_template
from app.core.observability import (
    RATE_LIMIT_ERRORS,
    RATE_LIMIT_HITS,
    RATE_LIMIT_OFFENDERS,
    RATE_LIMIT_SKIPPED,
)
from app.core.redisconn import SOCKET_TIMEOUT_SECONDS, RedisGuard, ScriptPipeline

log = logging.getLogger("tradedesk.ratelimit")


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_at: float  # epoch seconds
    shared: bool = False  # decided by the shared storage (Redis), not by this process' memory

    @property
    def retry_after(self) -> int:
        return max(1, math.ceil(self.reset_at - time.time()))

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(max(0, math.ceil(self.reset_at - time.time()))),
        }


# limits' sliding-window counter answers "allowed?" and "what is left?" with two Redis scripts, i.e.
# two round trips per request. This script is limits' own acquire_sliding_window.lua, on the same
# keys and with the same arithmetic, that also returns the window it saw — one round trip. A test
# checks that limits' get_window_stats reads the same window afterwards.
_ACQUIRE_AND_REPORT = """
local limit = tonumber(ARGV[1])
local expiry = tonumber(ARGV[2]) * 1000
local amount = tonumber(ARGV[3])
local current_ttl = tonumber(redis.call('pttl', KEYS[2]))
if current_ttl > 0 and current_ttl < expiry then
    redis.call('rename', KEYS[2], KEYS[1])
    redis.call('set', KEYS[2], 0, 'PX', current_ttl + expiry)
end
local previous_count = tonumber(redis.call('get', KEYS[1])) or 0
local previous_ttl = tonumber(redis.call('pttl', KEYS[1])) or 0
local current_count = tonumber(redis.call('get', KEYS[2])) or 0
current_ttl = tonumber(redis.call('pttl', KEYS[2])) or 0
if previous_ttl <= 0 then previous_ttl = 0 end
if current_ttl <= 0 then current_ttl = 0 end
local weighted = math.floor(previous_count * previous_ttl / expiry) + current_count
local acquired = 0
if amount <= limit and (weighted + amount) <= limit then
    if redis.call('exists', KEYS[2]) == 1 then
        current_count = redis.call('incrby', KEYS[2], amount)
    else
        redis.call('set', KEYS[2], amount, 'PX', expiry * 2)
        current_count = amount
        current_ttl = expiry * 2
    end
    acquired = 1
end
return {acquired, previous_count, previous_ttl, current_count, current_ttl}
"""


def window_decision(
    item: RateLimitItem,
    allowed: bool,
    previous_count: int,
    previous_ttl: float,
    current_count: int,
    current_ttl: float,
    shared: bool = False,
) -> Decision:
    """limits' SlidingWindowCounterRateLimiter.get_window_stats arithmetic (TTLs in seconds)."""
    expiry = item.get_expiry()
    weighted = previous_count * previous_ttl / expiry + current_count
    remaining = max(0, item.amount - math.floor(weighted))
    now = time.time()
    if not (previous_count or current_count):
        return Decision(allowed, item.amount, remaining, now, shared)
    previous_reset_in = previous_ttl % (expiry / previous_count) if previous_count else math.inf
    current_reset_in = current_ttl % expiry if current_count else math.inf
    return Decision(allowed, item.amount, remaining, now + min(previous_reset_in, current_reset_in), shared)


# One refusal of one key: its count in the window that its first refusal started (the key expires with
# the window). Atomic, so among refusals racing across the threshold exactly one sees it.
_COUNT_REFUSAL = """
local count = redis.call('incr', KEYS[1])
if redis.call('pttl', KEYS[1]) < 0 then redis.call('pexpire', KEYS[1], ARGV[1]) end
return count
"""

#: Every limit name the app enforces: their offender series exist (at 0) from startup, so an alert on
#: ``increase(rate_limit_offenders_total[...])`` sees the first offender too (a series born at 1 has no
#: increase). A test checks that every name passed to ``enforce``/``RateLimit`` is listed.
KNOWN_LIMITS = ("default", "signup-ip", "login-ip", "login-email", "orders", "alerts", "tools", "backtests")
for _limit in KNOWN_LIMITS:
    RATE_LIMIT_OFFENDERS.labels(_limit)

OFFENDER_THRESHOLD = 20
OFFENDER_WINDOW_SECONDS = 300.0
OFFENDER_MEMORY_KEYS = 10_000  # per process, without Redis: the oldest windows are forgotten first


class OffenderCounts:
    """Refusals per key in this process' memory (no Redis, or Redis failing): a window per key from its
    first refusal, at most ``capacity`` keys (a client rotating keys cannot grow it without bound)."""

    def __init__(self, *, capacity: int = OFFENDER_MEMORY_KEYS) -> None:
        self.capacity = capacity
        self._windows: OrderedDict[str, tuple[float, int]] = OrderedDict()  # key -> (window end, count)

    def count(self, key: str, window: float) -> int:
        now = time.monotonic()
        ends, count = self._windows.get(key, (0.0, 0))
        if ends <= now:
            self._windows.pop(key, None)
            while len(self._windows) >= self.capacity:
                self._windows.popitem(last=False)  # the oldest window
            ends, count = now + window, 0
        self._windows[key] = (ends, count + 1)
        return count + 1


STORAGE_TIMEOUT_SECONDS = SOCKET_TIMEOUT_SECONDS  # connect, pool wait or answer, on the shared client
STORAGE_COOLDOWN_SECONDS = 2.0  # after a storage failure, skip the storage this long (fail open)


class RateLimiter:
    """Owns the limiting strategy over the shared Redis client (or memory); one per process, built in the lifespan."""

    def __init__(
        self,
        redis: aioredis.Redis | None,
        *,
        key_prefix: str = "tradedesk-rl",
        cooldown: float = STORAGE_COOLDOWN_SECONDS,
        offender_threshold: int = OFFENDER_THRESHOLD,
        offender_window: float = OFFENDER_WINDOW_SECONDS,
    ) -> None:
        self.guard = RedisGuard("ratelimit", cooldown=cooldown, fallback="no shared limits (failing open)")
        self.storage: RedisStorage | MemoryStorage
        self._script: ScriptPipeline | None = None
        self._count_refusal: Any = None
        self.offender_threshold = offender_threshold
        self.offender_window = offender_window
        self._offender_prefix = f"{key_prefix}:offender:"
        self._offenders_local = OffenderCounts()
        if redis is not None:
            # limits' Redis storage on the app's own connection pool: its key scheme and strategy are
            # used as they are (tests read windows through it); the hot path is our one-script hit.
            self.storage = RedisStorage(
                "async+redis://",
                implementation="redispy",
                key_prefix=key_prefix,
                wrap_exceptions=True,
                # limits types **options as scalars; its redis-py bridge takes a pool
                connection_pool=redis.connection_pool,  # type: ignore[arg-type]
            )
            self.backend = "redis"
            # The per-request hit: the calls of one event-loop turn share one pipelined round trip.
            self._script = ScriptPipeline(redis, _ACQUIRE_AND_REPORT, component="ratelimit")
            self._count_refusal = redis.register_script(_COUNT_REFUSAL)
        else:
            self.storage = MemoryStorage()
            self.backend = "memory"
        self.strategy = SlidingWindowCounterRateLimiter(self.storage)
        # While the shared storage is failing, limits that must never switch off (login) are kept per
        # process in memory instead of failing open.
        self._local = SlidingWindowCounterRateLimiter(MemoryStorage())
        # Exact caps on our own calls to someone else's limit (the Discord dispatcher's total rate): a
        # moving window never lets more than the limit through in any rolling period, where the sliding
        # counter, an approximation, can let up to twice through across a window boundary.
        self._exact = MovingWindowRateLimiter(self.storage)
        self._exact_local = MovingWindowRateLimiter(MemoryStorage())

    async def _hit_local(self, item: RateLimitItem, name: str, *identifiers: str) -> Decision:
        allowed = await self._local.hit(item, name, *identifiers)
        reset_at, remaining = await self._local.get_window_stats(item, name, *identifiers)
        return Decision(allowed, item.amount, int(remaining), float(reset_at))

    async def _without_storage(
        self, item: RateLimitItem, name: str, *identifiers: str, local_fallback: bool
    ) -> Decision:
        return await self._hit_local(item, name, *identifiers) if local_fallback else _unlimited(item)

    async def _hit_redis(
        self, script: ScriptPipeline, item: RateLimitItem, name: str, *identifiers: str
    ) -> Decision:
        key = item.key_for(name, *identifiers)
        storage: Any = self.storage
        current = storage.bridge.prefixed_key(storage._current_window_key(key))
        previous = storage.bridge.prefixed_key(storage._previous_window_key(key))
        # Bounded by the shared client's timeouts (connect, pool wait, each reply: STORAGE_TIMEOUT_SECONDS).
        acquired, prev_count, prev_ttl, cur_count, cur_ttl = await script(
            [previous, current], [item.amount, item.get_expiry(), 1]
        )
        return window_decision(
            item,
            bool(acquired),
            int(prev_count),
            max(0.0, float(prev_ttl)) / 1000,
            int(cur_count),
            max(0.0, float(cur_ttl)) / 1000,
            shared=True,
        )

    async def hit(
        self, item: RateLimitItem, name: str, *identifiers: str, local_fallback: bool = False
    ) -> Decision:
        """Consume one unit of ``item`` for the identifiers; never raises on storage failure.

        When the storage fails the limit fails open, or — with ``local_fallback`` — is enforced per
        process in memory until the storage answers again."""
        if not self.guard.attempt():  # the storage failed recently: skip it (one probe per cooldown)
            RATE_LIMIT_SKIPPED.labels(name).inc()
            return await self._without_storage(item, name, *identifiers, local_fallback=local_fallback)
        try:
            if (script := self._script) is not None:
                decision = await self._hit_redis(script, item, name, *identifiers)
            else:
                allowed = await self.strategy.hit(item, name, *identifiers)
                reset_at, remaining = await self.strategy.get_window_stats(item, name, *identifiers)
                decision = Decision(allowed, item.amount, int(remaining), float(reset_at))
        except Exception as exc:  # storage down or silent: fail open, loudly, and skip it for a while
            RATE_LIMIT_ERRORS.labels(name).inc()
            self.guard.failed(exc, name)
            return await self._without_storage(item, name, *identifiers, local_fallback=local_fallback)
        self.guard.succeeded()
        return decision

    async def acquire_exact(self, item: RateLimitItem, name: str, *identifiers: str) -> float:
        """Take one unit of an exact (moving-window) limit shared through the storage: 0.0 when taken,
        else the seconds to wait before trying again. While the storage fails, the limit holds per
        process (never fails open: it protects a limit someone else enforces)."""
        if self.guard.attempt():
            try:
                if await self._exact.hit(item, name, *identifiers):
                    self.guard.succeeded()
                    return 0.0
                reset_at, _ = await self._exact.get_window_stats(item, name, *identifiers)
                self.guard.succeeded()
                return max(0.005, float(reset_at) - time.time())
            except Exception as exc:
                RATE_LIMIT_ERRORS.labels(name).inc()
                self.guard.failed(exc, name)
        if await self._exact_local.hit(item, name, *identifiers):
            return 0.0
        reset_at, _ = await self._exact_local.get_window_stats(item, name, *identifiers)
        return max(0.005, float(reset_at) - time.time())

    async def refusals(self, name: str, identifiers: tuple[str, ...], *, shared: bool) -> int:
        """Count one refusal of the key; its refusals so far in the current window. In Redis when the
        refusal came from Redis (falls back to this process' memory if Redis fails meanwhile)."""
        key = "/".join(identifiers)
        if shared and self._count_refusal is not None:
            try:
                # Bounded by the shared client's timeouts, like every limiter call.
                count = await self._count_refusal(
                    keys=[f"{self._offender_prefix}{name}:{key}"],
                    args=[math.ceil(self.offender_window * 1000)],
                )
                return int(count)
            except Exception as exc:  # the refusal stands; its count stays in this process
                log.debug("offender count fell back to memory", extra={"error": type(exc).__name__})
        return self._offenders_local.count(f"{name}:{key}", self.offender_window)

    async def _note_refusal(
        self, request: Request, decision: Decision, name: str, identifiers: tuple[str, ...], route: str
    ) -> None:
        count = await self.refusals(name, identifiers, shared=decision.shared)
        if count != self.offender_threshold:  # exactly one refusal per key and window reaches it
            return
        RATE_LIMIT_OFFENDERS.labels(name).inc()
        # The key is an IP, an IPv6 /64, a user id or an HMAC pseudonym of an email: never a raw email.
        log.warning(
            "rate limit offender",
            extra={
                "limit": name,
                "key": "/".join(identifiers),
                "refusals": count,
                "window_seconds": self.offender_window,
                "route": route,
                "client_ip": client_ip(request),
            },
        )

    async def enforce(
        self,
        request: Request,
        limit: str | RateLimitItem,
        name: str,
        *identifiers: str,
        local_fallback: bool = False,
    ) -> Decision:
        """Consume one unit; raise 429 problem+json when the limit is exhausted. ``local_fallback``: keep
        enforcing per process if the shared storage fails (for limits that guard security, e.g. login)."""
        item = _parse_limit(limit) if isinstance(limit, str) else limit
        decision = await self.hit(item, name, *identifiers, local_fallback=local_fallback)
        if not decision.allowed:
            route = route_template(request.scope)
            RATE_LIMIT_HITS.labels(route).inc()
            log.info("rate limit exceeded", extra={"limit": name, "route": route})
            await self._note_refusal(request, decision, name, identifiers, route)
            raise TooManyRequests(
                f"Rate limit '{limit}' exceeded for {name}; retry in {decision.retry_after} s.",
                headers={
                    **decision.headers(),
                    "X-RateLimit-Remaining": "0",
                    "Retry-After": str(decision.retry_after),
                },
            )
        _remember(request, decision)
        return decision


@functools.lru_cache(maxsize=64)
def _parse_limit(limit: str) -> RateLimitItem:
    # A handful of limit strings (one per setting), parsed on every request otherwise (a regex each time).
    return parse(limit)


def _unlimited(item: RateLimitItem) -> Decision:
    """The fail-open answer: allowed, with the full budget."""
    return Decision(True, item.amount, item.amount, time.time() + item.get_expiry())


def _remember(request: Request, decision: Decision) -> None:
    """Keep the tightest passed limit for the response headers."""
    current: Decision | None = request.scope.get(RATELIMIT_STATE_KEY)
    if current is None or decision.remaining < current.remaining:
        request.scope[RATELIMIT_STATE_KEY] = decision


def client_ip(request: Request) -> str:
    """The client's address as the request-context middleware resolved it (for logs)."""
    state = request.scope.get("state") or {}
    return state.get("client_ip") or (request.client.host if request.client else "unknown")


@functools.lru_cache(maxsize=8192)
def network_key(address: str) -> str:
    """The identity a per-IP limit counts against: an IPv4 address as it is, an IPv4-mapped IPv6
    address as its IPv4 address, any other IPv6 address as its /64 network (one host's /64 is one
    client: handing a client a fresh budget per address would let it rotate through 2^64 of them)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # not an IP (a test transport, a Unix socket): counted as given
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def client_key(request: Request) -> str:
    """The key of every per-IP limit: the client's address folded to its network (``network_key``)."""
    return network_key(client_ip(request))


def pseudonym(value: str, *, key: bytes) -> str:
    """An identifier (an email) as it may appear in Redis keys and logs: an HMAC with a server-side key,
    which, unlike a bare hash, cannot be reversed by hashing a list of known addresses."""
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:32]


RATE_LIMIT_PREFIX = "rate_limit_"


def RateLimit(  # noqa: N802 - reads like a class at the use site: Depends(RateLimit(...))
    setting: str, *, name: str, key: Callable[[Request], str] = client_key
) -> Callable[[Request], Coroutine[Any, Any, None]]:
    """Dependency factory: ``Depends(RateLimit("rate_limit_orders", name="orders", key=user_key))``.

    ``setting`` names the Settings attribute holding the limit string, so operators tune it by env var.
    """

    async def dependency(request: Request) -> None:
        # Reads the lifespan's objects directly (what SettingsDep/LimiterDep would do): this runs on
        # every /v1 request, and two sub-dependencies would cost more than the limit check itself.
        state = request.app.state
        limiter: RateLimiter = state.limiter
        await limiter.enforce(request, getattr(state.settings, setting), name, key(request))

    dependency.__name__ = f"{RATE_LIMIT_PREFIX}{name}"  # app/core/openapi.py documents its 429 by this
    return dependency


default_rate_limit = RateLimit("rate_limit_default", name="default")
