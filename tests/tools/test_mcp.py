"""The MCP server at /mcp, driven by the official SDK's own client (``ClientSession`` over
``streamable_http_client``) against the real app in-process: the handshake era (``initialize``) and the
2026-07-28 per-request era (``server/discover``). The list equals GET /v1/tools, a call runs in the
sandbox and leaves a ``via='mcp'`` audit row in PostgreSQL, a bad argument is an ``isError`` result naming
``arguments.<path>``, an unknown tool a JSON-RPC error, a timeout an ``isError`` result; bearer auth,
Origin, RATE_LIMIT_TOOLS (shared with the REST route), RATE_LIMIT_DEFAULT and the body cap as for REST."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import httpx2
import mcp_types as types
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from app.quant.greeks import bs_greeks
from app.tools import registry
from app.tools.schemas import ToolArgs
from tests.auth.helpers import fetch
from tests.orders.helpers import trader
from tests.support.metrics import grew, scrape
from tests.support.problems import assert_problem

pytestmark = pytest.mark.asyncio

BASE = "https://testserver"
OPTION = {
    "option_type": "call",
    "spot": 100.0,
    "strike": 105.0,
    "t_years": 0.5,
    "rate": 0.03,
    "dividend_yield": 0.01,
    "sigma": 0.2,
}
ERAS = ["handshake", "modern"]
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "raw-test", "version": "0"},
    },
}
JSONRPC_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


class NoArgs(ToolArgs):
    """No arguments."""


@pytest.fixture
def looping_tool() -> Iterator[str]:
    """A tool that never returns, registered for one test (before the app builds its sandbox)."""
    registry.register(
        registry.Tool(
            name="test_loop",
            description="test only: loops forever",
            args_model=NoArgs,
            function="tests.tools.sandbox_funcs:loop_forever",
        ),
        replace=True,
    )
    yield "test_loop"
    registry.REGISTRY.pop("test_loop", None)


@asynccontextmanager
async def mcp_session(
    client: httpx.AsyncClient, headers: dict[str, str], *, era: str = "handshake"
) -> AsyncIterator[ClientSession]:
    """The SDK's client on the app ``client`` serves (the same ASGI app, already started)."""
    transport = httpx2.ASGITransport(app=client.app, client=("127.0.0.1", 51234))  # type: ignore[attr-defined]
    http = httpx2.AsyncClient(transport=transport, base_url=BASE, headers=headers, timeout=30)
    async with (
        http,
        streamable_http_client(f"{BASE}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        if era == "handshake":
            await session.initialize()
        else:
            await session.discover()
        yield session


async def post_raw(client: httpx.AsyncClient, message: Any, **headers: str) -> httpx.Response:
    return await client.post("/mcp", json=message, headers={**JSONRPC_HEADERS, **headers})


def call_message(name: str, arguments: dict[str, Any], rid: int = 7) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": rid,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


async def audit_rows(database_url: str) -> list[tuple[str, str, str]]:
    rows = await fetch(database_url, "SELECT tool, outcome, via FROM tool_calls ORDER BY id")
    return [(r["tool"], r["outcome"], r["via"]) for r in rows]


@pytest.mark.parametrize("era", ERAS)
async def test_tools_list_publishes_the_registry_schemas(make_client, era) -> None:
    client = await make_client()
    _, auth = await trader(client)
    published = (await client.get("/v1/tools")).json()
    async with mcp_session(client, auth, era=era) as session:
        assert session.server_info is not None and session.server_info.name == "tradedesk"
        listed = (await session.list_tools()).tools
    assert [t.name for t in listed] == [t["name"] for t in published]
    for tool, rest in zip(listed, published, strict=True):
        assert tool.input_schema == rest["parameters"]
        assert tool.description == rest["description"]


@pytest.mark.parametrize("era", ERAS)
async def test_a_call_runs_the_tool_and_is_audited_as_mcp(make_client, database_url, era) -> None:
    client = await make_client()
    before = await scrape(client)
    user, auth = await trader(client)
    async with mcp_session(client, auth, era=era) as session:
        result = await session.call_tool("greeks", OPTION)
    assert isinstance(result, types.CallToolResult) and not result.is_error, result
    direct = bs_greeks(**OPTION)
    for key in ("price", "delta", "gamma", "vega", "theta", "rho"):
        assert result.structured_content[key] == pytest.approx(float(direct[key]), rel=1e-12)
    (text,) = result.content
    assert isinstance(text, types.TextContent) and json.loads(text.text) == result.structured_content
    rows = await fetch(database_url, "SELECT tool, outcome, via, user_id FROM tool_calls")
    assert [(r["tool"], r["outcome"], r["via"]) for r in rows] == [("greeks", "ok", "mcp")]
    assert str(rows[0]["user_id"]) == user["id"]
    after = await scrape(client)
    assert grew(before, after, "tool_calls_total", tool="greeks", outcome="ok") == 1
    assert grew(before, after, "mcp_requests_total", method="tools/call") == 1


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({**OPTION, "spot": "100"}, "arguments.spot"),
        ({**OPTION, "spot": -5.0}, "arguments.spot"),
        ({k: v for k, v in OPTION.items() if k != "spot"}, "arguments.spot"),
        ({**OPTION, "shell": "__import__('os')"}, "arguments.shell"),
        ({"options": [OPTION] * 3 + [{**OPTION, "sigma": -1}]}, "arguments.options.3.sigma"),
    ],
)
async def test_a_bad_argument_is_an_error_result_naming_it(
    make_client, database_url, era, arguments, field
) -> None:
    client = await make_client()
    _, auth = await trader(client)
    async with mcp_session(client, auth, era=era) as session:
        result = await session.call_tool("greeks", arguments)
    assert isinstance(result, types.CallToolResult) and result.is_error, result
    (text,) = result.content
    assert isinstance(text, types.TextContent) and f"- {field}: " in text.text, text.text
    problem = result.structured_content
    assert problem["status"] == 422 and problem["type"] == "/problems/validation"
    assert field in [e["field"] for e in problem["errors"]], problem
    assert await audit_rows(database_url) == [("greeks", "validation", "mcp")]


