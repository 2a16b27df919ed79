"""Market-data rules: normalise the query, go through the cache, explain an outage.

Keyword-only functions; no HTTP objects. The values returned are what the routes answer — a quote's JSON
object, a bars answer's finished JSON body (bytes) — plus how the cache served them (HIT, MISS, STALE).

A bars query is normalised to the provider's grid (``MarketDataProvider.grid``) before it keys the cache:
``start`` rounded up, ``end`` rounded down. No bar starts between a bound and its rounded value, so the
answer is the same, and requests that differ only below the grid (``start=…T00:00:00.000001``, then
``.000002``, …) share one cache entry instead of each costing a provider call.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from typing import Any

from app.core.errors import ServiceUnavailable, Unprocessable
from app.core.http import CircuitOpenError, UpstreamError, UpstreamRateLimited, UpstreamTimeout
from app.providers.market_data import CacheStatus, MarketData
from app.providers.market_data.base import EPOCH, BarsQuery, Grid, Timeframe, bars_body, quote_to_json

# Building a bars body costs ~5 µs a bar on the event loop; a thread hop ~50 µs. Above this many bars the
# body is built in a thread (the hop is then under a tenth of the work, and building one body never holds
# the loop for more than ~0.5 ms); below it, on the loop (a thread would only add latency).
RENDER_IN_THREAD_BARS = 100


class MarketDataUnavailable(ServiceUnavailable):
    slug = "market-data-unavailable"


def _unavailable(symbol: str, exc: UpstreamError) -> MarketDataUnavailable:
    if isinstance(exc, CircuitOpenError):
        why = "the provider is failing and calls to it are suspended (circuit open)"
    elif isinstance(exc, UpstreamRateLimited):
        why = "the provider's rate limit is exhausted"
    elif isinstance(exc, UpstreamTimeout):
        why = "the provider did not answer in time"
    else:
        why = "the provider is unavailable"
    retry_after = max(1, math.ceil(exc.retry_after))
    return MarketDataUnavailable(
        f"Market data for {symbol} is unavailable: {why}, and no cached copy exists. Retry in {retry_after} s.",
        retry_after=retry_after,
    )


async def get_quote(*, market: MarketData, symbol: str) -> tuple[dict[str, Any], CacheStatus]:
    """The latest quote for an already-validated symbol, through the cache."""

    async def fetch() -> dict[str, Any]:
        return quote_to_json(await market.provider.latest_quote(symbol))

    try:
        return await market.cache.get_or_fetch("quote", symbol, fetch)
    except UpstreamError as exc:
        raise _unavailable(symbol, exc) from None


def bars_query(
    *,
    symbol: str,
    timeframe: Timeframe,
    start: dt.datetime | None,
    end: dt.datetime | None,
    limit: int,
    grid: Grid,
    now: dt.datetime | None = None,
) -> BarsQuery:
    """Check the range, fill the defaults and round both bounds to ``grid``. ``end`` defaults to (and is
    capped at) now, to the minute, then rounded down to the grid, so open-ended queries share a cache key
    for a minute or a grid step, whichever is longer; ``start`` defaults to ``limit`` bars before the bar in
    progress at ``end`` (never before 1970), else is rounded up."""
    now = (now or dt.datetime.now(dt.UTC)).replace(second=0, microsecond=0)
    if start is not None and end is not None and start > end:
        raise Unprocessable(
            "The request is invalid: query.start: must not be after end",
            errors=[{"field": "query.start", "message": "must not be after end"}],
        )
    end = grid.floor(min(end, now) if end is not None else now)
    if start is None:  # the `limit` bars before the bar in progress at `end`
        start = max(grid.back(end, limit), grid.ceil(EPOCH))
    else:
        start = grid.ceil(start)
    return BarsQuery(symbol=symbol, timeframe=timeframe, start=start, end=end, limit=limit)


async def get_bars(
    *,
    market: MarketData,
    symbol: str,
    timeframe: Timeframe,
    start: dt.datetime | None,
    end: dt.datetime | None,
    limit: int,
) -> tuple[bytes, CacheStatus]:
    """Historical bars (ascending, at most ``limit``, starting at or after ``start``), through the cache,
    as the JSON body to send."""
    query = bars_query(
        symbol=symbol,
        timeframe=timeframe,
        start=start,
        end=end,
        limit=limit,
        grid=market.provider.grid(timeframe),
    )

    async def fetch() -> bytes:
        if query.start > query.end:  # the range lies in the future, or holds no grid instant
            return bars_body(query, [])
        bars = await market.provider.bars(query)
        if len(bars) > RENDER_IN_THREAD_BARS:
            return await asyncio.to_thread(bars_body, query, bars)
        return bars_body(query, bars)

    try:
        # Every query for one symbol shares its "no such symbol" entry, whatever the range.
        return await market.cache.get_or_fetch("bars", query.cache_key, fetch, not_found_key=query.symbol)
    except UpstreamError as exc:
        raise _unavailable(query.symbol, exc) from None
