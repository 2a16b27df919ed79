"""Async circuit breaker per provider, shared through Redis when ``REDIS_URL`` is set.

Why our own: pybreaker 1.x does not work with coroutines (decorating an ``async def`` never counts its
failures; ``call_async`` needs Tornado), and an async library (e.g. purgatory) would be a new dependency
with its own Redis connection whose cross-process guarantees we would still have to prove. The semantics
fit in a few Lua scripts, so every process agrees (docs/outbound.md):

* **closed** — calls pass. A *failure* (timeout, connection error, 5xx, body over the size cap; never 4xx)
  increments a consecutive-failure counter; any success resets it. ``BREAKER_FAIL_MAX`` consecutive
  failures open the breaker.
* **open** — calls fail at once with ``CircuitOpenError(provider, retry_after)`` (a 503 + ``Retry-After``
  = the remaining open time), without touching the network, for ``BREAKER_RESET_SECONDS``.
* **half-open** — once the reset time has passed, exactly **one** trial call is let through, across all
  processes (``SET NX PX`` on a trial key whose expiry outlives the call). Its success closes the breaker,
  its failure re-opens it for a full period; everyone else keeps getting 503 meanwhile. A trial whose
  holder disappeared (crash, cancellation) frees the slot when its key expires (or at once on cancel).

Redis state: a hash ``tradedesk:breaker:<provider>`` {state, failures, opened_at} and the trial key.
Time comes from the Redis server (``TIME``), so process clocks never disagree. Every transition is one
script, so concurrent processes cannot interleave a read-modify-write.

If Redis itself fails, the breaker falls back to an in-process breaker with the same semantics (logged,
counted in ``shared_state_fallbacks_total{component="breaker"}``) and retries Redis after a short
cooldown: a cache outage never turns into a 500 and never disables the protection.
"""

from __future__ import annotations

import enum
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from app.core.errors import ServiceUnavailable
from app.core.observability import CIRCUIT_BREAKER_STATE
from app.core.redisconn import REDIS_FAILURES, RedisGuard


