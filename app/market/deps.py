"""Market data's dependency: the provider-behind-cache built once in the lifespan."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.providers.market_data import MarketData


async def get_market_data(request: Request) -> MarketData:
    # async: a plain `def` dependency would cost a thread-pool hop on every request
    market: MarketData = request.app.state.market_data
    return market


MarketDataDep = Annotated[MarketData, Depends(get_market_data)]
