"""Broker providers: the ``BrokerProvider`` Protocol and its values (``base``), the live Alpaca
implementation (``alpaca``) and the paper simulator (``paper``, persisted in PostgreSQL).
``build_broker`` picks one from ``BROKER_PROVIDER`` once, at startup."""

from __future__ import annotations

from app.core.config import Settings
from app.core.db import Database
from app.core.http import Outbound
from app.providers.broker.alpaca import PROVIDER as ALPACA_PROVIDER
from app.providers.broker.alpaca import AlpacaBroker
from app.providers.broker.base import (
    BrokerOrder,
    BrokerOrderStatus,
    BrokerOutcomeUnknown,
    BrokerProvider,
    BrokerRejected,
    OrderRequest,
    OrderSide,
    OrderType,
    TimeInForce,
)
from app.providers.broker.paper import PaperBroker
from app.providers.market_data import MarketData

__all__ = [
    "AlpacaBroker",
    "BrokerOrder",
    "BrokerOrderStatus",
    "BrokerOutcomeUnknown",
    "BrokerProvider",
    "BrokerRejected",
    "OrderRequest",
    "OrderSide",
    "OrderType",
    "PaperBroker",
    "TimeInForce",
    "build_broker",
]


def build_broker(
    settings: Settings,
    outbound: Outbound,
    *,
    database: Database | None = None,
    market_data: MarketData | None = None,
) -> BrokerProvider:
    """The broker BROKER_PROVIDER names: ``AlpacaBroker`` for ``alpaca`` (its own client and breaker,
    deadline BROKER_TIMEOUT_SECONDS); ``PaperBroker`` for ``paper``, over the process's ``database`` and
    ``market_data``'s provider (both required then: the lifespan builds the broker after them)."""
    if settings.broker_provider == "alpaca":
        client = outbound.create(
            ALPACA_PROVIDER, base_url=settings.alpaca_api_base_url, timeout=settings.broker_timeout_seconds
        )
        return AlpacaBroker(client)
    if database is None or market_data is None:
        raise ValueError("BROKER_PROVIDER=paper needs build_broker(..., database=..., market_data=...)")
    return PaperBroker(database, market_data.provider)