class BreakerState(enum.IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class UpstreamError(ServiceUnavailable):
    """An outbound call failed (or was refused by the breaker). Renders as 503 + Retry-After unless a
    caller handles it. ``maybe_sent`` is False only when the request certainly never reached the provider."""

    slug = "upstream-unavailable"
    outcome = "error"
    maybe_sent = True

    def __init__(
        self, provider: str, detail: str | None = None, *, retry_after: float = 1.0, **kw: Any
    ) -> None:
        self.provider = provider
        self.retry_after = max(0.0, float(retry_after))
        super().__init__(
            detail or f"The {provider} service is unavailable; retry shortly.",
            retry_after=self.retry_after,
            **kw,
        )


class CircuitOpenError(UpstreamError):
    """The provider's breaker is open (or half-open with its one trial in flight): no call was made."""

    slug = "circuit-open"
    outcome = "circuit_open"
    maybe_sent = False

    def __init__(self, provider: str, retry_after: float) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(
            provider,
            f"The {provider} service is failing; calls are suspended for {seconds} s (circuit breaker open).",
            retry_after=retry_after,
        )


@dataclass(frozen=True, slots=True)
class Permit:
    """What ``acquire`` hands out; give it back to ``record_*``/``release`` so the same backend is told."""

    trial: bool = False
    backend: str = "local"
    token: str = ""


NORMAL = Permit()


class CircuitBreaker(Protocol):
    provider: str

    async def acquire(self) -> Permit: ...
    async def check(self) -> None: ...
    async def record_success(self, permit: Permit) -> None: ...
    async def record_failure(self, permit: Permit) -> None: ...
    async def release(self, permit: Permit) -> None: ...
    async def snapshot(self) -> tuple[BreakerState, int, float]: ...


# --------------------------------------------------------------------------------------------------
# In-process breaker: used when REDIS_URL is unset, and as the fallback while Redis is failing.
# Single-threaded asyncio: no await inside a transition, so no lock is needed.
# --------------------------------------------------------------------------------------------------
class LocalBreaker:
    def __init__(self, provider: str, *, fail_max: int, reset_seconds: float, trial_seconds: float) -> None:
        self.provider = provider
        self.fail_max = fail_max
        self.reset_seconds = reset_seconds
        self.trial_seconds = trial_seconds
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.trial_until = 0.0
        self._gauge = CIRCUIT_BREAKER_STATE.labels(provider)
        self._gauge.set(0)

    def _set(self, state: BreakerState) -> None:
        self.state = state
        self._gauge.set(int(state))

    def _open(self, now: float) -> None:
        self.opened_at = now
        self.trial_until = 0.0
        self.failures = max(self.failures, self.fail_max)
        self._set(BreakerState.OPEN)

    def acquire_now(self) -> Permit:
        if self.state is BreakerState.CLOSED:
            return NORMAL
        now = time.monotonic()
        remaining = self.opened_at + self.reset_seconds - now
        if remaining > 0:
            raise CircuitOpenError(self.provider, remaining)
        if self.trial_until > now:  # half-open, the one trial is in flight
            raise CircuitOpenError(self.provider, 1.0)
        self.trial_until = now + self.trial_seconds
        self._set(BreakerState.HALF_OPEN)
        return Permit(trial=True, backend="local")

    def check_now(self) -> None:
        if self.state is BreakerState.CLOSED:
            return
        remaining = self.opened_at + self.reset_seconds - time.monotonic()
        raise CircuitOpenError(self.provider, remaining if remaining > 0 else 1.0)

    def success_now(self, permit: Permit) -> None:
        if permit.trial:
            if self.state is BreakerState.HALF_OPEN:  # the trial succeeded: close
                self.failures = 0
                self.trial_until = 0.0
                self._set(BreakerState.CLOSED)
            return
        if self.state is BreakerState.CLOSED:
            self.failures = 0  # consecutive failures only

    def failure_now(self, permit: Permit) -> None:
        now = time.monotonic()
        if permit.trial:
            if self.state is BreakerState.HALF_OPEN:
                self._open(now)
            return
        if self.state is not BreakerState.CLOSED:
            return  # a call that started before the breaker opened: already counted, do not extend
        self.failures += 1
        if self.failures >= self.fail_max:
            self._open(now)

    def release_now(self, permit: Permit) -> None:
        if permit.trial and self.state is BreakerState.HALF_OPEN:
            self.trial_until = 0.0

    def snapshot_now(self) -> tuple[BreakerState, int, float]:
        remaining = 0.0
        if self.state is not BreakerState.CLOSED:
            remaining = max(0.0, self.opened_at + self.reset_seconds - time.monotonic())
            if remaining == 0.0 and self.state is BreakerState.OPEN:
                return BreakerState.HALF_OPEN, self.failures, 0.0
        return self.state, self.failures, remaining

    # async face, so callers treat both implementations alike
    async def acquire(self) -> Permit:
        return self.acquire_now()

    async def check(self) -> None:
        self.check_now()

    async def record_success(self, permit: Permit) -> None:
        self.success_now(permit)

    async def record_failure(self, permit: Permit) -> None:
        self.failure_now(permit)

    async def release(self, permit: Permit) -> None:
        self.release_now(permit)

    async def snapshot(self) -> tuple[BreakerState, int, float]:
        return self.snapshot_now()


# --------------------------------------------------------------------------------------------------
# Redis breaker. KEYS[1] = state hash, KEYS[2] = trial key. Times in ms from the Redis server clock.
# --------------------------------------------------------------------------------------------------
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# ARGV: reset_ms, trial_ms, token, keep_ms -> {code, ms}: 0 closed, 1 trial granted, 2 open (ms left),
# 3 half-open with the trial taken (ms until that trial's slot expires)
_ACQUIRE = (
    _NOW
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'closed' then return {0, 0} end
local opened = tonumber(redis.call('HGET', KEYS[1], 'opened_at') or '0')
local left = opened + tonumber(ARGV[1]) - now
if left > 0 then return {2, left} end
if redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[2]) then
  redis.call('HSET', KEYS[1], 'state', 'half_open')
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {1, 0}
end
return {3, redis.call('PTTL', KEYS[2])}
"""
)

# ARGV: reset_ms -> {code, ms} like _ACQUIRE but never takes the trial (used between retries)
_CHECK = (
    _NOW
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'closed' then return {0, 0} end
local opened = tonumber(redis.call('HGET', KEYS[1], 'opened_at') or '0')
local left = opened + tonumber(ARGV[1]) - now
if left > 0 then return {2, left} end
return {3, 1000}
"""
)

