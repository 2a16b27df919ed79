"""Broker providers: the ``BrokerProvider`` Protocol and its values (``base``) and the live Alpaca
implementation (``alpaca``). ``build_broker`` picks one from ``BROKER_PROVIDER`` once, at startup."""

from __future__ import annotations

from app.core.config import Settings
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
    "TimeInForce",
    "build_broker",
]


def build_broker(settings: Settings, outbound: Outbound) -> BrokerProvider | None:
    """The broker BROKER_PROVIDER names: ``AlpacaBroker`` for ``alpaca`` (its own client and breaker,
    deadline BROKER_TIMEOUT_SECONDS); ``None`` for ``paper`` until the paper simulator, persisted in
    PostgreSQL, arrives with the orders feature and its migrations."""
    if settings.broker_provider == "alpaca":
        client = outbound.create(
            ALPACA_PROVIDER, base_url=settings.alpaca_api_base_url, timeout=settings.broker_timeout_seconds
        )
        return AlpacaBroker(client)
    return None
