"""Market-data cache: fresh window, stale-if-error, single-flight, provider rate-limit back-off.

Semantics (per key, e.g. a symbol's quote or one bars query):

* **HIT** — a copy younger than ``MARKET_DATA_CACHE_SECONDS`` exists: served, no upstream call.
* **MISS** — no fresh copy: the provider is asked, the answer stored and served. Concurrent misses for one
  key make **one** upstream call: in-process, every request for the key awaits one shared task; across
  processes (Redis configured), that task first takes a short Redis lock (``SET NX PX``); a process that
  finds the lock taken polls Redis (10 → 100 ms) for the leader's value or its published failure (or
  "no such symbol"), for at most the lock's lifetime, instead of calling the provider itself. Requests
  that waited for the upstream answer are labelled MISS too: their data came from the provider while
  they waited.
* **STALE** — the provider failed (timeout, connection error, 5xx, open breaker, rate limit) and a copy
  younger than fresh + 3600 s exists: that copy is served. Without one the caller gets the
  ``UpstreamError`` (503 + ``Retry-After``).
* Provider **429** — its reset (``Retry-After``/``X-RateLimit-Reset``) is recorded (shared through Redis)
  and no upstream call is made for this provider until it passes: stale copies are served, else 503 with
  the remaining time as ``Retry-After``.
* **Not found** — the provider's ``NotFound`` (no such symbol) is kept as a *negative entry* for
  ``NOT_FOUND_SECONDS`` under its own key (``not_found_key``: the symbol, per kind), and answered from there
  (404, ``X-Cache: HIT``, counted as ``NOT_FOUND``) without asking the provider, so a flood of unknown
  symbols costs the provider one call per symbol a minute. A fresh copy of the value still wins.
* **Entry bound** — a value whose stored form exceeds ``max_entry_bytes`` (``MAX_ENTRY_BYTES``, 2 MiB: well
  above the largest legitimate answer, 10,000 bars ≈ 0.9 MB) is served but not cached (logged).

Storage: Redis when ``REDIS_URL`` is set (one envelope per key with a TTL of fresh + stale; negative entries
``…:nf:<kind>:<symbol>`` with a TTL of ``NOT_FOUND_SECONDS``), else a size-bounded in-process LRU (entries
and bytes; negative entries in a bounded LRU of their own). The envelope of a JSON value is ``{"at", "v"}``;
a ``bytes`` value (a finished response body, e.g. bars) is stored raw behind a one-line header
(``#<at>\\n<body>``), so reading it back costs no JSON parse and no re-encoding. With Redis, a tiny
in-process **L1** (≤ 1 s, bounded, never past the copy's fresh window) answers hot keys without a Redis
round trip; it can only make a HIT at most that much older than the newest copy in Redis, which is within
the contract's freshness. If Redis fails, the cache degrades to the in-process LRU and in-process
single-flight (logged, counted), never 500.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import json
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from app.core.errors import NotFound
from app.core.http import UpstreamError, UpstreamRateLimited, UpstreamTimeout
from app.core.observability import MARKET_DATA_CACHE
from app.core.redisconn import REDIS_FAILURES, RedisGuard

log = logging.getLogger("tradedesk.market_data")

STALE_SECONDS = 3600.0
L1_SECONDS = 1.0
MAX_THROTTLE_SECONDS = 3600.0
ERROR_MARKER_MS = 3000
NOT_FOUND_SECONDS = 60.0
MAX_ENTRY_BYTES = 2 * 1024 * 1024
OVERSIZE_LOG_SECONDS = 10.0  # at most one "not cached: too large" warning per this many seconds
_RAW = b"#"  # first byte of a raw (bytes) envelope; a JSON envelope starts with '{'


class CacheStatus(enum.StrEnum):
    HIT = "HIT"
    MISS = "MISS"
    STALE = "STALE"


class CachedNotFound(NotFound):
    """A "no such symbol" answered from a negative entry: the provider was not asked."""


@dataclass(frozen=True, slots=True)
class Entry:
    value: Any
    fetched_at: float  # epoch seconds (comparable across processes)
    size: int


class _LRU:
    """An ordered dict bounded by entry count and by (approximate, JSON) bytes."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._data: OrderedDict[str, tuple[float, Entry]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str, now: float) -> Entry | None:
        """The entry if its expiry (same clock as ``now``) has not passed."""
        slot = self._data.get(key)
        if slot is None:
            return None
        if slot[0] <= now:
            self._drop(key)
            return None
        self._data.move_to_end(key)
        return slot[1]

    def put(self, key: str, entry: Entry, expires: float) -> None:
        if entry.size > self.max_bytes:
            self._drop(key)
            return
        self._drop(key)
        self._data[key] = (expires, entry)
        self.bytes += entry.size
        while len(self._data) > self.max_entries or self.bytes > self.max_bytes:
            oldest = next(iter(self._data))
            self._drop(oldest)

    def _drop(self, key: str) -> None:
        slot = self._data.pop(key, None)
        if slot is not None:
            self.bytes -= slot[1].size