# ARGV: is_trial, token, keep_ms -> new state code
_SUCCESS = """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if ARGV[1] == '1' then
  if redis.call('GET', KEYS[2]) ~= ARGV[2] then
    if state == 'closed' then return 0 elseif state == 'half_open' then return 1 else return 2 end
  end
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0)
  redis.call('HDEL', KEYS[1], 'opened_at')
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 0
end
if state == 'closed' then
  if tonumber(redis.call('HGET', KEYS[1], 'failures') or '0') > 0 then
    redis.call('HSET', KEYS[1], 'failures', 0)
  end
  return 0
end
if state == 'half_open' then return 1 end
return 2
"""

# ARGV: is_trial, token, fail_max, keep_ms -> {state code, failures}
_FAILURE = (
    _NOW
    + """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if ARGV[1] == '1' then
  if redis.call('GET', KEYS[2]) == ARGV[2] then
    redis.call('DEL', KEYS[2])
    redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', now)
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
    return {2, tonumber(redis.call('HGET', KEYS[1], 'failures') or '0')}
  end
end
if state ~= 'closed' then
  if state == 'half_open' then return {1, 0} end
  return {2, 0}
end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
if failures >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', now)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {2, failures}
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {0, failures}
"""
)

# ARGV: token -> 1 if the trial slot was ours and is now free
_RELEASE = """
if redis.call('GET', KEYS[2]) == ARGV[1] then return redis.call('DEL', KEYS[2]) end
return 0
"""

# -> {state code, failures, ms left}
_SNAPSHOT = (
    _NOW
    + """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local failures = tonumber(redis.call('HGET', KEYS[1], 'failures') or '0')
if state == 'closed' then return {0, failures, 0} end
local opened = tonumber(redis.call('HGET', KEYS[1], 'opened_at') or '0')
local left = opened + tonumber(ARGV[1]) - now
if left > 0 then return {2, failures, left} end
return {1, failures, 0}
"""
)

_CODE_STATE = {
    0: BreakerState.CLOSED,
    1: BreakerState.HALF_OPEN,
    2: BreakerState.OPEN,
    3: BreakerState.HALF_OPEN,
}


