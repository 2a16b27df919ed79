"""Clear 422s for symbols, timeframes, dates and limits — before any provider is asked."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest

from tests.outbound.fake_provider import FakeProvider


def errors_of(r: httpx.Response) -> dict[str, str]:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    return {e["field"]: e["message"] for e in r.json()["errors"]}


@pytest.mark.parametrize(
    "symbol", ["1AAPL", "AAPL$", "TOOLONGSYMBOL", "BRK-B", "A_B", ".A", "%20AAPL", "ÄPPL"]
)
async def test_bad_symbols_are_422_with_the_field(alpaca_app, fake: FakeProvider, symbol: str) -> None:
    client = await alpaca_app()
    for path in (f"/v1/market-data/quotes/{symbol}", f"/v1/market-data/bars/{symbol}"):
        errors = errors_of(await client.get(path))
        assert "path.symbol" in errors and "letter" in errors["path.symbol"]
    assert fake.requests == []


@pytest.mark.parametrize("symbol", ["aapl", "Brk.b", "A", "ABCDEFGHIJ", "X1.2"])
async def test_valid_symbols_are_upper_cased(client, symbol: str) -> None:
    r = await client.get(f"/v1/market-data/quotes/{symbol}")
    assert r.status_code == 200 and r.json()["symbol"] == symbol.upper()


@pytest.mark.parametrize(
    ("params", "field", "needle"),
    [
        ({"timeframe": "2Min"}, "query.timeframe", "1Min"),
        ({"timeframe": "1day"}, "query.timeframe", "1Day"),
        ({"start": "yesterday"}, "query.start", "ISO 8601"),
        ({"end": "2024-13-01"}, "query.end", "ISO 8601"),
        ({"start": "1700000000"}, "query.start", "ISO 8601"),
        ({"start": "2024-02-01", "end": "2024-01-01"}, "query.start", "after end"),
        ({"limit": 0}, "query.limit", "greater than or equal to 1"),
        ({"limit": 10001}, "query.limit", "less than or equal to 10000"),
        ({"limit": "many"}, "query.limit", "integer"),
    ],
)
async def test_bad_bars_queries_are_422_with_the_field(
    alpaca_app, fake: FakeProvider, params, field, needle
) -> None:
    client = await alpaca_app()
    errors = errors_of(await client.get("/v1/market-data/bars/AAPL", params=params))
    assert field in errors and needle in errors[field], errors
    assert fake.requests == []


async def test_accepted_date_forms(client) -> None:
    for start, end in [
        ("2024-01-02", "2024-01-05"),
        ("2024-01-02T09:30:00-05:00", "2024-01-02T16:00:00-05:00"),
        ("2024-01-02T14:30:00Z", "2024-01-02T14:30:00Z"),
        ("2024-01-02T14:30:00", None),
    ]:
        params = {"timeframe": "1Min", "start": start, "limit": 3}
        if end:
            params["end"] = end
        r = await client.get("/v1/market-data/bars/AAPL", params=params)
        assert r.status_code == 200, (start, end, r.text)
    r = await client.get(
        "/v1/market-data/bars/AAPL",
        params={"timeframe": "1Min", "start": "2024-01-02T09:30:00-05:00", "limit": 1},
    )
    assert r.json()["bars"][0]["t"] == "2024-01-02T14:30:00Z"


async def test_empty_start_or_end_is_422_not_a_missing_value(client) -> None:
    # The document says start/end are ISO 8601 instants; leaving a parameter out is how to omit it.
    errors = errors_of(await client.get("/v1/market-data/bars/AAPL?timeframe=1Hour&start=&end=&limit=2"))
    assert set(errors) == {"query.start", "query.end"}
    r = await client.get("/v1/market-data/bars/AAPL?timeframe=1Hour&limit=2")
    assert r.status_code == 200 and len(r.json()["bars"]) == 2


async def test_future_range_is_empty_not_an_error(client) -> None:
    # Up to now + 1 day (further is a 422, tests/market/test_input_bounds.py).
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    params = {"start": soon.isoformat(), "end": (soon + dt.timedelta(hours=20)).isoformat()}
    r = await client.get("/v1/market-data/bars/AAPL", params=params)
    assert r.status_code == 200 and r.json()["bars"] == []


async def test_no_login_needed_and_default_rate_limit_applies(make_client) -> None:
    client = await make_client(rate_limit_default="2/minute")
    assert (await client.get("/v1/market-data/quotes/AAPL")).status_code == 200
    assert (await client.get("/v1/market-data/quotes/AAPL")).status_code == 200
    r = await client.get("/v1/market-data/quotes/AAPL")
    assert r.status_code == 429 and r.headers["retry-after"]
