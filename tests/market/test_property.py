"""Property: whatever a client puts in the market-data routes' path and query parameters, the answer is
2xx or a 4xx problem+json, never a 5xx (security review, issue 10, item 7).

How hypothesis meets the async app: the app (its lifespan, database pool, Redis client) lives on the
session's event loop, so the examples must be *sent* from that loop, while hypothesis drives a plain
synchronous test function and cannot await. The test therefore runs hypothesis in a worker thread
(``asyncio.to_thread``) and, for each example, hands the request to the still-running event loop with
``asyncio.run_coroutine_threadsafe(...).result()``. Hypothesis keeps its full engine (generation,
shrinking, the failing example printed), the app runs exactly as it does for every other test, and nothing
blocks the loop: it is free while the test awaits the thread. ``database=None``: no example database, so
every run is a fresh search and none depends on what an earlier run saved; ``max_examples`` keeps the run
to a few seconds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import string
from collections.abc import Callable
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# Enough to meet the known overflows every run (150 examples of the bars route find one of them in 10 runs
# out of 10 against the code before the fix), small enough for ~5 s in all.
EXAMPLES = {"quotes": 100, "bars": 150, "raw_bars": 100}
REQUEST_SECONDS = 30

# Any text (no lone surrogates: they cannot be put on the wire as UTF-8), and the shapes that tend to break
# parsers: numbers of any size, dates in and out of range, with odd offsets and precisions.
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
NUMBERS = st.one_of(
    st.integers(), st.integers(-5, 20_000), st.floats(allow_nan=True, allow_infinity=True)
).map(str)
OFFSETS = st.none() | st.builds(dt.timezone, st.integers(-1439, 1439).map(lambda m: dt.timedelta(minutes=m)))
DATES = st.one_of(
    st.datetimes(timezones=OFFSETS).map(dt.datetime.isoformat),
    st.dates().map(dt.date.isoformat),
    st.dates().map(lambda d: d.strftime("%Y%m%d")),
    st.sampled_from(
        [
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "0001-01-02",
            "9999-12-31",
            "1970-01-01",
            "1969-12-31T23:59:59.999999Z",
            "2024-02-30",
            "2024-13-01",
            "2024-01-01T24:00:00",
            "2024-W01-1",
            "2024-001",
            "2024-01-01T00:00:00+24:00",
            "2024-01-01T00:00:00.1234567Z",
            "+002024-01-01",
            "now",
            "1e400",
            "-0",
            "0x10",
            "١٢٣",
            "２０２４-０１-０１",
            " 2024-01-01 ",
            "2024-01-01\x00",
            "",
            "9" * 400,
        ]
    ),
)
# The edges of what datetime can hold and of what the routes accept, with any offset: where overflows live.
EDGES = st.builds(
    lambda d, tz: d.replace(tzinfo=tz).isoformat(),
    st.sampled_from(
        [
            dt.datetime.min,
            dt.datetime.max,
            dt.datetime(1, 1, 2),
            dt.datetime(9999, 12, 31),
            dt.datetime(1970, 1, 1),
            dt.datetime(1969, 12, 31, 23, 59, 59, 999999),
        ]
    ),
    OFFSETS,
)
INSTANT = st.one_of(EDGES, DATES, TEXT, NUMBERS)
PARAM = st.one_of(TEXT, NUMBERS, DATES)
TIMEFRAME = st.one_of(st.sampled_from(["1Min", "5Min", "1Hour", "1Day", "1day", "1MIN", ""]), TEXT)
SYMBOL = st.one_of(
    st.from_regex(r"[A-Za-z][A-Za-z0-9.]{0,9}", fullmatch=True),
    TEXT.filter(bool),
    st.sampled_from(["ß", "ǆ", "ﬁ", "AAPL%00", "..", ".", "A/B", "%FF", "A" * 500]),
)
# Raw, undecoded query strings too: invalid UTF-8 and stray '%' included.
RAW_VALUE = st.one_of(
    st.binary(max_size=20).map(lambda b: quote(b, safe="")),
    st.sampled_from(["%", "%G1", "%FF%FE", "%00", "%C3%28", "+", "%2B01:00", "=", "&", ""]),
)
RAW_QUERY = st.lists(
    st.tuples(st.sampled_from(["timeframe", "start", "end", "limit", "x", ""]), RAW_VALUE), max_size=4
)


def check(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text)
    # No redirects either: the app is built with redirect_slashes=False, so a symbol ending in an encoded
    # '/' (decoded into the path) is a 404 problem, not a 307 to another URL.
    assert 200 <= r.status_code < 300 or 400 <= r.status_code < 500, (r.status_code, r.headers)
    if r.status_code >= 400:
        assert r.headers["content-type"].startswith("application/problem+json"), r.headers
        body = r.json()
        assert body["status"] == r.status_code and body["title"] and body["detail"] and body["type"]
        if r.status_code == 422:
            assert body["errors"] and all(e["field"] and e["message"] for e in body["errors"])
    else:
        assert r.headers["content-type"].startswith("application/json") and r.headers["x-cache"]
        r.json()


def segment(symbol: str) -> str:
    return quote(symbol, safe=string.ascii_letters + string.digits + ".")


def run_on(loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient) -> Callable[..., httpx.Response]:
    def get(url: str, **kw: object) -> httpx.Response:
        return asyncio.run_coroutine_threadsafe(client.get(url, **kw), loop).result(REQUEST_SECONDS)

    return get


async def test_market_data_routes_never_answer_5xx(make_client) -> None:
    client = await make_client(rate_limit_default="100000/minute")
    get = run_on(asyncio.get_running_loop(), client)

    def budget(name: str) -> settings:
        return settings(
            max_examples=EXAMPLES[name],
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )

    @budget("quotes")
    @given(symbol=SYMBOL)
    def quotes(symbol: str) -> None:
        check(get(f"/v1/market-data/quotes/{segment(symbol)}"))

    @budget("bars")
    @given(
        symbol=SYMBOL,
        params=st.fixed_dictionaries(
            {}, optional={"timeframe": TIMEFRAME, "start": INSTANT, "end": INSTANT, "limit": PARAM}
        ),
    )
    def bars(symbol: str, params: dict[str, str]) -> None:
        check(get(f"/v1/market-data/bars/{segment(symbol)}", params=params))

    @budget("raw_bars")
    @given(pairs=RAW_QUERY)
    def raw_bars(pairs: list[tuple[str, str]]) -> None:
        query = "&".join(f"{k}={v}" for k, v in pairs)
        check(get(f"/v1/market-data/bars/AAPL?{query}"))

    for prop in (quotes, bars, raw_bars):
        await asyncio.to_thread(prop)
