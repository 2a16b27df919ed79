"""Market-data rules: normalise the query, go through the cache, explain an outage.

Keyword-only functions; no HTTP objects. The values returned are the JSON the routes answer, plus how the
cache served them (HIT, MISS, STALE).
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from app.core.errors import ServiceUnavailable, Unprocessable
from app.core.http import CircuitOpenError, UpstreamError, UpstreamRateLimited, UpstreamTimeout
from app.providers.market_data import CacheStatus, MarketData
from app.providers.market_data.base import BarsQuery, Timeframe, bars_to_json, quote_to_json


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
    *, symbol: str, timeframe: Timeframe, start: dt.datetime | None, end: dt.datetime | None, limit: int,
    now: dt.datetime | None = None,
) -> BarsQuery:
    """Fill the defaults and check the range. ``end`` defaults to (and is capped at) now, to the minute, so
    open-ended queries share a cache key for a minute; ``start`` defaults to ``limit`` whole bars before the bar
    in progress at ``end``."""
    now = (now or dt.datetime.now(dt.UTC)).replace(second=0, microsecond=0)
    if start is not None and end is not None and start > end:
        raise Unprocessable(
            "The request is invalid: query.start: must not be after end",
            errors=[{"field": "query.start", "message": "must not be after end"}],
        )
    end = min(end, now) if end is not None else now
    if start is None:  # the `limit` bars before the bar in progress at `end`
        step = timeframe.seconds
        aligned = int(end.timestamp()) // step * step
        start = dt.datetime.fromtimestamp(aligned - step * limit, dt.UTC)
    return BarsQuery(symbol=symbol, timeframe=timeframe, start=start, end=end, limit=limit)


async def get_bars(*, market: MarketData, query: BarsQuery) -> tuple[dict[str, Any], CacheStatus]:
    """Historical bars (ascending, at most ``limit``, starting at ``start``), through the cache."""

    async def fetch() -> dict[str, Any]:
        if query.start > query.end:  # the whole range lies in the future
            return bars_to_json(query, [])
        return bars_to_json(query, await market.provider.bars(query))

    try:
        return await market.cache.get_or_fetch("bars", query.cache_key, fetch)
    except UpstreamError as exc:
        raise _unavailable(query.symbol, exc) from None
