"""Tools over HTTP: the published list, execution in the sandbox (real worker processes), strict 422s
naming arguments.<path>, the wall-clock limit (504, the worker replaced, the server answering meanwhile),
a worker killed by its memory cap, the audit row of every call and the per-user limit."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator

import pytest

from app.quant.greeks import bs_greeks
from app.tools import registry
from app.tools.schemas import ToolArgs
from tests.auth.helpers import fetch
from tests.orders.helpers import trader
from tests.support.problems import assert_problem
from tests.support.servers import eventually
from tests.support.timing import collector_paused

pytestmark = pytest.mark.asyncio

OPTION = {
    "option_type": "call",
    "spot": 100.0,
    "strike": 105.0,
    "t_years": 0.5,
    "rate": 0.03,
    "dividend_yield": 0.01,
    "sigma": 0.2,
}


class NoArgs(ToolArgs):
    """No arguments."""


@pytest.fixture
def hostile_tools() -> Iterator[None]:
    """Tools that misbehave, registered for these tests only (before the app builds its sandbox)."""
    names = {"test_loop": "loop_forever", "test_allocate": "allocate_forever", "test_exit": "exit_hard"}
    for name, function in names.items():
        registry.register(
            registry.Tool(
                name=name,
                description=f"test only: {function}",
                args_model=NoArgs,
                function=f"tests.tools.sandbox_funcs:{function}",
            ),
            replace=True,
        )
    yield
    for name in names:
        registry.REGISTRY.pop(name, None)


async def run(client, auth, name: str, arguments, **kw):
    return await client.post(f"/v1/tools/{name}/execute", json={"arguments": arguments}, headers=auth, **kw)


async def test_the_tools_are_listed_without_login(make_client) -> None:
    client = await make_client()
    r = await client.get("/v1/tools")
    assert r.status_code == 200
    tools = {t["name"]: t for t in r.json()}
    assert {"greeks", "implied_vol", "backtest", "quote"} <= set(tools)
    schema = tools["greeks"]["parameters"]
    assert schema["type"] == "object" and schema["additionalProperties"] is False


async def test_greeks_run_in_the_sandbox_and_match_the_library(make_client, database_url) -> None:
    client = await make_client()
    user, auth = await trader(client)
    r = await run(client, auth, "greeks", OPTION)
    assert r.status_code == 200, r.text
    direct = bs_greeks(**OPTION)
    for key in ("price", "delta", "gamma", "vega", "theta", "rho"):
        assert r.json()["result"][key] == pytest.approx(float(direct[key]), rel=1e-12)
    batch = await run(client, auth, "greeks", {"options": [OPTION, {**OPTION, "option_type": "put"}]})
    assert batch.status_code == 200 and len(batch.json()["result"]["results"]) == 2
    rows = await fetch(database_url, "SELECT tool, outcome, via, user_id FROM tool_calls ORDER BY id")
    assert [(r["tool"], r["outcome"], r["via"]) for r in rows] == [("greeks", "ok", "http")] * 2
    assert str(rows[0]["user_id"]) == user["id"]


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({**OPTION, "spot": "100"}, "arguments.spot"),
        ({**OPTION, "spot": "../../etc/passwd"}, "arguments.spot"),
        ({**OPTION, "option_type": "; rm -rf /"}, "arguments.option_type"),
        ({**OPTION, "sigma": -0.2}, "arguments.sigma"),
        ({**OPTION, "shell": "__import__('os')"}, "arguments.shell"),
        ({"options": [OPTION] * 3 + [{**OPTION, "sigma": -1}]}, "arguments.options.3.sigma"),
        ({"options": [OPTION] * 10_001}, "arguments.options"),
    ],
)
async def test_arguments_that_break_the_schema_are_422_naming_them(make_client, arguments, field) -> None:
    # 10,001 options are ~1.1 MB of JSON: over MAX_BODY_BYTES (1 MiB) but under TOOL_MAX_BODY_BYTES.
    client = await make_client()
    _, auth = await trader(client)
    problem = assert_problem(await run(client, auth, "greeks", arguments), 422)
    assert field in [e["field"] for e in problem["errors"]], problem


@pytest.mark.parametrize(
    "text",
    [
        "../../etc/passwd",
        "; rm -rf /",
        "' OR 1=1 --",
        "__import__('os')",
        "{{7*7}}",
        "${jndi:ldap://x}",
        "x" * (10 * 1024 * 1024),
    ],
    ids=["path", "shell", "sql", "python", "template", "jndi", "10MB"],
)
async def test_injection_strings_over_http_are_422_naming_the_field(make_client, text) -> None:
    client = await make_client()
    _, auth = await trader(client)
    for name, arguments, field in (
        ("quote", {"symbol": text}, "arguments.symbol"),
        ("greeks", {**OPTION, "option_type": text}, "arguments.option_type"),
        (
            "backtest",
            {"symbol": "AAPL", "timeframe": text, "start": None, "end": None},
            "arguments.timeframe",
        ),
    ):
        problem = assert_problem(await run(client, auth, name, arguments), 422)
        assert field in [e["field"] for e in problem["errors"]], (name, problem)
        assert text[:100] not in problem["detail"]  # the hostile value is not echoed back


async def test_the_largest_batch_fits_its_own_body_cap_and_other_routes_keep_max_body_bytes(
    make_client,
) -> None:
    client = await make_client()
    _, auth = await trader(client)
    batch = {"options": [OPTION] * 10_000}
    r = await run(client, auth, "greeks", batch)
    assert r.status_code == 200, r.text
    assert len(r.json()["result"]["results"]) == 10_000
    big_profile = await client.patch("/v1/auth/me", headers=auth, json={"bio": "x" * 1_100_000})
    assert_problem(big_profile, 413)
    small = await make_client(tool_max_body_bytes=64 * 1024)
    _, small_auth = await trader(small)
    assert_problem(await run(small, small_auth, "greeks", batch), 413)


async def test_nan_and_infinity_in_the_raw_json_are_422(make_client) -> None:
    client = await make_client()
    _, auth = await trader(client)
    for literal in ("NaN", "Infinity", "-Infinity", "1e309"):
        body = (
            '{"arguments": {"option_type": "call", "spot": ' + literal + ', "strike": 105, "t_years": 0.5, '
            '"rate": 0.03, "dividend_yield": 0.01, "sigma": 0.2}}'
        )
        r = await client.post(
            "/v1/tools/greeks/execute", content=body, headers={**auth, "Content-Type": "application/json"}
        )
        assert "arguments.spot" in [e["field"] for e in assert_problem(r, 422)["errors"]], literal


async def test_an_unknown_tool_is_404_and_execution_needs_a_login(make_client, database_url) -> None:
    client = await make_client()
    _, auth = await trader(client)
    assert_problem(await run(client, auth, "os.system", {}), 404)
    assert_problem(await run(client, auth, "Greeks", OPTION), 404)
    assert_problem(await client.post("/v1/tools/greeks/execute", json={"arguments": OPTION}), 401)
    (row,) = await fetch(database_url, "SELECT tool, outcome FROM tool_calls WHERE tool = 'os.system'")
    assert row["outcome"] == "not-found"


async def test_a_price_outside_the_no_arbitrage_bounds_is_422_from_inside_the_sandbox(make_client) -> None:
    client = await make_client()
    _, auth = await trader(client)
    args = {k: v for k, v in OPTION.items() if k != "sigma"} | {"price": 500.0}
    problem = assert_problem(await run(client, auth, "implied_vol", args), 422)
    assert [e["field"] for e in problem["errors"]] == ["arguments.price"]


async def test_a_tool_past_the_time_limit_is_504_and_the_server_keeps_answering(
    make_client, hostile_tools
) -> None:
    client = await make_client(tool_timeout_seconds=1, tool_workers=2, rate_limit_tools="1000/minute")
    _, auth = await trader(client)
    assert (await run(client, auth, "greeks", OPTION)).status_code == 200  # the pool is up

    latencies: list[float] = []
    stop = asyncio.Event()

    async def probe() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            assert (await client.get("/healthz")).status_code == 200
            latencies.append(time.perf_counter() - t)
            await asyncio.sleep(0.01)

    with collector_paused():  # the gaps measured are the server's, not this process's collector's
        prober = asyncio.create_task(probe())
        started = time.perf_counter()
        answers = await asyncio.gather(*(run(client, auth, "test_loop", {}) for _ in range(2)))
        elapsed = time.perf_counter() - started
        stop.set()
        await prober
    for r in answers:
        assert_problem(r, 504)
    assert elapsed < 1 + 1.5, elapsed
    assert statistics.quantiles(latencies, n=100)[98] < 0.05, max(latencies)

    # The workers are replaced: the pool answers again once they are up (meanwhile a call may get the
    # documented 503 + Retry-After; on a loaded machine a spawn can take longer than the queue wait).
    async def recovered() -> bool:
        r = await run(client, auth, "greeks", OPTION)
        if r.status_code == 503:
            assert r.headers["retry-after"]
            return False
        assert r.status_code == 200, r.text
        return True

    await eventually(recovered, within=60, what="the pool to answer after its workers were replaced")


async def test_a_worker_that_dies_is_a_clear_error_and_is_replaced(make_client, hostile_tools) -> None:
    client = await make_client(tool_timeout_seconds=5, tool_workers=1, tool_memory_mb=256)
    _, auth = await trader(client)
    r = await run(client, auth, "test_exit", {})
    assert r.status_code in (500, 502), r.text
    assert_problem(r, r.status_code)
    r = await run(client, auth, "test_allocate", {})
    assert r.status_code in (422, 500, 502, 504), r.text
    assert (await run(client, auth, "greeks", OPTION)).status_code == 200


async def test_executions_are_limited_per_user(make_client) -> None:
    client = await make_client(rate_limit_tools="2/50 years")
    _, auth = await trader(client)
    _, other = await trader(client)
    for _ in range(2):
        assert (await run(client, auth, "greeks", OPTION)).status_code == 200
    assert_problem(await run(client, auth, "greeks", OPTION), 429)
    assert (await run(client, other, "greeks", OPTION)).status_code == 200