class RedisBreaker:
    """The shared breaker; falls back to ``self.local`` whenever Redis fails."""

    def __init__(
        self,
        provider: str,
        redis: Any,
        *,
        fail_max: int,
        reset_seconds: float,
        trial_seconds: float,
        key_prefix: str = "tradedesk:breaker",
    ) -> None:
        self.provider = provider
        self.redis = redis
        self.fail_max = fail_max
        self.reset_ms = max(1, int(reset_seconds * 1000))
        self.trial_ms = max(1, int(trial_seconds * 1000))
        # Keep the hash well past any open period; a forgotten provider's state then ages out by itself.
        self.keep_ms = max(86_400_000, 10 * self.reset_ms)
        self.keys = [f"{key_prefix}:{provider}", f"{key_prefix}:{provider}:trial"]
        self.local = LocalBreaker(
            provider, fail_max=fail_max, reset_seconds=reset_seconds, trial_seconds=trial_seconds
        )
        self.guard = RedisGuard("breaker")
        self._gauge = CIRCUIT_BREAKER_STATE.labels(provider)
        self._acquire = redis.register_script(_ACQUIRE)
        self._check = redis.register_script(_CHECK)
        self._success = redis.register_script(_SUCCESS)
        self._failure = redis.register_script(_FAILURE)
        self._release = redis.register_script(_RELEASE)
        self._snapshot = redis.register_script(_SNAPSHOT)

    async def acquire(self) -> Permit:
        if self.guard.available:
            token = uuid.uuid4().hex
            try:
                code, ms = await self._acquire(
                    keys=self.keys, args=[self.reset_ms, self.trial_ms, token, self.keep_ms]
                )
            except REDIS_FAILURES as exc:
                self.guard.failed(exc, "acquire")
            else:
                code, ms = int(code), int(ms)
                self._gauge.set(int(_CODE_STATE[code]))
                if code == 0:
                    return Permit(backend="redis")
                if code == 1:
                    return Permit(trial=True, backend="redis", token=token)
                # open: the remaining open time; half-open with the trial in flight: try again shortly
                raise CircuitOpenError(self.provider, ms / 1000 if code == 2 else 1.0)
        return self.local.acquire_now()

    async def check(self) -> None:
        if self.guard.available:
            try:
                code, ms = await self._check(keys=self.keys, args=[self.reset_ms])
            except REDIS_FAILURES as exc:
                self.guard.failed(exc, "check")
            else:
                if int(code) != 0:
                    raise CircuitOpenError(self.provider, int(ms) / 1000)
                return
        self.local.check_now()

    async def record_success(self, permit: Permit) -> None:
        if permit.backend == "redis" and self.guard.available:
            try:
                code = await self._success(
                    keys=self.keys, args=["1" if permit.trial else "0", permit.token, self.keep_ms]
                )
            except REDIS_FAILURES as exc:
                self.guard.failed(exc, "record_success")
            else:
                self._gauge.set(int(code))
                return
        self.local.success_now(permit if permit.backend == "local" else NORMAL)

    async def record_failure(self, permit: Permit) -> None:
        if permit.backend == "redis" and self.guard.available:
            try:
                code, _ = await self._failure(
                    keys=self.keys,
                    args=["1" if permit.trial else "0", permit.token, self.fail_max, self.keep_ms],
                )
            except REDIS_FAILURES as exc:
                self.guard.failed(exc, "record_failure")
            else:
                self._gauge.set(int(code))
                return
        self.local.failure_now(permit if permit.backend == "local" else NORMAL)

    async def release(self, permit: Permit) -> None:
        if not permit.trial:
            return
        if permit.backend == "redis":
            try:
                await self._release(keys=self.keys, args=[permit.token])
            except REDIS_FAILURES as exc:
                self.guard.failed(exc, "release")  # the trial key expires on its own
            return
        self.local.release_now(permit)

    async def snapshot(self) -> tuple[BreakerState, int, float]:
        if self.guard.available:
            try:
                code, failures, ms = await self._snapshot(keys=self.keys, args=[self.reset_ms])
            except REDIS_FAILURES as exc:
                self.guard.failed(exc, "snapshot")
            else:
                return _CODE_STATE[int(code)], int(failures), int(ms) / 1000
        return self.local.snapshot_now()


def make_breaker(
    provider: str, *, redis: Any | None, fail_max: int, reset_seconds: float, trial_seconds: float
) -> CircuitBreaker:
    """The shared (Redis) breaker when Redis is configured, else the in-process one."""
    if redis is None:
        return LocalBreaker(
            provider, fail_max=fail_max, reset_seconds=reset_seconds, trial_seconds=trial_seconds
        )
    return RedisBreaker(
        provider, redis, fail_max=fail_max, reset_seconds=reset_seconds, trial_seconds=trial_seconds
    )
