"""Market data is reached through MarketDataDep, so a test can swap the provider with dependency_overrides."""

from __future__ import annotations

from app.market.deps import get_market_data
from app.providers.market_data import MarketData
from app.providers.market_data.cache import MarketDataCache
from app.providers.market_data.synthetic import SyntheticProvider

FROZEN = 1_700_000_000.0  # 2023-11-14T22:13:20Z


async def test_market_data_provider_is_swapped_through_dependency_overrides(make_client) -> None:
    provider = SyntheticProvider(clock=lambda: FROZEN)  # a provider whose clock the test owns
    swapped = MarketData(
        provider=provider,
        cache=MarketDataCache(
            namespace="test:override", provider="synthetic", fresh_seconds=60, fetch_timeout=1
        ),
    )

    async def market_data() -> MarketData:
        return swapped

    client = await make_client(
        app_hook=lambda app: app.dependency_overrides.update({get_market_data: market_data})
    )
    first = await client.get("/v1/market-data/quotes/AAPL")
    assert first.status_code == 200, first.text
    assert first.json()["timestamp"].startswith("2023-11-14T22:13:20")  # the swapped provider answered
    assert first.headers["x-cache"] == "MISS"
    assert (await client.get("/v1/market-data/quotes/AAPL")).headers["x-cache"] == "HIT"  # through its cache
