"""``start``/``end`` are instants between 1970-01-01 and now + 1 day: anything else is a 422 naming the
parameter, never a 500 (security review, issue 10, items 4 and 5).

The three URLs of item 5 answered 500 before: ``0001-01-01T00:00:00+01:00`` and
``9999-12-31T23:59:59-01:00`` overflow when converted to UTC, and ``end=0001-01-02`` overflowed when the
default ``start`` (``limit`` bars earlier) was computed.
"""

from __future__ import annotations

import datetime as dt

import httpx
import pytest

BARS = "/v1/market-data/bars/AAPL"


def field_errors(r: httpx.Response) -> dict[str, str]:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == 422 and body["title"] and body["type"] and body["detail"]
    return {e["field"]: e["message"] for e in body["errors"]}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("start=0001-01-01T00:00:00%2B01:00", "query.start"),  # UTC conversion underflows year 1
        ("start=9999-12-31T23:59:59-01:00", "query.start"),  # UTC conversion overflows year 9999
        ("end=0001-01-02", "query.end"),  # the default start (limit days earlier) is before year 1
        ("end=0001-01-01T00:00:00%2B14:00", "query.end"),
        ("start=9999-12-31T23:59:59.999999-23:59", "query.start"),
        ("start=0001-01-01&end=0001-01-02", "query.start"),
    ],
)
async def test_instants_outside_the_representable_range_are_422_not_500(
    client, query: str, field: str
) -> None:
    errors = field_errors(await client.get(f"{BARS}?{query}"))
    assert field in errors, errors
    assert "1970-01-01" in errors[field] and "1 day" in errors[field], errors


@pytest.mark.parametrize("timeframe", ["1Min", "5Min", "1Hour", "1Day"])
@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"start": "1969-12-31T23:59:59Z"}, "query.start"),
        ({"end": "1969-12-31"}, "query.end"),
        ({"start": "1970-01-01T00:59:59+01:00"}, "query.start"),  # 1969-12-31T23:59:59Z
    ],
)
async def test_instants_before_1970_are_422(
    client, timeframe: str, params: dict[str, str], field: str
) -> None:
    errors = field_errors(await client.get(BARS, params={"timeframe": timeframe, **params}))
    assert field in errors and "1970-01-01" in errors[field], errors


@pytest.mark.parametrize("field", ["start", "end"])
async def test_instants_more_than_a_day_ahead_are_422(client, field: str) -> None:
    too_far = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1, minutes=5)).isoformat()
    errors = field_errors(await client.get(BARS, params={field: too_far}))
    assert f"query.{field}" in errors and "1 day" in errors[f"query.{field}"], errors
    errors = field_errors(await client.get(BARS, params={field: "2999-01-01"}))
    assert f"query.{field}" in errors, errors


async def test_the_bounds_themselves_are_accepted(client) -> None:
    r = await client.get(
        BARS, params={"timeframe": "1Day", "start": "1970-01-01T00:00:00Z", "end": "1970-01-05", "limit": 10}
    )
    assert r.status_code == 200, r.text
    assert [b["t"][:10] for b in r.json()["bars"]] == [
        "1970-01-01",
        "1970-01-02",
        "1970-01-03",
        "1970-01-04",
        "1970-01-05",
    ]
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=23)).isoformat()
    r = await client.get(BARS, params={"timeframe": "1Min", "start": soon, "end": soon})
    assert r.status_code == 200 and r.json()["bars"] == []  # a range wholly in the future is empty


async def test_default_start_never_reaches_before_1970(client) -> None:
    r = await client.get(BARS, params={"timeframe": "1Day", "end": "1970-01-03", "limit": 1000})
    assert r.status_code == 200, r.text
    assert [b["t"][:10] for b in r.json()["bars"]] == ["1970-01-01", "1970-01-02", "1970-01-03"]