class MarketDataCache:
    def __init__(
        self,
        *,
        namespace: str,
        provider: str,
        fresh_seconds: float,
        fetch_timeout: float,
        redis: Any | None = None,
        stale_seconds: float = STALE_SECONDS,
        l1_seconds: float = L1_SECONDS,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        l1_max_entries: int = 1024,
        l1_max_bytes: int = 16 * 1024 * 1024,
        max_entry_bytes: int = MAX_ENTRY_BYTES,
        not_found_seconds: float = NOT_FOUND_SECONDS,
        not_found_max_entries: int = 10_000,
    ) -> None:
        self.namespace = namespace
        self.provider = provider  # names the provider in the errors this cache raises itself
        self.fresh = float(fresh_seconds)
        self.stale = float(stale_seconds)
        self.redis = redis
        self.guard = RedisGuard("cache")
        # The lock outlives the leader's fetch (its deadline); waiters give up a little after it.
        self.lock_ms = int((fetch_timeout + 2.0) * 1000)
        self.wait_seconds = fetch_timeout + 3.0
        self.l1_seconds = min(l1_seconds, self.fresh)
        self._l1 = _LRU(l1_max_entries, l1_max_bytes) if redis is not None else None
        self._local = _LRU(max_entries, max_bytes)  # the store without Redis; the fallback with it
        self.max_entry_bytes = max_entry_bytes
        self.not_found_seconds = float(not_found_seconds)
        self._not_found = _LRU(
            not_found_max_entries, not_found_max_entries * 512
        )  # likewise, negative entries
        self._oversize_logged_at = -math.inf
        self._inflight: dict[str, asyncio.Task[Any]] = {}
        self._reads: dict[str, asyncio.Task[Entry | None]] = {}  # coalesced Redis reads (L1 refresh)
        self._throttled_until = 0.0  # epoch seconds
        self._counters: dict[tuple[str, str], Any] = {}
        self._unlock_script = redis.register_script(_UNLOCK) if redis is not None else None

    # ------------------------------------------------------------------ public
    async def get_or_fetch(
        self,
        kind: str,
        key: str,
        fetch: Callable[[], Awaitable[Any]],
        *,
        not_found_key: str | None = None,
    ) -> tuple[Any, CacheStatus]:
        """The value for ``key`` and how it was served; raises the provider's ``UpstreamError`` (or its
        ``AppError``, e.g. NotFound) when there is no usable copy. A ``NotFound`` is remembered under
        ``not_found_key`` (default: ``key``) of this kind for ``not_found_seconds``."""
        key = f"{kind}:{key}"
        if self._l1 is not None:
            entry = self._l1.get(key, time.monotonic())
            if entry is not None:
                self._count(kind, "HIT")
                return entry.value, CacheStatus.HIT
        entry = await self._read_shared(key)
        now = time.time()
        if entry is not None and now - entry.fetched_at < self.fresh:
            self._remember(key, entry, now)
            self._count(kind, "HIT")
            return entry.value, CacheStatus.HIT

        task = self._inflight.get(key)
        if task is None:
            nf_key = key if not_found_key is None else f"{kind}:{not_found_key}"  # off the HIT path
            task = asyncio.create_task(self._lead(key, nf_key, fetch), name=f"market-data-fetch:{key}")
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._finished, key))
        try:
            value = await asyncio.shield(task)
        except UpstreamError:
            if entry is None:
                entry = await self._read(key, time.time())  # a copy may have arrived meanwhile
            if entry is not None and time.time() - entry.fetched_at < self.fresh + self.stale:
                self._count(kind, "STALE")
                return entry.value, CacheStatus.STALE
            self._count(kind, "ERROR")
            raise
        except CachedNotFound:
            self._count(kind, "NOT_FOUND")
            raise
        except NotFound as exc:  # from the provider (here or, through Redis, in the leading process)
            exc.headers.setdefault("X-Cache", CacheStatus.MISS.value)
            self._count(kind, "ERROR")
            raise
        except Exception:
            self._count(kind, "ERROR")
            raise
        self._count(kind, "MISS")
        return value, CacheStatus.MISS

    async def throttle_remaining(self) -> float:
        """Seconds until the provider's last rate-limit reset (0 when not throttled)."""
        now = time.time()
        until = self._throttled_until
        if self.redis is not None and self.guard.available:
            try:
                raw = await self.redis.get(self._k("throttle"))
            except REDIS_FAILURES as exc:
                self.guard.failed(exc, "throttle_get")
            else:
                if raw:
                    until = max(until, float(raw))
        return max(0.0, until - now)

    # ------------------------------------------------------------------ leader / waiter
    async def _lead(self, key: str, nf_key: str, fetch: Callable[[], Awaitable[Any]]) -> Any:
        await self._raise_if_not_found(nf_key)
        remaining = await self.throttle_remaining()
        if remaining > 0:
            raise UpstreamRateLimited(self.provider, retry_after=remaining)
        if self.redis is None:
            return await self._fetch_and_store(key, nf_key, fetch)

        token = uuid.uuid4().hex
        lock_key = self._k("lock", key)
        for round_ in range(3):
            if round_:  # the previous leader vanished: maybe its value landed after all
                entry = await self._read(key, time.time())
                if entry is not None and time.time() - entry.fetched_at < self.fresh:
                    return entry.value
            if not self.guard.available:
                return await self._fetch_and_store(key, nf_key, fetch)
            try:
                leader = await self.redis.set(lock_key, token, nx=True, px=self.lock_ms)
                holder = None if leader else await self.redis.get(lock_key)
            except REDIS_FAILURES as exc:
                self.guard.failed(exc, "lock")
                return await self._fetch_and_store(key, nf_key, fetch)
            if leader:
                try:
                    # Double-check under the lock: a leader elsewhere may have stored a copy (or a "not
                    # found") between our read and our lock; then there is nothing to fetch.
                    entry = await self._read(key, time.time())
                    if entry is not None and time.time() - entry.fetched_at < self.fresh:
                        return entry.value
                    await self._raise_if_not_found(nf_key)
                    return await self._fetch_and_store(key, nf_key, fetch)
                except CachedNotFound:
                    raise  # nothing was asked: waiters find the same negative entry
                except (UpstreamError, NotFound) as exc:
                    await self._publish_error(key, token, exc)
                    raise
                finally:
                    await self._unlock(lock_key, token)
            if holder is None:
                continue  # released between our SET and GET: look again
            value = await self._wait_for_leader(key, holder.decode() if isinstance(holder, bytes) else holder)
            if value is not _GONE:
                return value
        raise UpstreamTimeout(self.provider, seconds=self.wait_seconds)

    async def _wait_for_leader(self, key: str, holder: str) -> Any:
        if self.redis is None:  # no other process to wait for
            return _GONE
        keys = [self._k("v", key), self._k("err", key), self._k("lock", key)]
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.wait_seconds
        delay = 0.01
        while loop.time() < give_up:
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.1)
            try:
                raw_value, raw_err, lock = await self.redis.mget(keys)
            except REDIS_FAILURES as exc:
                self.guard.failed(exc, "wait")
                return _GONE  # the caller falls back to fetching in-process
            if raw_value:
                entry = _decode(raw_value)
                if entry is not None and time.time() - entry.fetched_at < self.fresh:
                    self._remember(key, entry, time.time())
                    return entry.value
            err = _json_object(raw_err) if raw_err else None
            if err is not None:
                if err.get("token") == holder:
                    if err.get("kind") == "not_found":
                        raise NotFound(str(err.get("detail") or "Not found."))
                    if err.get("kind") == "rate_limited":
                        raise UpstreamRateLimited(self.provider, retry_after=float(err.get("retry_after", 1)))
                    raise UpstreamError(self.provider, retry_after=float(err.get("retry_after", 1)))
            if lock is None:
                return _GONE
            lock = lock.decode() if isinstance(lock, bytes) else lock
            if lock != holder:
                holder = lock  # a new leader took over; wait for that one
        raise UpstreamTimeout(self.provider, seconds=self.wait_seconds)

    async def _fetch_and_store(self, key: str, nf_key: str, fetch: Callable[[], Awaitable[Any]]) -> Any:
        try:
            value = await fetch()
        except UpstreamRateLimited as exc:
            await self._throttle(exc.retry_after)
            raise
        except NotFound as exc:
            await self._write_not_found(nf_key, exc.detail)
            raise
        at = time.time()
        raw = _encode(at, value)
        if len(raw) > self.max_entry_bytes:
            self._oversize(key, len(raw))
            return value  # served, never stored: one entry cannot take more than the bound
        await self._write(key, Entry(value, at, len(raw)), raw)
        return value

    def _oversize(self, key: str, size: int) -> None:
        now = time.monotonic()
        if now - self._oversize_logged_at >= OVERSIZE_LOG_SECONDS:
            self._oversize_logged_at = now
            log.warning(
                "market-data answer too large to cache; served uncached",
                extra={"key": key[:120], "bytes": size, "max_entry_bytes": self.max_entry_bytes},
            )

    # ------------------------------------------------------------------ storage
    async def _read_shared(self, key: str) -> Entry | None:
        """``_read``, but concurrent readers of one key share one Redis round trip: when a hot key's L1
        copy lapses, the requests in flight do not each go to Redis."""
        if self.redis is None:
            return self._local.get(key, time.time())
        task = self._reads.get(key)
        if task is None:
            task = asyncio.create_task(self._read(key, time.time()))
            self._reads[key] = task
            task.add_done_callback(functools.partial(self._read_finished, key))
        return await asyncio.shield(task)

    def _read_finished(self, key: str, task: asyncio.Task[Any]) -> None:
        if self._reads.get(key) is task:
            del self._reads[key]

    def _k(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    async def _read(self, key: str, now: float) -> Entry | None:
        if self.redis is not None and self.guard.available:
            try:
                raw = await self.redis.get(self._k("v", key))
            except REDIS_FAILURES as exc:
                self.guard.failed(exc, "get")
            else:
                return _decode(raw) if raw else None
        return self._local.get(key, now)

    async def _write(self, key: str, entry: Entry, raw: bytes) -> None:
        ttl = self.fresh + self.stale
        self._remember(key, entry, entry.fetched_at)
        if self.redis is not None and self.guard.available:
            try:
                await self.redis.set(self._k("v", key), raw, px=int(ttl * 1000))
                return
            except REDIS_FAILURES as exc:
                self.guard.failed(exc, "set")
        self._local.put(key, entry, entry.fetched_at + ttl)

    async def _raise_if_not_found(self, nf_key: str) -> None:
        """Raise ``CachedNotFound`` when a negative entry for ``nf_key`` exists."""
        detail: str | None = None
        if self.redis is not None and self.guard.available:
            try:
                raw = await self.redis.get(self._k("nf", nf_key))
            except REDIS_FAILURES as exc:
                self.guard.failed(exc, "not_found_get")
            else:
                if raw is None:
                    return
                detail = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        if detail is None:
            entry = self._not_found.get(nf_key, time.time())
            if entry is None:
                return
            detail = entry.value
        raise CachedNotFound(detail or "Not found.", headers={"X-Cache": CacheStatus.HIT.value})

    async def _write_not_found(self, nf_key: str, detail: str) -> None:
        if self.redis is not None and self.guard.available:
            try:
                await self.redis.set(self._k("nf", nf_key), detail, px=int(self.not_found_seconds * 1000))
                return
            except REDIS_FAILURES as exc:
                self.guard.failed(exc, "not_found_set")
        now = time.time()
        self._not_found.put(
            nf_key, Entry(detail, now, len(nf_key) + len(detail)), now + self.not_found_seconds
        )

    def _remember(self, key: str, entry: Entry, now: float) -> None:
        """Put a fresh copy in L1 for at most l1_seconds and never past its fresh window."""
        if self._l1 is None:
            return
        ttl = min(self.l1_seconds, entry.fetched_at + self.fresh - now)
        if ttl > 0:
            self._l1.put(key, entry, time.monotonic() + ttl)

    async def _unlock(self, lock_key: str, token: str) -> None:
        if self._unlock_script is None:
            return
        try:
            await self._unlock_script(keys=[lock_key], args=[token])
        except REDIS_FAILURES as exc:
            self.guard.failed(exc, "unlock")  # the lock expires on its own

    async def _publish_error(self, key: str, token: str, exc: UpstreamError | NotFound) -> None:
        """Tell processes waiting on this leader that it failed (or that the provider knows no such
        symbol), so they do not call the provider too."""
        if isinstance(exc, NotFound):
            marker = json.dumps({"token": token, "kind": "not_found", "detail": exc.detail})
        else:
            marker = json.dumps({"token": token, "kind": exc.outcome, "retry_after": exc.retry_after})
        if self.redis is None:  # no other process is waiting
            return
        try:
            await self.redis.set(self._k("err", key), marker, px=ERROR_MARKER_MS)
        except REDIS_FAILURES as failure:
            self.guard.failed(failure, "publish_error")

    async def _throttle(self, seconds: float) -> None:
        seconds = min(max(seconds, 1.0), MAX_THROTTLE_SECONDS)
        until = time.time() + seconds
        self._throttled_until = max(self._throttled_until, until)
        if self.redis is not None and self.guard.available:
            try:
                await self.redis.set(self._k("throttle"), repr(until), px=int(math.ceil(seconds * 1000)))
            except REDIS_FAILURES as exc:
                self.guard.failed(exc, "throttle_set")

    def _finished(self, key: str, task: asyncio.Task[Any]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: waiters handle it; no "never retrieved" noise

    def _count(self, kind: str, result: str) -> None:
        counter = self._counters.get((kind, result))
        if counter is None:
            counter = self._counters[(kind, result)] = MARKET_DATA_CACHE.labels(kind, result)
        counter.inc()


_GONE = object()

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _encode(at: float, value: Any) -> bytes:
    if isinstance(value, bytes):
        return _RAW + repr(at).encode() + b"\n" + value
    return json.dumps({"at": at, "v": value}, separators=(",", ":")).encode()


def _decode(raw: bytes) -> Entry | None:
    if raw[:1] == _RAW:
        newline = raw.find(b"\n", 1, 40)
        try:
            at = float(raw[1:newline]) if newline > 0 else math.nan
        except ValueError:
            return None
        return Entry(raw[newline + 1 :], at, len(raw)) if math.isfinite(at) else None
    try:
        envelope = json.loads(raw)
        return Entry(envelope["v"], float(envelope["at"]), len(raw))
    except (ValueError, KeyError, TypeError):
        return None


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
