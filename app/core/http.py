"""The one outbound HTTP layer: every call to a provider (market data, broker, OAuth, Discord) goes here.

This module is the only place in ``app/`` that constructs an ``httpx.AsyncClient`` (a test enforces it).
``Outbound`` is built once in the lifespan and owns one ``OutboundClient`` per provider; each client has

* explicit connect / read / write / pool timeouts **and a total deadline per call** (``asyncio.timeout``):
  httpx's read timeout applies per chunk, so a server that drips one byte a second would otherwise hold a
  call for ever. The deadline covers every attempt, back-off sleep and the body read;
* connection limits and ``User-Agent: tradedesk/<version>``; redirects are not followed;
* retries with tenacity (exponential back-off with jitter) **only** for idempotent requests (GET, HEAD,
  PUT, DELETE, OPTIONS, or ``idempotent=True`` for e.g. a POST carrying an idempotency key), and only on
  connection failures (connect error/timeout, pool timeout, connection reset or closed before an answer)
  and on 502/503/504/429. A 429's ``Retry-After`` is honoured when it fits under the cap and the deadline;
  a longer one ends the call at once with ``UpstreamRateLimited(retry_after=…)`` so callers can honour it;
* a circuit breaker per provider (``app.core.breaker``): an open breaker raises ``CircuitOpenError``
  without touching the network; outcomes are recorded once per call (all its attempts);
* metrics ``external_api_requests_total{provider,outcome}``, ``external_api_latency_seconds{provider}``,
  ``external_api_retries_total{provider}`` and ``circuit_breaker_state{provider}``.

Result contract of ``OutboundClient.request``: a response with status < 500 other than 429 is returned
(4xx are the caller's business and never count against the breaker); everything else raises a subclass
of ``UpstreamError`` (itself a 503 ``AppError``, so an unhandled one still answers 503 + Retry-After):
``UpstreamTimeout``, ``UpstreamConnectError`` (``maybe_sent`` False: nothing reached the provider),
``UpstreamStatusError`` (5xx), ``UpstreamRateLimited`` (429), ``UpstreamBadResponse`` (body over the size
cap) and ``CircuitOpenError``.

Tests and callers inject a transport per provider (``Outbound(..., transports={"alpaca-data": t})`` or
``app.state.http_transports`` before startup) — no import patching.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    wait_exponential_jitter,
)

from app import __version__
from app.core.breaker import (
    BreakerState,
    CircuitBreaker,
    CircuitOpenError,
    Permit,
    UpstreamError,
    make_breaker,
)
from app.core.config import Settings
from app.core.observability import EXTERNAL_API_LATENCY, EXTERNAL_API_REQUESTS, EXTERNAL_API_RETRIES

__all__ = [
    "IDEMPOTENT_METHODS",
    "USER_AGENT",
    "BreakerState",
    "CircuitOpenError",
    "Outbound",
    "OutboundClient",
    "UpstreamBadResponse",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamRateLimited",
    "UpstreamStatusError",
    "UpstreamTimeout",
    "parse_retry_after",
]

log = logging.getLogger("tradedesk.outbound")

USER_AGENT = f"tradedesk/{__version__}"
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Transport failures worth another attempt of an idempotent request: the connection failed or broke
# before an answer arrived. Read/write *timeouts* are not retried: the provider is slow, and another
# attempt would only add load and run into the deadline anyway.
RETRY_EXCEPTIONS: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)
# Failures that certainly happened before any byte of the request left this process.
NOT_SENT_EXCEPTIONS: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_MAX_RETRY_AFTER = 5.0  # seconds: a longer Retry-After ends the call instead of sleeping
DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
MAX_CONNECT_TIMEOUT = 5.0


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------
class UpstreamTimeout(UpstreamError):
    slug, outcome = "upstream-timeout", "timeout"

    def __init__(self, provider: str, *, maybe_sent: bool = True, seconds: float | None = None) -> None:
        self.maybe_sent = maybe_sent
        after = f" within {seconds:g} s" if seconds else ""
        super().__init__(provider, f"The {provider} service did not answer{after}; retry shortly.")


class UpstreamConnectError(UpstreamError):
    slug, outcome = "upstream-unreachable", "connection_error"

    def __init__(self, provider: str, *, maybe_sent: bool) -> None:
        self.maybe_sent = maybe_sent
        super().__init__(provider, f"The {provider} service could not be reached; retry shortly.")


class UpstreamStatusError(UpstreamError):
    slug, outcome = "upstream-error", "server_error"

    def __init__(self, provider: str, response: httpx.Response) -> None:
        self.status_code = response.status_code
        self.response = response
        retry_after = parse_retry_after(response.headers)
        super().__init__(
            provider,
            f"The {provider} service failed (HTTP {response.status_code}); retry shortly.",
            retry_after=retry_after if retry_after is not None else 1.0,
        )


class UpstreamRateLimited(UpstreamError):
    slug, outcome = "upstream-rate-limited", "rate_limited"

    def __init__(self, provider: str, *, retry_after: float, response: httpx.Response | None = None) -> None:
        self.response = response
        super().__init__(
            provider,
            f"The {provider} service is rate limiting us; retry in {max(1, math.ceil(retry_after))} s.",
            retry_after=retry_after,
        )


class UpstreamBadResponse(UpstreamError):
    slug, outcome = "upstream-bad-response", "invalid_response"

    def __init__(self, provider: str, reason: str) -> None:
        self.reason = reason
        super().__init__(provider, f"The {provider} service sent an unusable answer; retry shortly.")


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or HTTP-date), ``X-RateLimit-Reset-After`` (seconds)
    or ``X-RateLimit-Reset`` (epoch seconds, as Alpaca sends; small values are read as seconds)."""
    now = time.time() if now is None else now
    raw = headers.get("retry-after")
    if raw:
        raw = raw.strip()
        try:
            return max(0.0, float(raw))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(raw)
            except (TypeError, ValueError):
                when = None
            if when is not None and when.tzinfo is not None:
                return max(0.0, when.timestamp() - now)
    raw = headers.get("x-ratelimit-reset-after")
    if raw:
        try:
            return max(0.0, float(raw))
        except ValueError:
            pass
    raw = headers.get("x-ratelimit-reset")
    if raw:
        try:
            value = float(raw)
        except ValueError:
            return None
        return max(0.0, value - now) if value > 1_000_000_000 else max(0.0, value)
    return None


