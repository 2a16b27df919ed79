"""GET /v1/market-data/quotes/{symbol} and /bars/{symbol}: no login; X-Cache: HIT|MISS|STALE (also on a
404 for an unknown symbol: HIT when it came from the cached "not found")."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from app.market import service
from app.market.deps import MarketDataDep
from app.market.schemas import (
    DEFAULT_BARS_LIMIT,
    BarsOut,
    EndQuery,
    LimitQuery,
    QuoteOut,
    StartQuery,
    Symbol,
    TimeframeQuery,
)
from app.providers.market_data.base import Timeframe

router = APIRouter(prefix="/market-data", tags=["market data"])


_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {
        "headers": {
            "X-Cache": {
                "description": "HIT, MISS or STALE (provider failing; cached copy served)",
                "schema": {"type": "string"},
            }
        }
    },
    404: {"description": "The provider knows no such symbol (cached for a minute)"},
    422: {"description": "Invalid symbol, timeframe, start/end (1970-01-01 to now + 1 day) or limit"},
    503: {"description": "Provider unavailable and no cached copy (with Retry-After)"},
}


@router.get("/quotes/{symbol}", response_model=QuoteOut, responses=_RESPONSES, summary="Latest quote")
async def get_quote(symbol: Symbol, market: MarketDataDep) -> JSONResponse:
    value, status = await service.get_quote(market=market, symbol=symbol)
    # The value is built by quote_to_json in exactly QuoteOut's shape; skip re-validating it per request.
    return JSONResponse(value, headers={"X-Cache": status.value})


@router.get("/bars/{symbol}", response_model=BarsOut, responses=_RESPONSES, summary="Historical bars")
async def get_bars(
    symbol: Symbol,
    market: MarketDataDep,
    timeframe: TimeframeQuery = Timeframe.DAY_1,
    start: StartQuery = None,
    end: EndQuery = None,
    limit: LimitQuery = DEFAULT_BARS_LIMIT,
) -> Response:
    body, status = await service.get_bars(
        market=market, symbol=symbol, timeframe=timeframe, start=start, end=end, limit=limit
    )
    # The body is built once per upstream fetch (off the event loop when large) and cached as is.
    return Response(body, media_type="application/json", headers={"X-Cache": status.value})
