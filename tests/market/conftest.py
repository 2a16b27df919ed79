"""Market-data fixtures: a loopback fake of Alpaca Market Data v2 and apps pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from tests.outbound.fake_provider import FakeProvider, serve_alpaca

ALPACA_KEY_ID = "test-key-id"
ALPACA_SECRET = "test-secret-key"


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    provider = serve_alpaca(await FakeProvider().start())
    yield provider
    await provider.stop()


@pytest.fixture
def alpaca_app(make_client, fake: FakeProvider) -> Callable[..., Awaitable[httpx.AsyncClient]]:
    """An app with MARKET_DATA_PROVIDER=alpaca and ALPACA_DATA_BASE_URL at the fake (small timeouts)."""

    async def factory(**overrides: Any) -> httpx.AsyncClient:
        settings: dict[str, Any] = {
            "market_data_provider": "alpaca",
            "alpaca_data_base_url": fake.url,
            "alpaca_api_key_id": ALPACA_KEY_ID,
            "alpaca_api_secret_key": ALPACA_SECRET,
            "http_timeout_seconds": 1,
            "breaker_fail_max": 3,
            "breaker_reset_seconds": 1,
            **overrides,
        }
        return await make_client(**settings)

    return factory