class _RetryableStatus(Exception):
    """Internal: an attempt answered 429/502/503/504; carries the response to the retry policy."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.retry_after = parse_retry_after(response.headers)


# --------------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------------
class OutboundClient:
    """One provider's HTTP client: timeouts, deadline, retries, breaker, metrics."""

    def __init__(
        self,
        provider: str,
        *,
        base_url: str,
        timeout: float,
        breaker: CircuitBreaker,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        limits: httpx.Limits | None = None,
        backoff: float = 0.2,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be > 0: no outbound call may wait for ever")
        self.provider = provider
        self.deadline = timeout
        self.breaker = breaker
        self.max_attempts = max(1, max_attempts)
        self.max_retry_after = max_retry_after
        self.max_response_bytes = max_response_bytes
        short = min(timeout, MAX_CONNECT_TIMEOUT)
        self.timeouts = httpx.Timeout(connect=short, read=timeout, write=timeout, pool=short)
        self._backoff = wait_exponential_jitter(multiplier=backoff, max=2.0, jitter=backoff)
        self._client = httpx.AsyncClient(
            base_url=base_url,
            timeout=self.timeouts,
            limits=limits
            or httpx.Limits(max_connections=50, max_keepalive_connections=10, keepalive_expiry=30),
            headers={"User-Agent": USER_AGENT, "Accept": "application/json", **dict(headers or {})},
            transport=transport,
            follow_redirects=False,
        )
        self._requests = {
            o: EXTERNAL_API_REQUESTS.labels(provider, o)
            for o in (
                "success",
                "client_error",
                "rate_limited",
                "server_error",
                "timeout",
                "connection_error",
                "invalid_response",
                "circuit_open",
            )
        }
        self._latency = EXTERNAL_API_LATENCY.labels(provider)
        self._retries = EXTERNAL_API_RETRIES.labels(provider)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", url, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.request("POST", url, **kwargs)

    async def request(
        self,
        method: str,
        url: str,
        *,
        idempotent: bool | None = None,
        deadline: float | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send one logical call (possibly several attempts) under the breaker and a total deadline.

        ``kwargs`` are httpx's (params, json, data, content, headers). ``deadline`` (seconds) overrides
        the client's total deadline for this call, e.g. the remaining budget of a multi-page fetch.
        """
        method = method.upper()
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        budget = self.deadline if deadline is None else min(deadline, self.deadline)
        request = self._client.build_request(method, url, **kwargs)  # a malformed request fails here, first
        start = time.perf_counter()
        try:
            permit = await self.breaker.acquire()
        except CircuitOpenError:
            self._requests["circuit_open"].inc()
            raise
        # A half-open trial is a single probe: no retries, so one call is all the provider sees.
        attempts = self.max_attempts if idempotent and not permit.trial else 1
        outcome = "success"
        try:
            try:
                if budget <= 0:
                    raise TimeoutError
                async with asyncio.timeout(budget):
                    response = await self._send_with_retries(request, attempts, start + budget)
            except TimeoutError:
                raise UpstreamTimeout(self.provider, seconds=budget) from None
            except httpx.TimeoutException as exc:
                raise UpstreamTimeout(
                    self.provider, maybe_sent=not isinstance(exc, NOT_SENT_EXCEPTIONS), seconds=budget
                ) from None
            except httpx.TransportError as exc:
                raise UpstreamConnectError(
                    self.provider, maybe_sent=not isinstance(exc, NOT_SENT_EXCEPTIONS)
                ) from None
            except _RetryableStatus as exc:
                response = exc.response
            status = response.status_code
            if status == 429:
                retry_after = parse_retry_after(response.headers)
                raise UpstreamRateLimited(
                    self.provider, retry_after=1.0 if retry_after is None else retry_after, response=response
                )
            if status >= 500:
                raise UpstreamStatusError(self.provider, response)
            outcome = "success" if status < 400 else "client_error"
            return response
        except UpstreamError as exc:
            outcome = exc.outcome
            raise
        except BaseException:
            # Cancelled (or a bug): neither success nor failure; free a trial slot at once.
            outcome = ""
            await asyncio.shield(self.breaker.release(permit))
            raise
        finally:
            if outcome:
                await self._record(permit, outcome, method, time.perf_counter() - start)

    async def _record(self, permit: Permit, outcome: str, method: str, elapsed: float) -> None:
        self._requests[outcome].inc()
        self._latency.observe(elapsed)
        if outcome in ("server_error", "timeout", "connection_error", "invalid_response"):
            await self.breaker.record_failure(permit)
            log.warning(
                "outbound call failed",
                extra={
                    "provider": self.provider,
                    "method": method,
                    "outcome": outcome,
                    "duration_ms": round(elapsed * 1000, 1),
                },
            )
        elif outcome != "circuit_open":
            # Any answer below 500 (429 included) proves the provider is up.
            await self.breaker.record_success(permit)

    async def _send_with_retries(
        self, request: httpx.Request, attempts: int, ends_at: float
    ) -> httpx.Response:
        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, _RetryableStatus) and exc.retry_after is not None:
                return exc.retry_after
            return self._backoff(state)

        def stop(state: RetryCallState) -> bool:
            if state.attempt_number >= attempts:
                return True
            exc = state.outcome.exception() if state.outcome else None
            if (
                isinstance(exc, _RetryableStatus)
                and exc.retry_after is not None
                and exc.retry_after > self.max_retry_after
            ):
                return True  # longer than we are willing to hold a caller: report it instead
            # No point sleeping past the deadline: fail now with the real reason.
            return time.perf_counter() + state.upcoming_sleep >= ends_at

        def retryable(exc: BaseException) -> bool:
            return isinstance(exc, (_RetryableStatus, *RETRY_EXCEPTIONS))

        retrying = AsyncRetrying(stop=stop, wait=wait, retry=retry_if_exception(retryable), reraise=True)
        async for attempt in retrying:
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    self._retries.inc()
                    # Another caller may have opened the breaker meanwhile: stop hammering.
                    await self.breaker.check()
                response = await self._send_once(request)
                if response.status_code in RETRY_STATUSES:
                    raise _RetryableStatus(response)
        return response

    async def _send_once(self, request: httpx.Request) -> httpx.Response:
        response = await self._client.send(request, stream=True)
        try:
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > self.max_response_bytes:
                raise UpstreamBadResponse(self.provider, "response body over the size cap")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self.max_response_bytes:
                    raise UpstreamBadResponse(self.provider, "response body over the size cap")
        finally:
            await response.aclose()
        # A plain, fully read response (the body is already decoded, so drop the encoding headers).
        headers = [
            (k, v)
            for k, v in response.headers.multi_items()
            if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")
        ]
        return httpx.Response(response.status_code, headers=headers, content=bytes(body), request=request)


# --------------------------------------------------------------------------------------------------
# The registry built in the lifespan
# --------------------------------------------------------------------------------------------------
class Outbound:
    """Every outbound client of the process, one per provider; closed together on shutdown."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis: Any | None = None,
        transports: Mapping[str, httpx.AsyncBaseTransport] | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.transports = dict(transports or {})
        self.clients: dict[str, OutboundClient] = {}

    def create(
        self,
        provider: str,
        *,
        base_url: str,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        **options: Any,
    ) -> OutboundClient:
        """Build (once) the client for ``provider`` with its breaker; ``timeout`` defaults to
        HTTP_TIMEOUT_SECONDS (pass BROKER_TIMEOUT_SECONDS for the broker)."""
        if provider in self.clients:
            raise ValueError(f"an outbound client for {provider!r} already exists")
        timeout = timeout or self.settings.http_timeout_seconds
        breaker = make_breaker(
            provider,
            redis=self.redis,
            fail_max=self.settings.breaker_fail_max,
            reset_seconds=self.settings.breaker_reset_seconds,
            trial_seconds=timeout + 2.0,  # the trial slot outlives the trial call (its deadline)
        )
        client = OutboundClient(
            provider,
            base_url=base_url,
            timeout=timeout,
            breaker=breaker,
            headers=headers,
            transport=self.transports.get(provider) or self.transports.get("*"),
            **options,
        )
        self.clients[provider] = client
        return client

    def __getitem__(self, provider: str) -> OutboundClient:
        return self.clients[provider]

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()
        self.clients.clear()
