"""The tool registry over the Model Context Protocol: ``POST /mcp``, Streamable HTTP, official ``mcp`` SDK.

What the SDK does and what we do
--------------------------------
The SDK's low-level :class:`mcp.server.lowlevel.Server` speaks the protocol (``initialize``, ``ping``,
``tools/list``, ``tools/call``, both the handshake era and the 2026-07-28 per-request era) and its
:class:`~mcp.server.streamable_http_manager.StreamableHTTPSessionManager` is the HTTP transport. The
low-level server never validates tool arguments itself (FastMCP/MCPServer would, with its own messages),
so the registry's strict models do it exactly as for ``POST /v1/tools/{name}/execute``: a bad argument
is a ``CallToolResult`` with ``isError: true`` that names ``arguments.<path>``, so the model can fix it.

Everything else a REST call gets, an MCP call gets too, because it *is* a FastAPI route
(``app.tools.router.mcp``) in front of the transport: the request id, the access log and
``http_requests_total{route="/mcp"}``, the body cap (413), ``RATE_LIMIT_DEFAULT`` per IP, the Origin
check, the bearer token (401 problem+json + ``WWW-Authenticate: Bearer``) – all before the SDK reads a
byte. The route binds the caller and its dependencies (:class:`McpCaller`) to the request; the tool
handler runs :func:`app.tools.service.execute` with ``via="mcp"``: same sandbox, same audit row, same
``tool_calls_total``.

Answers (docs/tools.md, "MCP")
------------------------------
* ``tools/list``: every registry tool, ``inputSchema`` = its ``GET /v1/tools`` ``parameters``.
* ``tools/call`` on an unknown name: JSON-RPC error ``-32602`` (invalid params), as the spec's example.
* Arguments that break the schema (422) and every failure *of the tool* – over ``TOOL_TIMEOUT_SECONDS``
  (504), a dead worker (502), every worker busy (503), market data unavailable, an unknown symbol: a
  result with ``isError: true``; the text is the problem's detail (each bad argument on its own line),
  ``structuredContent`` the problem+json object the REST route would have answered.
* Past ``RATE_LIMIT_TOOLS`` (per user, counted per ``tools/call``): HTTP 429 with ``Retry-After`` and
  ``X-RateLimit-*`` and a JSON-RPC error body (code :data:`RATE_LIMITED`), answered before the SDK runs.
  A JSON body (not problem+json) because MCP clients surface a JSON-RPC error's message to the user or
  host; the 429 and ``Retry-After`` are for the HTTP layers (the SDK client, gateways) that retry.
* An unexpected failure in this process: JSON-RPC ``-32603`` with the request id, details in the log only.

Stateless, JSON responses
-------------------------
Several uvicorn processes run behind a load balancer; a stateful MCP session lives in one process's
memory, so its next request must reach the same process (sticky sessions) or it is "Session not found".
Stateless mode needs nothing shared: each POST carries a whole JSON-RPC exchange, no ``Mcp-Session-Id``,
no GET event stream (``GET /mcp`` is 405, which the protocol allows). Our tools never call back into the
client (no sampling, no elicitation) and send no progress, so one JSON body per POST is all a call
needs, and a plain JSON response passes through every proxy without buffering or idle-timeout surprises.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Final

import mcp_types as types
import pydantic_core
from fastapi import Request
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from prometheus_client import Counter
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import __version__
from app.core.db import Database
from app.core.errors import AppError, NotFound, TooManyRequests, log_exception, problem_body
from app.core.observability import request_id_var
from app.core.ratelimit import RateLimiter
from app.providers.market_data import MarketData
from app.tools import registry, service
from app.tools.service import LazySandbox

log = logging.getLogger("tradedesk.tools.mcp")

#: JSON-RPC error code of a ``tools/call`` refused by ``RATE_LIMIT_TOOLS`` (the implementation-defined
#: band -32000..-32019; the SDK keeps -32000/-32001 for itself).
RATE_LIMITED: Final = -32010
#: Methods counted by name in ``mcp_requests_total``; anything else is ``other`` (bounded label values).
COUNTED_METHODS: Final = frozenset(
    {
        "initialize",
        "notifications/initialized",
        "ping",
        "server/discover",
        "tools/list",
        "tools/call",
    }
)
INSTRUCTIONS: Final = (
    "Tradedesk's quant tools: Black-Scholes-Merton Greeks and implied volatility, SMA-crossover "
    "backtests on market data, quotes. Arguments are checked strictly (no type coercion, bounds as "
    "stated in each description); a refused call is an error result naming each bad argument as "
    "arguments.<path>, so correct those and call again."
)

MCP_REQUESTS = Counter(
    "mcp_requests_total",
    "JSON-RPC messages posted to /mcp by authenticated callers, by method (tool outcomes: tool_calls_total).",
    ["method"],
)

_CALLER_KEY: Final = "tradedesk.mcp.caller"


class OriginRefused(AppError):
    """``Origin`` names a site other than FRONTEND_URL (MCP asks servers to refuse these: DNS rebinding)."""

    status, title, slug = 403, "Forbidden", "origin-refused"


@dataclass(frozen=True, slots=True)
class McpCaller:
    """What one authenticated ``POST /mcp`` may use, bound by the route from its dependencies."""

    user_id: uuid.UUID
    database: Database
    sandbox: LazySandbox
    market: MarketData | None
    timeout: float


def _input_schema(name: str) -> dict[str, Any] | None:
    tool = registry.REGISTRY.get(name)
    return registry.published_schema(tool) if tool is not None else None


async def _list_tools(
    ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    """``tools/list``: the published registry, the schemas exactly as ``GET /v1/tools`` shows them."""
    return types.ListToolsResult(
        tools=[
            types.Tool(name=tool["name"], description=tool["description"], input_schema=tool["parameters"])
            for tool in registry.published_tools()
        ]
    )


def _bound_caller(ctx: ServerRequestContext[Any, Any]) -> McpCaller:
    scope: Mapping[str, Any] = getattr(ctx.request, "scope", None) or {}
    caller = scope.get(_CALLER_KEY)
    if not isinstance(caller, McpCaller):  # only reachable if the transport is mounted without the route
        log.error("MCP tool call without a bound caller")
        raise MCPError(code=types.INTERNAL_ERROR, message="Internal error: the call has no caller.")
    return caller


def _error_result(exc: AppError) -> types.CallToolResult:
    """A failed call as the model should see it: the problem's detail (each bad argument on its own
    line) and, structured, the problem+json object the REST route answers."""
    problem = problem_body(
        exc.status, title=exc.title, detail=exc.detail, slug=exc.slug, errors=exc.errors, extra=exc.extra
    )
    lines = [exc.detail]
    if exc.errors:
        lines += [f"- {error['field']}: {error['message']}" for error in exc.errors]
    retry_after = exc.headers.get("Retry-After")
    if retry_after is not None and retry_after.isdigit():
        problem["retry_after_seconds"] = int(retry_after)
        lines.append(f"Retry in {retry_after} s.")
    return types.CallToolResult(
        content=[types.TextContent(text="\n".join(lines))], structured_content=problem, is_error=True
    )


async def _call_tool(
    ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
) -> types.CallToolResult:
    """``tools/call``: :func:`app.tools.service.execute` for the bound caller, ``via="mcp"``."""
    caller = _bound_caller(ctx)
    known = params.name in registry.REGISTRY
    try:
        answer = await service.execute(
            database=caller.database,
            sandbox=caller.sandbox,
            market=caller.market,
            name=params.name,
            raw_arguments={} if params.arguments is None else params.arguments,
            user_id=caller.user_id,
            timeout=caller.timeout,
            via="mcp",
        )
    except NotFound as exc:
        if not known:  # the tool itself is unknown: a protocol error (a missing symbol is the tool's)
            raise MCPError(code=types.INVALID_PARAMS, message=exc.detail) from None
        return _error_result(exc)
    except AppError as exc:
        return _error_result(exc)
    except Exception as exc:  # never the SDK's catch-all: it would send str(exc) to the client
        log_exception(log, "unhandled exception in an MCP tool call", exc, tool=params.name[:64])
        raise MCPError(
            code=types.INTERNAL_ERROR,
            message=f"An unexpected error occurred; it has been logged with request id {request_id_var.get()}.",
        ) from None
    result = answer["result"]
    return types.CallToolResult(
        content=[types.TextContent(text=json.dumps(result, ensure_ascii=False, separators=(",", ":")))],
        structured_content=result if isinstance(result, dict) else None,
    )


def _peek(body: bytes) -> tuple[str | None, types.RequestId | None]:
    """The method and id of a posted JSON-RPC message, parsed as the SDK will parse it (the same
    parser: duplicate keys resolve alike); ``(None, None)`` for anything the SDK will refuse."""
    try:
        message = pydantic_core.from_json(body)
    except ValueError:
        return None, None
    if not isinstance(message, dict):
        return None, None
    method, rid = message.get("method"), message.get("id")
    valid_id = isinstance(rid, str) or (isinstance(rid, int) and not isinstance(rid, bool))
    return (method if isinstance(method, str) else None), (rid if valid_id else None)


def _is_json(content_type: str | None) -> bool:
    """The SDK transport's own Content-Type rule for a POST (mcp.server.transport_security)."""
    return content_type is not None and content_type.lower().startswith("application/json")


