"""Pure ASGI middleware (no BaseHTTPMiddleware): request context, security headers, body cap.

``RequestContextMiddleware`` is the outermost layer of our own: it assigns the request id,
resolves the client IP (trusting ``X-Forwarded-For`` only from ``TRUSTED_PROXIES``), adds
security and per-request headers, records metrics and writes one structured access-log line.
It also turns an exception that escaped everything else into a 500 problem+json, so even
that response carries the request id and is counted, and refuses clients in ``BLOCKED_NETWORKS``
(403) before anything else runs.

``HeadAsGetMiddleware`` is the innermost: ``HEAD`` is answered like ``GET`` without a body on every
route (uptime monitors such as UptimeRobot's default one send ``HEAD``; FastAPI routes answer only
the methods they declare, so ``HEAD /healthz`` was a 405).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import time
from collections.abc import Sequence

from prometheus_client import Counter, Histogram
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware as StarletteCORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import BodyTooLarge, log_exception, problem_body, problem_response, unhandled_problem
from app.core.observability import (
    BLOCKED_REQUESTS,
    BODY_TOO_LARGE,
    HTTP_DURATION,
    HTTP_IN_FLIGHT,
    HTTP_REQUESTS,
    AccessLogWriter,
    request_id_var,
)

log = logging.getLogger("tradedesk.http")

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
EXTRA_HEADERS_KEY = "tradedesk.response_headers"
RATELIMIT_STATE_KEY = "tradedesk.ratelimit"  # a ratelimit.Decision, set by app.core.ratelimit
DOCS_PATHS = ("/docs", "/redoc", "/openapi.json")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def resolve_client_ip(scope: Scope, trusted: Sequence[Network]) -> str:
    """The peer address, or the right-most untrusted hop of X-Forwarded-For when the peer is trusted."""
    client = scope.get("client")
    peer = client[0] if client else "unknown"
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    forwarded: list[str] = []
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-for":
            forwarded.extend(p.strip() for p in value.decode("latin-1").split(","))
    for hop in reversed([h for h in forwarded if h]):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # malformed chain: do not trust any of it
        if not _is_trusted(hop, trusted):
            return hop
    return forwarded[0] if forwarded else peer


def _is_trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def add_response_header(scope: Scope, name: str, value: str) -> None:
    """Ask the request-context middleware to add a header to whatever response this request gets."""
    scope.setdefault(EXTRA_HEADERS_KEY, {})[name.lower().encode("latin-1")] = value.encode("latin-1")


def _late_headers(scope: Scope) -> dict[bytes, bytes]:
    headers: dict[bytes, bytes] = dict(scope.get(EXTRA_HEADERS_KEY, {}))
    decision = scope.get(RATELIMIT_STATE_KEY)
    if decision is not None:
        for name, value in decision.headers().items():
            headers.setdefault(name.lower().encode("latin-1"), value.encode("latin-1"))
    return headers


def route_template(scope: Scope) -> str:
    # FastAPI >= 0.16x includes routers lazily: scope["route"] is the route as declared in its own
    # router ("/auth/login"); the prefixed template ("/v1/auth/login") is on the effective context.
    context = (scope.get("fastapi") or {}).get("effective_route_context")
    path = getattr(context, "path_format", None)
    if not path:
        route = scope.get("route")
        path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return path if path else "<unmatched>"


def _in_networks(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:192.0.2.1 is 192.0.2.1, as for the rate limits
    return any(ip in network for network in networks)


class HeadAsGetMiddleware:
    """Serve ``HEAD`` as ``GET`` and drop the body: same status and headers (Content-Length included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        # In place, so that the route the router matches is visible to the outer layers (metrics,
        # access log); they see HEAD again once the route has answered.
        scope["method"] = "GET"
        try:
            await self.app(scope, receive, send_headers_only)
        finally:
            scope["method"] = "HEAD"


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        trusted_proxies: Sequence[Network] = (),
        production: bool = False,
        blocked_networks: Sequence[Network] = (),
    ) -> None:
        self.app = app
        self.trusted = list(trusted_proxies)
        self.blocked = list(blocked_networks)
        base = [
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
            (b"cross-origin-opener-policy", b"same-origin"),
        ]
        if production:
            base.append((b"strict-transport-security", b"max-age=63072000; includeSubDomains"))
        self.base_headers = base
        self.api_headers = [
            *base,
            (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
        ]
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self.access_log = AccessLogWriter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        request_id = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _REQUEST_ID_RE.match(candidate):
                    request_id = candidate
                break
        request_id = request_id or os.urandom(16).hex()
        token = request_id_var.set(request_id)
        client_ip = resolve_client_ip(scope, self.trusted)
        scope.setdefault("state", {})["client_ip"] = client_ip
        scope["state"]["request_id"] = request_id

        path: str = scope.get("path", "")
        security = self.base_headers if path.startswith(DOCS_PATHS) else self.api_headers
        status_holder = [500]
        started = False
        start = time.perf_counter()
        HTTP_IN_FLIGHT.inc()

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                status_holder[0] = message["status"]
                headers = list(message.get("headers", ()))
                present = {k.lower() for k, _ in headers}
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                headers.extend(h for h in security if h[0] not in present)
                if b"cache-control" not in present:
                    headers.append((b"cache-control", b"no-store"))
                if b"vary" not in present:  # responses depend on Origin (CORS), also for non-CORS requests
                    headers.append((b"vary", b"Origin"))
                headers.extend((k, v) for k, v in _late_headers(scope).items() if k not in present)
                message["headers"] = headers
            await send(message)

        try:
            if self.blocked and _in_networks(client_ip, self.blocked):
                BLOCKED_REQUESTS.inc()
                refusal = problem_response(
                    403, detail="Requests from this network are blocked.", slug="blocked", instance=path
                )
                await refusal(scope, receive, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            log_exception(log, "unhandled exception", exc)
            if not started:
                response = unhandled_problem()
                await response(scope, receive, send_wrapper)
        finally:
            duration = time.perf_counter() - start
            HTTP_IN_FLIGHT.dec()
            method = scope.get("method", "")
            route = route_template(scope)
            status = status_holder[0]
            key = (method, route, status)
            children = self._children.get(key)
            if children is None:
                children = (
                    HTTP_REQUESTS.labels(method, route, str(status)),
                    HTTP_DURATION.labels(method, route),
                )
                if len(self._children) < 5000:
                    self._children[key] = children
            children[0].inc()
            children[1].observe(duration)
            if self.access_log.enabled():
                self.access_log.write(
                    now=time.time(),
                    request_id=request_id,
                    method=method,
                    route=route,
                    path=path,
                    status=status,
                    duration=duration,
                    client_ip=client_ip,
                )
            request_id_var.reset(token)


_CORS_FAILURE_PREFIX = "Disallowed CORS "
_CORS_PARTS = {
    "origin": "origin",
    "method": "method",
    "headers": "request headers",
    "private-network": "private-network access",
}


class CORSMiddleware(StarletteCORSMiddleware):
    """Starlette's CORS, with a fast path: a request without an Origin header is not a CORS request,
    so it passes straight through (``Vary: Origin`` is added by RequestContextMiddleware).

    A refused preflight answers 400 problem+json (``/problems/cors-preflight-refused``, ``disallowed``
    lists what was refused) instead of Starlette's text/plain; Starlette still decides and sets the
    headers (no ``Access-Control-Allow-Origin`` for an origin it refuses). Allowed preflights are untouched.
    """

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        text = bytes(response.body).decode("latin-1")
        failures = (
            text.removeprefix(_CORS_FAILURE_PREFIX).split(", ")
            if text.startswith(_CORS_FAILURE_PREFIX)
            else []
        )
        failures = [f for f in failures if f in _CORS_PARTS]
        if failures:
            detail = "CORS preflight refused: disallowed " + ", ".join(_CORS_PARTS[f] for f in failures) + "."
        else:
            detail = "CORS preflight refused."
        headers = {k: v for k, v in response.headers.items() if k not in ("content-length", "content-type")}
        return problem_response(
            400,
            title="CORS preflight refused",
            slug="cors-preflight-refused",
            detail=detail,
            headers=headers,
            extra={"disallowed": failures},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, _ in scope.get("headers", ()):
                if name == b"origin":
                    break
            else:
                await self.app(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with 413: declared (Content-Length) or streamed (chunked).

    ``route_limits`` gives chosen routes their own cap instead: ``(pattern, max_bytes)`` pairs, the
    pattern a regular expression matched against the whole path (the first match wins). The backtest
    upload and the tool execute route use it (``BACKTEST_MAX_UPLOAD_BYTES``, ``TOOL_MAX_BODY_BYTES``).
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, route_limits: Sequence[tuple[str, int]] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.route_limits = tuple((re.compile(pattern), limit) for pattern, limit in route_limits)

    def limit_for(self, path: str) -> int:
        for pattern, limit in self.route_limits:
            if pattern.fullmatch(path):
                return limit
        return self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", "")) if self.route_limits else self.max_bytes
        has_body = False
        for name, value in scope.get("headers", ()):
            if name == b"transfer-encoding":
                has_body = True
            elif name == b"content-length":
                has_body = True
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0:
                    await _send_problem(send, 400, "Content-Length is not a valid number.")
                    return
                if declared > limit:
                    BODY_TOO_LARGE.inc()
                    await _send_problem(
                        send, 413, f"Request body exceeds the {limit}-byte limit.", close=True
                    )
                    return
        if not has_body:  # HTTP/1.1: neither header means no body at all
            await self.app(scope, receive, send)
            return

        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    BODY_TOO_LARGE.inc()
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await _send_problem(send, 413, f"Request body exceeds the {limit}-byte limit.")


async def _send_problem(send: Send, status: int, detail: str, *, close: bool = False) -> None:
    body = json.dumps(problem_body(status, detail=detail)).encode()
    headers = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
