"""``start``/``end`` are normalised to the timeframe's grid before they key the cache (security review,
issue 10, item 4): a request that differs only below the grid is a HIT, and the answer never changes,
because bars only ever start on the grid.

The grid is the provider's: the synthetic provider aligns every timeframe on UTC epoch multiples (daily
bars at 00:00 UTC); Alpaca aligns intraday bars on UTC epoch multiples too, but stamps a daily bar at
00:00 America/New_York (05:00Z in winter, 04:00Z in summer), so its 1Day grid is New York midnight.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.market import service
from app.providers.market_data.base import BarsQuery, Timeframe
from app.providers.market_data.synthetic import SyntheticProvider
from tests.outbound.fake_provider import BARS_PATH, FakeProvider, Recorded, Reply, symbol_of

UTC = dt.UTC
NY = ZoneInfo("America/New_York")
BARS = "/v1/market-data/bars/{}"
US = dt.timedelta(microseconds=1)

# The first grid instant at or after 2024-03-01T00:00:00.000001Z, per timeframe (UTC epoch multiples).
CEIL_AFTER_MARCH_1 = {
    "1Min": "2024-03-01T00:01:00Z",
    "5Min": "2024-03-01T00:05:00Z",
    "1Hour": "2024-03-01T01:00:00Z",
    "1Day": "2024-03-02T00:00:00Z",
}


@pytest.mark.parametrize("timeframe", list(CEIL_AFTER_MARCH_1))
async def test_a_start_bumped_by_microseconds_is_a_hit_with_the_same_bars(client, timeframe: str) -> None:
    base = {"timeframe": timeframe, "end": "2024-03-20T00:00:00Z", "limit": 20}
    first = await client.get(BARS.format("AAPL"), params={**base, "start": "2024-03-01T00:00:00.000001Z"})
    assert first.status_code == 200 and first.headers["x-cache"] == "MISS", first.text
    assert first.json()["bars"][0]["t"] == CEIL_AFTER_MARCH_1[timeframe]  # rounded UP: no bar was lost
    for start in [
        "2024-03-01T00:00:00.000002Z",
        "2024-03-01T00:00:00.5Z",
        "2024-03-01T00:00:59.999999Z",
        "2024-02-29T19:00:00.000003-05:00",
        CEIL_AFTER_MARCH_1[timeframe],
    ]:
        r = await client.get(BARS.format("AAPL"), params={**base, "start": start})
        assert r.status_code == 200 and r.headers["x-cache"] == "HIT", (start, r.text)
        assert r.content == first.content


@pytest.mark.parametrize("timeframe", list(CEIL_AFTER_MARCH_1))
async def test_an_end_inside_one_grid_step_is_a_hit(client, timeframe: str) -> None:
    step = dt.timedelta(seconds=Timeframe(timeframe).seconds)
    end = dt.datetime(2024, 3, 20, tzinfo=UTC)
    base = {"timeframe": timeframe, "start": "2024-03-19T00:00:00Z", "limit": 10_000}
    first = await client.get(BARS.format("MSFT"), params={**base, "end": end.isoformat()})
    assert first.status_code == 200 and first.headers["x-cache"] == "MISS", first.text
    assert first.json()["bars"][-1]["t"] == "2024-03-20T00:00:00Z"  # the end is inclusive (a bar start)
    for later in (US, step / 2, step - US):
        r = await client.get(BARS.format("MSFT"), params={**base, "end": (end + later).isoformat()})
        assert r.status_code == 200 and r.headers["x-cache"] == "HIT", (later, r.text)
        assert r.content == first.content
    after = await client.get(BARS.format("MSFT"), params={**base, "end": (end + step).isoformat()})
    assert after.headers["x-cache"] == "MISS"  # the next grid instant is another query


# --------------------------------------------------------------------------- the answer never changes
NOW = dt.datetime(2025, 6, 2, 15, 30, 17, 250_000, tzinfo=UTC)
INSTANTS = st.datetimes(
    min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2025, 6, 3), timezones=st.just(UTC)
)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    timeframe=st.sampled_from(list(Timeframe)),
    start=INSTANTS,
    span=st.one_of(st.integers(0, 10**7), st.integers(0, 40 * 86_400 * 10**6)),
    limit=st.integers(1, 40),
)
def test_normalising_never_changes_the_synthetic_bars(
    timeframe: Timeframe, start: dt.datetime, span: int, limit: int
) -> None:
    provider = SyntheticProvider(clock=NOW.timestamp)
    end = start + dt.timedelta(microseconds=span)
    # What the provider was asked before normalisation: the raw start, the end capped at now (to the minute).
    raw = BarsQuery("AAPL", timeframe, start, min(end, NOW.replace(second=0, microsecond=0)), limit)
    query = service.bars_query(
        symbol="AAPL",
        timeframe=timeframe,
        start=start,
        end=end,
        limit=limit,
        grid=provider.grid(timeframe),
        now=NOW,
    )
    assert query.start >= raw.start and query.end <= raw.end
    for instant in (query.start, query.end):
        assert instant.timestamp() % timeframe.seconds == 0 and instant.microsecond == 0
    assert (provider.bars_sync(query) if query.start <= query.end else []) == provider.bars_sync(raw)


# --------------------------------------------------------------------------- Alpaca: daily bars at NY midnight
def _ny_midnights(first: dt.date, days: int) -> list[dt.datetime]:
    out = []
    for n in range(days):
        day = first + dt.timedelta(days=n)
        if day.weekday() < 5:  # trading days only, as Alpaca answers
            out.append(dt.datetime.combine(day, dt.time(0), NY).astimezone(UTC))
    return out


DAILY = _ny_midnights(dt.date(2024, 2, 26), 40)  # spans the 2024-03-10 switch to EDT (05:00Z -> 04:00Z)


def _z(value: dt.datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def alpaca_daily(request: Recorded) -> Reply:
    """Alpaca's daily bars: stamped at 00:00 New York, filtered by start <= t <= end, at most limit."""
    start = dt.datetime.fromisoformat(request.query["start"])
    end = dt.datetime.fromisoformat(request.query["end"])
    stamps = [t for t in DAILY if start <= t <= end][: int(request.query["limit"])]
    return Reply(
        json={
            "symbol": symbol_of(request),
            "next_page_token": None,
            "bars": [
                {"t": _z(t), "o": 10, "h": 11, "l": 9, "c": 10.5, "v": 1000, "n": 5, "vw": 10.2}
                for t in stamps
            ],
        }
    )


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2024-03-04T00:00:00Z", "2024-03-08T00:00:00Z"),  # UTC midnights: the NY-midnight bars inside
        ("2024-03-04T03:00:00Z", "2024-03-08T06:00:00Z"),  # a UTC-midnight grid would lose both ends
        ("2024-03-04T05:00:00Z", "2024-03-08T05:00:00Z"),  # exactly on the bars
        ("2024-03-04T05:00:00.000001Z", "2024-03-08T04:59:59.999999Z"),  # just inside: both ends excluded
        ("2024-03-08T12:00:00Z", "2024-03-13T03:59:59Z"),  # across the DST switch (Mar 11 is 04:00Z)
        ("2024-03-11T04:00:00Z", "2024-03-15T04:00:00Z"),  # EDT midnights exactly
        ("2024-03-04T10:00:00Z", "2024-03-04T20:00:00Z"),  # inside one day: nothing, asked of no one
    ],
)
async def test_alpaca_daily_grid_is_new_york_midnight_and_keeps_the_answer(
    alpaca_app, fake: FakeProvider, start: str, end: str
) -> None:
    fake.on(BARS_PATH, alpaca_daily)
    client = await alpaca_app()
    params = {"timeframe": "1Day", "start": start, "end": end, "limit": 100}
    first = await client.get(BARS.format("AAPL"), params=params)
    assert first.status_code == 200, first.text
    lo, hi = dt.datetime.fromisoformat(start), dt.datetime.fromisoformat(end)
    assert [b["t"] for b in first.json()["bars"]] == [_z(t) for t in DAILY if lo <= t <= hi]
    for seen in fake.seen(BARS_PATH):  # Alpaca is asked on its own grid
        for name in ("start", "end"):
            instant = dt.datetime.fromisoformat(seen.query[name]).astimezone(NY)
            assert (instant.hour, instant.minute, instant.second, instant.microsecond) == (0, 0, 0, 0), (
                seen.query
            )

    if lo in DAILY or hi in DAILY:
        return  # a bar starts exactly at a bound: nudging it inwards changes the answer, rightly another key
    calls = fake.count(BARS_PATH)
    nudged = {**params, "start": _z(lo + US), "end": _z(hi - US)}
    again = await client.get(BARS.format("AAPL"), params=nudged)
    assert again.headers["x-cache"] == "HIT" and again.content == first.content, nudged
    assert fake.count(BARS_PATH) == calls
