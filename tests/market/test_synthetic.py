"""The synthetic provider: deterministic per symbol and time, a realistic random walk, valid OHLC with
volume, no network; and the default routes serving it."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import numpy as np
import pytest

from app.providers.market_data.base import BarsQuery, Timeframe
from app.providers.market_data.synthetic import SyntheticProvider

NOW = dt.datetime(2025, 6, 2, 15, 30, 17, tzinfo=dt.UTC).timestamp()
UTC = dt.UTC


def provider(now: float = NOW) -> SyntheticProvider:
    return SyntheticProvider(clock=lambda: now)


def query(
    symbol: str = "AAPL",
    timeframe: Timeframe = Timeframe.MIN_5,
    limit: int = 500,
    start: dt.datetime = dt.datetime(2025, 5, 1, tzinfo=UTC),
    end: dt.datetime = dt.datetime(2025, 6, 1, tzinfo=UTC),
) -> BarsQuery:
    return BarsQuery(symbol=symbol, timeframe=timeframe, start=start, end=end, limit=limit)


async def test_same_query_same_answer_across_instances() -> None:
    a, b = provider(), provider(NOW + 3600)  # "now" differs; a past range does not
    assert await a.bars(query()) == await b.bars(query())
    assert await provider().latest_quote("MSFT") == await provider().latest_quote("MSFT")
    # Different symbols, different paths.
    assert [x.c for x in await a.bars(query("AAPL"))] != [x.c for x in await a.bars(query("MSFT"))]


async def test_overlapping_queries_agree_bar_for_bar() -> None:
    p = provider()
    wide = await p.bars(query(limit=1000))
    narrow = await p.bars(query(start=wide[100].t, end=wide[199].t, limit=1000))
    assert narrow == wide[100:200]


@pytest.mark.parametrize("symbol", ["AAPL", "MSFT", "BRK.B", "X", "ZZZZZZZZZZ", "A1"])
@pytest.mark.parametrize("timeframe", list(Timeframe))
async def test_ohlc_valid_with_volume_aligned_ascending(symbol: str, timeframe: Timeframe) -> None:
    bars = await provider().bars(
        query(
            symbol,
            timeframe,
            limit=300,
            start=dt.datetime(2024, 1, 1, tzinfo=UTC),
            end=dt.datetime(2025, 6, 1, tzinfo=UTC),
        )
    )
    assert len(bars) == 300
    step = dt.timedelta(seconds=timeframe.seconds)
    for prev, bar in zip(bars, bars[1:], strict=False):
        assert bar.t - prev.t == step
    for bar in bars:
        assert bar.l <= bar.o <= bar.h and bar.l <= bar.c <= bar.h, bar
        assert bar.l > 0 and bar.v >= 1 and bar.v == bar.v.to_integral_value()
        assert bar.t.timestamp() % timeframe.seconds == 0
        for price in (bar.o, bar.h, bar.l, bar.c):
            assert isinstance(price, Decimal) and -price.as_tuple().exponent in (2, 4)


async def test_walk_is_random_walk_like() -> None:
    p = provider()
    bars = await p.bars(
        query(
            "AAPL",
            Timeframe.HOUR_1,
            limit=5000,
            start=dt.datetime(2024, 1, 1, tzinfo=UTC),
            end=dt.datetime(2025, 6, 1, tzinfo=UTC),
        )
    )
    closes = np.array([float(b.c) for b in bars])
    returns = np.diff(np.log(closes))
    sigma = p._profile("AAPL").sigma_per_second * np.sqrt(3600)
    assert 0.5 * sigma < returns.std() < 1.5 * sigma  # hourly moves of the right size
    assert abs(returns.mean()) < 0.2 * returns.std()  # no built-in drift
    assert abs(np.corrcoef(returns[:-1], returns[1:])[0, 1]) < 0.15  # no obvious memory
    assert len(set(closes)) > 1000  # it moves
    # Volume grows with the bar length.
    minute = await p.bars(query("AAPL", Timeframe.MIN_1, limit=1000))
    daily = await p.bars(query("AAPL", Timeframe.DAY_1, limit=30, start=dt.datetime(2025, 1, 1, tzinfo=UTC)))
    assert np.mean([float(b.v) for b in daily]) > 100 * np.mean([float(b.v) for b in minute])


async def test_quote_straddles_last_and_moves_with_time() -> None:
    quotes = [await provider(NOW + k * 60).latest_quote("AAPL") for k in range(30)]
    for q in quotes:
        assert q.bid < q.ask and q.bid <= q.last <= q.ask
        assert q.timestamp.tzinfo is not None
    assert len({q.last for q in quotes}) > 5
    assert quotes[0].timestamp == dt.datetime.fromtimestamp(int(NOW), UTC)


async def test_only_completed_bars_are_returned() -> None:
    p = provider()
    bars = await p.bars(
        query(
            timeframe=Timeframe.MIN_1,
            start=dt.datetime(2025, 6, 2, 15, 0, tzinfo=UTC),
            end=dt.datetime(2025, 6, 2, 16, 0, tzinfo=UTC),
            limit=1000,
        )
    )
    assert bars[-1].t == dt.datetime(2025, 6, 2, 15, 29, tzinfo=UTC)  # 15:30 is still open at 15:30:17


async def test_routes_serve_synthetic_data_by_default(client) -> None:
    r = await client.get("/v1/market-data/quotes/brk.b")
    assert r.status_code == 200 and r.headers["x-cache"] == "MISS"
    body = r.json()
    assert set(body) == {"symbol", "bid", "ask", "last", "timestamp"}
    assert body["symbol"] == "BRK.B"
    assert all(isinstance(body[k], str) for k in ("bid", "ask", "last"))
    assert Decimal(body["bid"]) <= Decimal(body["last"]) <= Decimal(body["ask"])
    assert body["timestamp"].endswith("Z")
    again = await client.get("/v1/market-data/quotes/BRK.B")
    assert again.headers["x-cache"] == "HIT" and again.json() == body

    params = {
        "timeframe": "1Hour",
        "start": "2024-03-01T00:00:00Z",
        "end": "2024-03-02T00:00:00Z",
        "limit": 10,
    }
    r = await client.get("/v1/market-data/bars/spy", params=params)
    assert r.status_code == 200 and r.headers["x-cache"] == "MISS"
    bars = r.json()
    assert bars["symbol"] == "SPY" and bars["timeframe"] == "1Hour" and len(bars["bars"]) == 10
    first = bars["bars"][0]
    assert set(first) == {"t", "o", "h", "l", "c", "v"} and first["t"] == "2024-03-01T00:00:00Z"
    assert all(isinstance(v, str) for v in first.values())
    expected = await SyntheticProvider().bars(
        BarsQuery(
            "SPY",
            Timeframe.HOUR_1,
            dt.datetime(2024, 3, 1, tzinfo=UTC),
            dt.datetime(2024, 3, 2, tzinfo=UTC),
            10,
        )
    )
    assert [b["c"] for b in bars["bars"]] == [str(b.c) for b in expected]
    assert (await client.get("/v1/market-data/bars/SPY", params=params)).headers["x-cache"] == "HIT"


async def test_bars_defaults_latest_limit_bars_up_to_now(client) -> None:
    r = await client.get("/v1/market-data/bars/AAPL", params={"timeframe": "1Min", "limit": 5})
    bars = r.json()["bars"]
    assert r.status_code == 200 and len(bars) == 5
    last = dt.datetime.fromisoformat(bars[-1]["t"])
    assert dt.timedelta(minutes=1) <= dt.datetime.now(UTC) - last < dt.timedelta(minutes=3)  # completed
    r = await client.get("/v1/market-data/bars/AAPL")  # timeframe 1Day, limit 1000 by default
    assert r.json()["timeframe"] == "1Day" and len(r.json()["bars"]) == 1000
