"""Alpaca Market Data API v2 over the shared outbound layer (timeouts, retries, breaker, metrics).

* Quote: ONE request, ``GET /v2/stocks/{symbol}/snapshot`` → ``{"symbol", "latestTrade": {"t", "x", "p", "s",
  "c", "i", "z"}, "latestQuote": {"t", "ax", "ap", "as", "bx", "bp", "bs", "c", "z"}, "minuteBar", "dailyBar",
  "prevDailyBar"}`` (each part may be null). bid/ask are ``latestQuote.bp``/``.ap``; ``last`` is
  ``latestTrade.p`` (``None`` when Alpaca reports no trade); ``timestamp`` is the newer of ``latestQuote.t``
  and ``latestTrade.t`` — the time of the most recent event the answer reflects. One request per cache miss
  keeps the provider's rate budget to one unit per quote, and a half-open breaker's single trial is that
  request. No ``latestQuote`` (no bid/ask to give) is answered like an unknown symbol.
* Bars: ``GET /v2/stocks/{symbol}/bars?timeframe=&start=&end=&limit=&page_token=`` →
  ``{"symbol", "bars": [{"t", "o", "h", "l", "c", "v", "n", "vw"}] | null, "next_page_token": str | null}``;
  pages are followed until ``limit`` bars or no token, all under one deadline. Alpaca returns the bars whose
  start ``t`` lies in ``[start, end]``. Its grid (``grid``): 1Min/5Min/1Hour bars start on UTC epoch
  multiples (New York's offset is whole hours), a **daily bar at 00:00 America/New_York** (``t`` 05:00Z in
  winter, 04:00Z in summer) — so the 1Day grid is New York midnight, not UTC midnight: rounding ``start`` up
  to UTC midnight would drop the first day's bar.

Credentials go in ``APCA-API-KEY-ID`` / ``APCA-API-SECRET-KEY`` headers set on the client (never logged).
Numbers are parsed straight to ``Decimal`` (no binary floats). Alpaca's 404 / 422 "not found / invalid
symbol" answers become our 404; any other 4xx (401/403: our credentials are wrong) is logged as an error and
treated as an outage (stale copy or 503: the client did nothing wrong); anything unparseable is an
``UpstreamBadResponse``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from app.core.errors import NotFound
from app.core.http import OutboundClient, UpstreamBadResponse, UpstreamError, UpstreamTimeout
from app.providers.market_data.base import (
    EPOCH_GRIDS,
    Bar,
    BarsQuery,
    Grid,
    MidnightGrid,
    Quote,
    Timeframe,
    iso,
)

log = logging.getLogger("tradedesk.market_data")

PROVIDER = "alpaca-data"
MAX_PAGE = 10_000  # Alpaca's largest page
MAX_PAGES = 50  # a provider that keeps sending tokens with empty pages cannot loop us for ever
DAILY_GRID = MidnightGrid(ZoneInfo("America/New_York"))  # where Alpaca stamps a stock's daily bar


class AlpacaMarketData:
    name = "alpaca"

    def __init__(self, client: OutboundClient) -> None:
        self.client = client

    def grid(self, timeframe: Timeframe) -> Grid:
        return DAILY_GRID if timeframe is Timeframe.DAY_1 else EPOCH_GRIDS[timeframe]

    # ------------------------------------------------------------------ quotes
    async def latest_quote(self, symbol: str) -> Quote:
        ends_at = time.monotonic() + self.client.deadline
        body = await self._get_json(f"/v2/stocks/{symbol}/snapshot", symbol, ends_at)
        quote = body.get("latestQuote")
        if not isinstance(quote, dict) or quote.get("bp") is None or quote.get("ap") is None:
            raise NotFound(f"No quote for {symbol}.")
        timestamp = _time(quote.get("t"), "latestQuote.t")
        last: Decimal | None = None
        trade = body.get("latestTrade")
        if isinstance(trade, dict) and trade.get("p") is not None:
            last = _decimal(trade["p"], "latestTrade.p")
            timestamp = max(timestamp, _time(trade.get("t"), "latestTrade.t"))
        return Quote(
            symbol=symbol,
            bid=_decimal(quote["bp"], "latestQuote.bp"),
            ask=_decimal(quote["ap"], "latestQuote.ap"),
            last=last,
            timestamp=timestamp,
        )

    # ------------------------------------------------------------------ bars
    async def bars(self, query: BarsQuery) -> list[Bar]:
        ends_at = time.monotonic() + self.client.deadline
        out: list[Bar] = []
        token: str | None = None
        for _ in range(MAX_PAGES):
            params: dict[str, Any] = {
                "timeframe": query.timeframe.value,
                "start": iso(query.start),
                "end": iso(query.end),
                "limit": min(MAX_PAGE, query.limit - len(out)),
            }
            if token:
                params["page_token"] = token
            body = await self._get_json(
                f"/v2/stocks/{query.symbol}/bars", query.symbol, ends_at, params=params
            )
            page = body.get("bars") or []
            if not isinstance(page, list):
                raise UpstreamBadResponse(self.client.provider, "bars is not a list")
            for raw in page:
                out.append(_bar(raw))
                if len(out) >= query.limit:
                    return out
            token = body.get("next_page_token")
            if not token:
                return out
        log.warning("bars pagination stopped at the page cap", extra={"pages": MAX_PAGES, "bars": len(out)})
        return out

    async def aclose(self) -> None:
        return None  # the client belongs to app.core.http.Outbound, which closes it

    # ------------------------------------------------------------------ plumbing
    async def _get_json(
        self, path: str, symbol: str, ends_at: float, *, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        remaining = ends_at - time.monotonic()
        if remaining <= 0:
            raise UpstreamTimeout(self.client.provider, seconds=self.client.deadline)
        response = await self.client.get(path, params=params, deadline=remaining)
        status = response.status_code
        if status == 404 or (status in (400, 422) and "symbol" in _reason(response).lower()):
            raise NotFound(f"The market-data provider knows no symbol {symbol}.")
        if status >= 400:
            # Our credentials or our request were refused: nothing the client can fix. Logged loudly; answered
            # like an outage (a stale copy if there is one, else 503) so operators, not users, act on it.
            log.error(
                "alpaca market data refused a request",
                extra={"status": status, "reason": _reason(response), "path_kind": path.rsplit("/", 1)[-1]},
            )
            raise UpstreamError(
                self.client.provider,
                "The market-data provider refused the request; retry later.",
                retry_after=60,
            )
        try:
            body = json.loads(response.content, parse_float=Decimal)
        except ValueError:
            raise UpstreamBadResponse(self.client.provider, "not JSON") from None
        if not isinstance(body, dict):
            raise UpstreamBadResponse(self.client.provider, "not a JSON object")
        return body


def _reason(response: httpx.Response) -> str:
    try:
        message = response.json().get("message", "")
    except (ValueError, AttributeError):
        message = ""
    return str(message)[:200]


def _decimal(value: Any, field: str) -> Decimal:
    if isinstance(value, bool) or value is None:
        raise UpstreamBadResponse(PROVIDER, f"{field} is not a number")
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise UpstreamBadResponse(PROVIDER, f"{field} is not a number") from None
    if not number.is_finite() or number < 0:
        raise UpstreamBadResponse(PROVIDER, f"{field} is not a valid amount")
    return number


def _time(value: Any, field: str) -> dt.datetime:
    if not isinstance(value, str):
        raise UpstreamBadResponse(PROVIDER, f"{field} is not a timestamp")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise UpstreamBadResponse(PROVIDER, f"{field} is not a timestamp") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def _bar(raw: Any) -> Bar:
    if not isinstance(raw, dict):
        raise UpstreamBadResponse(PROVIDER, "a bar is not an object")
    return Bar(
        t=_time(raw.get("t"), "bar.t"),
        o=_decimal(raw.get("o"), "bar.o"),
        h=_decimal(raw.get("h"), "bar.h"),
        l=_decimal(raw.get("l"), "bar.l"),
        c=_decimal(raw.get("c"), "bar.c"),
        v=_decimal(raw.get("v"), "bar.v"),
    )
