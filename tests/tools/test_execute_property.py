"""Property: whatever JSON a caller sends to ``POST /v1/tools/{name}/execute``, the only answers are 200,
404, 422 or 504 — never a 500 — and the server stays healthy. Hypothesis runs in a worker thread and sends
each example on the app's event loop (the pattern of tests/market/test_property.py)."""

from __future__ import annotations

import asyncio
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.orders.helpers import trader

REQUEST_SECONDS = 30
NAMES = st.sampled_from(["greeks", "implied_vol", "backtest", "quote", "Greeks", "os.system", "x" * 80])
KEYS = st.sampled_from(
    [
        "option_type",
        "spot",
        "strike",
        "t_years",
        "rate",
        "dividend_yield",
        "sigma",
        "price",
        "options",
        "symbol",
        "timeframe",
        "start",
        "end",
        "fast",
        "slow",
        "commission",
        "initial_cash",
        "__class__",
    ]
) | st.text(max_size=12)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(
        ["call", "put", "1Day", "AAPL", "2024-01-02T00:00:00Z", "../../etc/passwd", "' OR 1=1 --"]
    ),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=8),
    max_leaves=24,
)
ARGUMENTS = st.one_of(JSON, st.dictionaries(KEYS, JSON, max_size=10))


async def test_tool_execution_answers_only_200_404_422_or_504(make_client) -> None:
    client = await make_client(rate_limit_tools="100000/minute", rate_limit_default="100000/minute")
    _, auth = await trader(client)
    loop = asyncio.get_running_loop()
    seen: set[int] = set()

    def post(name: str, body: bytes):
        return asyncio.run_coroutine_threadsafe(
            client.post(
                f"/v1/tools/{name}/execute",
                content=body,
                headers={**auth, "Content-Type": "application/json"},
            ),
            loop,
        ).result(REQUEST_SECONDS)

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(name=NAMES, arguments=ARGUMENTS)
    def examples(name: str, arguments: object) -> None:
        body = json.dumps({"arguments": arguments}, allow_nan=True).encode()
        r = post(name, body)
        seen.add(r.status_code)
        assert r.status_code in (200, 404, 422, 504), (r.status_code, r.text[:500])

    await asyncio.to_thread(examples)
    assert 422 in seen and 404 in seen
    assert (await client.get("/healthz")).status_code == 200
