"""Market data: one Protocol (``base``), a deterministic generator (``synthetic``, the default), Alpaca
Market Data v2 (``alpaca``) and the cache in front of either (``cache``). Built once in the lifespan."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from app.core.config import Settings
from app.core.http import Outbound
from app.providers.market_data.alpaca import PROVIDER as ALPACA_PROVIDER
from app.providers.market_data.alpaca import AlpacaMarketData
from app.providers.market_data.base import MarketDataProvider
from app.providers.market_data.cache import CacheStatus, MarketDataCache
from app.providers.market_data.synthetic import SyntheticProvider

__all__ = ["CacheStatus", "MarketData", "MarketDataProvider", "build_market_data"]

log = logging.getLogger("tradedesk.market_data")

SYNTHETIC_FETCH_SECONDS = 5.0  # bound on a synthetic fetch (CPU only) for the cross-process lock


@dataclass(frozen=True, slots=True)
class MarketData:
    provider: MarketDataProvider
    cache: MarketDataCache

    async def aclose(self) -> None:
        await self.provider.aclose()


def build_market_data(settings: Settings, outbound: Outbound, redis: Any | None) -> MarketData:
    """The provider chosen by MARKET_DATA_PROVIDER, behind the cache (Redis-backed when configured)."""
    provider: MarketDataProvider
    if settings.market_data_provider == "alpaca":
        headers: dict[str, str] = {}
        if settings.alpaca_api_key_id and settings.alpaca_api_secret_key:
            headers["APCA-API-KEY-ID"] = settings.alpaca_api_key_id
            headers["APCA-API-SECRET-KEY"] = settings.alpaca_api_secret_key.get_secret_value()
        else:
            log.warning(
                "MARKET_DATA_PROVIDER=alpaca without ALPACA_API_KEY_ID/ALPACA_API_SECRET_KEY: "
                "Alpaca will refuse the calls and market data will answer 503"
            )
        client = outbound.create(ALPACA_PROVIDER, base_url=settings.alpaca_data_base_url, headers=headers)
        provider = AlpacaMarketData(client)
        fetch_seconds = client.deadline
    else:
        provider = SyntheticProvider()
        fetch_seconds = SYNTHETIC_FETCH_SECONDS
    cache = MarketDataCache(
        namespace=f"tradedesk:md:{provider.name}",
        provider=provider.name,
        fresh_seconds=settings.market_data_cache_seconds,
        fetch_timeout=fetch_seconds,
        redis=redis,
    )
    return MarketData(provider=provider, cache=cache)
