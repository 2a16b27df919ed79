"""GET /v1/tools and POST /v1/tools/{name}/execute (contract §4, Tools); POST /mcp, the same tools over
the Model Context Protocol (app/tools/mcp.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from app.auth.deps import CurrentUserDetached
from app.core.deps import DatabaseDep, LimiterDep, SettingsDep
from app.core.ratelimit import default_rate_limit
from app.market.deps import MarketDataDep
from app.tools import registry, service
from app.tools.deps import McpOriginCheck, McpServerDep, SandboxDep, ToolRateLimit
from app.tools.mcp import McpCaller

router = APIRouter(tags=["tools"])
# Mounted at the root by create_app (not under /v1: MCP clients are configured with one URL), with the
# same per-IP default limit as every /v1 route.
mcp_router = APIRouter(tags=["tools"], dependencies=[Depends(default_rate_limit)])
_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}


class ToolOut(BaseModel):
    name: str
    description: str
    parameters: dict[str, Any] = Field(description="JSON Schema, accepted by strict function calling")


class ExecuteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    arguments: Any = Field(description="The tool's arguments: an object matching its `parameters`")


class ExecuteOut(BaseModel):
    result: Any


@router.get("/tools", response_model=list[ToolOut], summary="The tools and their argument schemas")
async def list_tools() -> list[dict[str, Any]]:
    return registry.published_tools()


@router.post(
    "/tools/{name}/execute",
    response_model=ExecuteOut,
    responses={
        404: {"description": "No tool of that name.", **_PROBLEM},
        422: {
            "description": "Arguments that break the schema (`errors[].field`: arguments.<path>).",
            **_PROBLEM,
        },
        429: {"description": "RATE_LIMIT_TOOLS exceeded for this user.", **_PROBLEM},
        502: {"description": "The tool's worker process died (it was replaced).", **_PROBLEM},
        503: {"description": "Every worker is busy; retry after Retry-After.", **_PROBLEM},
        504: {"description": "The tool ran past TOOL_TIMEOUT_SECONDS (its worker was killed).", **_PROBLEM},
    },
    summary="Run a tool",
)
async def execute(
    name: Annotated[str, Path(max_length=200)],
    body: ExecuteIn,
    user: CurrentUserDetached,
    _limit: ToolRateLimit,
    sandbox: SandboxDep,
    market: MarketDataDep,
    database: DatabaseDep,
    settings: SettingsDep,
) -> dict[str, Any]:
    return await service.execute(
        database=database,
        sandbox=sandbox,
        market=market,
        name=name,
        raw_arguments=body.arguments,
        user_id=user.id,
        timeout=settings.tool_timeout_seconds,
    )


_JSONRPC_ERROR: dict[str, Any] = {
    "type": "object",
    "title": "JSON-RPC error",
    "required": ["jsonrpc", "id", "error"],
    "properties": {
        "jsonrpc": {"const": "2.0"},
        "id": {"type": ["string", "integer", "null"]},
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "integer"}, "message": {"type": "string"}, "data": {}},
        },
    },
}
_JSONRPC_MESSAGE: dict[str, Any] = {
    "type": "object",
    "title": "JSON-RPC message",
    "description": "One JSON-RPC 2.0 message: a request (with `id`) or a notification (without).",
    "required": ["jsonrpc", "method"],
    "properties": {
        "jsonrpc": {"const": "2.0"},
        "id": {
            "description": "A string or an integer makes the message a request (answered with the same id); "
            "without one, or with any other value, it is a notification (202, no answer)."
        },
        "method": {"type": "string", "examples": ["tools/list", "tools/call", "initialize", "ping"]},
        "params": {"type": ["object", "null"]},
    },
}


# /mcp speaks JSON-RPC: the SDK's answers (a result, or a JSON-RPC error for a message it refuses) are
# application/json; the answers given before the SDK runs (token, Origin, body cap, RATE_LIMIT_DEFAULT)
# are problem+json like every other route's.
@mcp_router.post(
    "/mcp",
    response_class=Response,
    responses={
        200: {
            "description": "The JSON-RPC response: a result, or a JSON-RPC error (unknown method, bad "
            "params); tool failures are results with `isError: true`.",
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        202: {"description": "A notification (no `id`) was accepted; no body."},
        400: {
            "description": "Not a JSON-RPC message the server accepts (not JSON, not an object, invalid "
            "fields, or a Content-Type other than application/json): a JSON-RPC error.",
            "content": {"application/json": {"schema": _JSONRPC_ERROR}},
        },
        401: {"description": "No valid bearer token (`WWW-Authenticate: Bearer`).", **_PROBLEM},
        403: {"description": "An `Origin` other than FRONTEND_URL's.", **_PROBLEM},
        406: {
            "description": "An `Accept` header without application/json: a JSON-RPC error.",
            "content": {"application/json": {"schema": _JSONRPC_ERROR}},
        },
        413: {"description": "The body exceeds MAX_BODY_BYTES.", **_PROBLEM},
        429: {
            "description": "RATE_LIMIT_DEFAULT (problem+json), or RATE_LIMIT_TOOLS on a `tools/call` "
            "(a JSON-RPC error, code -32010); `Retry-After` either way.",
            "content": {"application/json": {"schema": _JSONRPC_ERROR}},
        },
    },
    summary="MCP: the tools over the Model Context Protocol (Streamable HTTP, stateless, JSON responses)",
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": _JSONRPC_MESSAGE}}}
    },
)
async def mcp(
    request: Request,
    _origin: McpOriginCheck,
    user: CurrentUserDetached,
    server: McpServerDep,
    sandbox: SandboxDep,
    market: MarketDataDep,
    database: DatabaseDep,
    limiter: LimiterDep,
    settings: SettingsDep,
) -> Response:
    caller = McpCaller(
        user_id=user.id,
        database=database,
        sandbox=sandbox,
        market=market,
        timeout=settings.tool_timeout_seconds,
    )
    return await server.exchange(request, caller, limiter=limiter, tools_limit=settings.rate_limit_tools)