async def test_the_model_can_correct_itself_from_the_error(make_client) -> None:
    client = await make_client()
    _, auth = await trader(client)
    async with mcp_session(client, auth) as session:
        bad = await session.call_tool("implied_vol", {**OPTION, "price": 500.0})  # sigma: unknown argument
        assert bad.is_error
        fields = [e["field"] for e in bad.structured_content["errors"]]
        assert fields == ["arguments.sigma"]
        fixed = {k: v for k, v in OPTION.items() if k != "sigma"} | {"price": 500.0}
        beyond = await session.call_tool("implied_vol", fixed)  # refused inside the sandbox
        assert beyond.is_error and [e["field"] for e in beyond.structured_content["errors"]] == [
            "arguments.price"
        ]
        fixed["price"] = 3.0
        ok = await session.call_tool("implied_vol", fixed)
    assert not ok.is_error and 0 < ok.structured_content["sigma"] < 10


@pytest.mark.parametrize("era", ERAS)
async def test_an_unknown_tool_is_a_jsonrpc_error(make_client, database_url, era) -> None:
    client = await make_client()
    _, auth = await trader(client)
    async with mcp_session(client, auth, era=era) as session:
        for name in ("os.system", "Greeks"):
            with pytest.raises(MCPError) as caught:
                await session.call_tool(name, {})
            assert caught.value.error.code == types.INVALID_PARAMS
            assert name in caught.value.error.message and "greeks" in caught.value.error.message
    assert await audit_rows(database_url) == [
        ("os.system", "not-found", "mcp"),
        ("Greeks", "not-found", "mcp"),
    ]


async def test_a_tool_past_the_time_limit_is_an_error_result(make_client, database_url, looping_tool) -> None:
    client = await make_client(tool_timeout_seconds=1, tool_workers=1)
    _, auth = await trader(client)
    async with mcp_session(client, auth) as session:
        assert not (await session.call_tool("greeks", OPTION)).is_error  # the pool is up
        started = time.perf_counter()
        result = await session.call_tool(looping_tool, {})
        elapsed = time.perf_counter() - started
        assert result.is_error, result
        assert result.structured_content["status"] == 504
        assert result.structured_content["type"] == "/problems/tool-timeout"
        assert "1-second limit" in result.content[0].text
        assert elapsed < 1 + 5, elapsed
        # The worker was replaced: the next call is answered.
        assert not (await session.call_tool("greeks", OPTION)).is_error
    assert [row[1:] for row in await audit_rows(database_url)] == [
        ("ok", "mcp"),
        ("tool-timeout", "mcp"),
        ("ok", "mcp"),
    ]


async def test_mcp_needs_a_valid_bearer_token(make_client) -> None:
    client = await make_client()
    problem = assert_problem(await post_raw(client, INITIALIZE), 401)
    assert "Bearer" in problem["detail"]
    r = await post_raw(client, INITIALIZE)
    assert r.headers["www-authenticate"] == "Bearer"
    assert_problem(await post_raw(client, INITIALIZE, Authorization="Bearer not-a-token"), 401)
    with pytest.raises(ExceptionGroup) as caught:  # the SDK client cannot even initialize
        async with mcp_session(client, {}):
            pass
    assert caught.group_contains(MCPError, depth=None)
    _, auth = await trader(client)
    r = await post_raw(client, INITIALIZE, **auth)
    assert r.status_code == 200 and r.json()["result"]["serverInfo"]["name"] == "tradedesk"