def _invalid_request(message: str) -> JSONResponse:
    error = {"code": types.INVALID_REQUEST, "message": message}
    return JSONResponse({"jsonrpc": "2.0", "id": None, "error": error}, status_code=400)


def _rate_limited(exc: TooManyRequests, request_id: types.RequestId | None) -> JSONResponse:
    """429 with the limiter's headers and a JSON-RPC error the client can show."""
    problem = problem_body(exc.status, title=exc.title, detail=exc.detail, slug=exc.slug)
    error = {"code": RATE_LIMITED, "message": exc.detail, "data": problem}
    return JSONResponse(
        {"jsonrpc": "2.0", "id": request_id, "error": error}, status_code=exc.status, headers=exc.headers
    )


class _Exchange(Response):
    """The route's answer: the SDK transport serves the request, on the body the route already read."""

    def __init__(self, handler: ASGIApp, body: bytes) -> None:
        super().__init__()
        self._handler = handler
        self._body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": self._body, "more_body": False}
            return await receive()  # after the body: only the disconnect is left

        await self._handler(scope, replay, send)


class McpServer:
    """The SDK server over the registry and its stateless Streamable HTTP transport: one per process,
    built and run (``run()``: the transport's task group) in the app lifespan."""

    def __init__(self, *, max_body_bytes: int) -> None:
        self.server: Server[Any] = Server(
            "tradedesk",
            version=__version__,
            title="Tradedesk",
            instructions=INSTRUCTIONS,
            on_list_tools=_list_tools,
            on_call_tool=_call_tool,
            # The 2026-07-28 transport checks Mcp-Param headers against the called tool's schema; this
            # answers it from the registry instead of running tools/list for every call.
            get_tool_input_schema=_input_schema,
        )
        # security_settings=None: the SDK checks Content-Type only. Host and Origin are the route's
        # business (behind a load balancer no fixed Host list fits; Origin: FRONTEND_URL or none).
        self.sessions = StreamableHTTPSessionManager(
            app=self.server, json_response=True, stateless=True, max_request_body_size=max_body_bytes
        )

    def run(self) -> AbstractAsyncContextManager[None]:
        return self.sessions.run()

    async def exchange(
        self, request: Request, caller: McpCaller, *, limiter: RateLimiter, tools_limit: str
    ) -> Response:
        """Serve one authenticated POST: count it, apply RATE_LIMIT_TOOLS to a ``tools/call``, bind the
        caller and hand the request to the SDK transport."""
        if not _is_json(request.headers.get("content-type")):
            # The SDK's own answer here is a bare text 400 without a Content-Type; every other refusal of
            # a message it sends as a JSON-RPC error, so this one is too (same status, same check).
            return _invalid_request("Invalid Request: Content-Type must be application/json")
        body = await request.body()  # within MAX_BODY_BYTES: the body-limit middleware answers 413 past it
        method, request_id = _peek(body)
        MCP_REQUESTS.labels(method if method in COUNTED_METHODS else "other").inc()
        if method == "tools/call":
            try:
                await limiter.enforce(request, tools_limit, "tools", str(caller.user_id))
            except TooManyRequests as exc:
                return _rate_limited(exc, request_id)
        request.scope[_CALLER_KEY] = caller
        return _Exchange(self.sessions.handle_request, body)