async def test_only_frontend_origins_or_none_may_call(make_client) -> None:
    client = await make_client(frontend_url="https://app.example.com")
    _, auth = await trader(client)
    problem = assert_problem(await post_raw(client, INITIALIZE, Origin="https://evil.example", **auth), 403)
    assert problem["type"] == "/problems/origin-refused"
    assert_problem(await post_raw(client, INITIALIZE, Origin="null", **auth), 403)
    r = await post_raw(client, INITIALIZE, Origin="https://app.example.com", **auth)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example.com"
    assert (await post_raw(client, INITIALIZE, **auth)).status_code == 200


async def test_tool_calls_share_the_per_user_limit_with_the_rest_route(make_client) -> None:
    client = await make_client(rate_limit_tools="3/50 years")
    _, auth = await trader(client)
    _, other = await trader(client)
    before = await scrape(client)
    r = await client.post("/v1/tools/greeks/execute", json={"arguments": OPTION}, headers=auth)
    assert r.status_code == 200
    async with mcp_session(client, auth) as session:
        for _ in range(3):
            await session.list_tools()  # listing is not a tool call: it costs nothing
        assert not (await session.call_tool("greeks", OPTION)).is_error
        assert (await session.call_tool("greeks", {"spot": "x"})).is_error  # a refused call still counts
        with pytest.raises(MCPError) as caught:
            await session.call_tool("greeks", OPTION)
    assert caught.value.error.code == -32010
    assert "Rate limit '3/50 years' exceeded" in caught.value.error.message
    r = await post_raw(client, call_message("greeks", OPTION, rid="call-9"), **auth)
    assert r.status_code == 429 and r.headers["content-type"].startswith("application/json")
    assert int(r.headers["retry-after"]) > 0 and r.headers["x-ratelimit-remaining"] == "0"
    body = r.json()
    assert body["id"] == "call-9" and body["error"]["code"] == -32010
    assert (
        body["error"]["data"]["status"] == 429
        and body["error"]["data"]["request_id"] == r.headers["x-request-id"]
    )
    async with mcp_session(client, other) as session:  # per user
        assert not (await session.call_tool("greeks", OPTION)).is_error
    after = await scrape(client)
    assert grew(before, after, "rate_limit_hits_total", route="/mcp") == 2


async def test_the_default_limit_and_the_body_cap_apply(make_client) -> None:
    client = await make_client(rate_limit_default="4/50 years", max_body_bytes=4096)
    _, auth = await trader(client)  # signup and login: 2 of the 4
    big = call_message("greeks", {**OPTION, "padding": "x" * 5000})
    assert_problem(await post_raw(client, big, **auth), 413)
    assert (await post_raw(client, INITIALIZE, **auth)).status_code == 200
    assert (await post_raw(client, INITIALIZE, **auth)).status_code == 200
    problem = assert_problem(await post_raw(client, INITIALIZE, **auth), 429)
    assert problem["type"] == "/problems/rate-limited"


async def test_only_post_is_served(make_client) -> None:
    client = await make_client()
    _, auth = await trader(client)
    r = await client.get("/mcp", headers={**auth, "Accept": "text/event-stream"})
    assert_problem(r, 405)
    assert r.headers["allow"] == "POST"


async def test_on_the_wire_an_error_result_carries_the_problem_and_the_request_id(make_client) -> None:
    client = await make_client()
    _, auth = await trader(client)
    body = (
        '{"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "greeks", "arguments": '
        '{"option_type": "call", "spot": NaN, "strike": 105, "t_years": 0.5, "rate": 0.03, '
        '"dividend_yield": 0.01, "sigma": 0.2}}}'
    )
    r = await client.post("/mcp", content=body, headers={**JSONRPC_HEADERS, **auth})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["id"] == 3 and answer["result"]["isError"] is True
    assert "arguments.spot" in answer["result"]["content"][0]["text"]
    problem = answer["result"]["structuredContent"]
    assert [e["field"] for e in problem["errors"]] == ["arguments.spot"]
    assert problem["request_id"] == r.headers["x-request-id"]
    r = await post_raw(client, call_message("no_such_tool", {}), **auth)
    assert r.status_code == 200 and r.json()["error"]["code"] == types.INVALID_PARAMS
