"""The broker interface the orders feature is written against, and the values and errors it deals in.

Why a Protocol: the orders feature (and its reconciler) must not know whether orders go to Alpaca or to
the local paper simulator; both implement ``BrokerProvider`` and one is chosen from ``BROKER_PROVIDER`` at
startup (``app.providers.broker.build_broker``). A provider is built once and shared by every user: it
holds no per-user state, so every call takes the user's OAuth access token.

Money and quantities are ``Decimal`` end to end (never binary floats); times are timezone-aware UTC.

**Outcome classification** (NautilusTrader's execution idea: never guess what the venue did). Every call
ends in exactly one of:

* **a definitive answer** — the return value: a ``BrokerOrder``, ``None`` for "the broker knows no such
  order" (a 404 on a lookup is an answer, not an error), ``True``/``False`` for a cancel;
* **a definitive refusal** — ``BrokerRejected(reason, status, code)``: the broker answered 4xx and did not
  act (insufficient buying power, unknown symbol, order no longer cancelable, token revoked ...);
* **nothing was sent** — an ``UpstreamError`` from ``app.core.http`` whose ``maybe_sent`` is False,
  raised unchanged: ``CircuitOpenError`` (breaker open, no network touched), ``UpstreamConnectError`` or
  ``UpstreamTimeout`` that failed before a byte left (connect refused, DNS, connect or pool timeout);
* **unknown outcome** — ``BrokerOutcomeUnknown``: the request may have reached the broker and we do not
  know what it did (timeout after sending, 5xx, connection reset mid-call, 429, an unreadable answer).
  The orders feature reports it as ``pending_reconciliation`` and the reconciler looks the order up by
  ``client_order_id`` later.

``BrokerOutcomeUnknown`` is itself an ``UpstreamError`` with ``maybe_sent = True``, so a caller that only
tests ``exc.maybe_sent`` on ``UpstreamError`` still classifies correctly; unhandled, it answers 503.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol, runtime_checkable

from app.core.errors import Unprocessable
from app.core.http import UpstreamError

log = logging.getLogger("tradedesk.broker")

# Alpaca's code for "client_order_id must be unique"; the paper broker answers a conflicting reuse with it too.
DUPLICATE_CLIENT_ORDER_ID = 40010001

__all__ = [
    "MAX_CLIENT_ORDER_ID_LENGTH",
    "BrokerOrder",
    "BrokerOrderStatus",
    "BrokerOutcomeUnknown",
    "BrokerProvider",
    "BrokerRejected",
    "OrderRequest",
    "OrderSide",
    "OrderType",
    "TimeInForce",
]

MAX_CLIENT_ORDER_ID_LENGTH = 48  # Alpaca's limit; the orders feature derives one per (user, Idempotency-Key)


class OrderSide(enum.StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderType(enum.StrEnum):
    MARKET = "market"
    LIMIT = "limit"


class TimeInForce(enum.StrEnum):
    DAY = "day"
    GTC = "gtc"
    IOC = "ioc"
    FOK = "fok"


class BrokerOrderStatus(enum.StrEnum):
    """A broker's order state, normalised to the few states the orders feature acts on."""

    ACCEPTED = "accepted"  # the broker has it; not yet working at a venue
    NEW = "new"  # working, nothing filled
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    PENDING_CANCEL = "pending_cancel"  # a cancel was requested; it may still fill
    CANCELED = "canceled"
    EXPIRED = "expired"
    REJECTED = "rejected"
    REPLACED = "replaced"  # superseded by another broker order (a replace or a corporate action)

    @property
    def is_terminal(self) -> bool:
        """True when this order will not change any more (no further fills)."""
        return self in _TERMINAL


_TERMINAL = frozenset(
    {
        BrokerOrderStatus.FILLED,
        BrokerOrderStatus.CANCELED,
        BrokerOrderStatus.EXPIRED,
        BrokerOrderStatus.REJECTED,
        BrokerOrderStatus.REPLACED,
    }
)


def _positive(value: object, field: str) -> None:
    if not isinstance(value, Decimal):
        raise TypeError(f"{field} must be a Decimal, not {type(value).__name__}")
    if not value.is_finite() or value <= 0:
        raise ValueError(f"{field} must be a positive finite amount")


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """One order to send. ``client_order_id`` is the same on every retry of one (user, Idempotency-Key)."""

    symbol: str
    qty: Decimal
    side: OrderSide
    type: OrderType
    time_in_force: TimeInForce
    client_order_id: str
    limit_price: Decimal | None = None

    def __post_init__(self) -> None:
        if not self.symbol:
            raise ValueError("symbol must not be empty")
        _positive(self.qty, "qty")
        if not 0 < len(self.client_order_id) <= MAX_CLIENT_ORDER_ID_LENGTH:
            raise ValueError(f"client_order_id must be 1-{MAX_CLIENT_ORDER_ID_LENGTH} characters")
        if self.type is OrderType.LIMIT:
            _positive(self.limit_price, "limit_price")
        elif self.limit_price is not None:
            raise ValueError("limit_price is only for limit orders")


@dataclass(frozen=True, slots=True)
class BrokerOrder:
    """An order as the broker reports it. ``raw_status`` is the broker's own word, kept for audit."""

    broker_order_id: str
    client_order_id: str
    status: BrokerOrderStatus
    raw_status: str
    symbol: str
    qty: Decimal
    side: OrderSide
    type: OrderType
    time_in_force: TimeInForce
    limit_price: Decimal | None
    filled_qty: Decimal
    filled_avg_price: Decimal | None
    created_at: dt.datetime
    submitted_at: dt.datetime | None
    updated_at: dt.datetime | None


class BrokerRejected(Unprocessable):
    """The broker answered and refused (4xx): it did not act. ``status_code`` is the broker's HTTP status
    and ``code`` its error code when it sent one; the error itself renders 422 with the reason."""

    slug = "broker-rejected"

    def __init__(self, reason: str, status: int, *, code: int | None = None) -> None:
        self.reason = reason
        self.status_code = status
        self.code = code
        super().__init__(f"The broker rejected the request: {reason}")


class BrokerOutcomeUnknown(UpstreamError):
    """The request may have reached the broker and its effect is unknown: reconcile, never assume."""

    slug = "broker-outcome-unknown"
    outcome = "unknown"
    maybe_sent = True

    def __init__(self, provider: str, reason: str, *, retry_after: float = 1.0) -> None:
        self.reason = reason
        super().__init__(
            provider,
            f"The broker did not confirm the outcome ({reason}); it will be reconciled.",
            retry_after=retry_after,
        )


def adopt_existing(existing: BrokerOrder, wanted: OrderRequest, *, provider: str) -> BrokerOrder:
    """The order already placed under ``wanted.client_order_id``, if it is the same order; a different one
    under that id is ``BrokerRejected`` (the id is spent, as on Alpaca, even after a cancel)."""
    same = (
        existing.symbol.upper() == wanted.symbol.upper()
        and existing.side is wanted.side
        and existing.type is wanted.type
        and existing.time_in_force is wanted.time_in_force
        and existing.qty == wanted.qty
        and existing.limit_price == wanted.limit_price
    )
    if not same:
        raise BrokerRejected(
            "client_order_id is already used by a different order", 422, code=DUPLICATE_CLIENT_ORDER_ID
        )
    log.info(
        "adopted an existing broker order",
        extra={"provider": provider, "broker_order_id": existing.broker_order_id},
    )
    return existing


@runtime_checkable
class BrokerProvider(Protocol):
    """Orders at one broker, on behalf of whichever user's ``access_token`` is passed.

    Each method returns the broker's definitive answer or raises ``BrokerRejected``,
    ``BrokerOutcomeUnknown`` or a not-sent ``UpstreamError`` (see the module docstring)."""

    name: str

    async def submit_order(self, *, access_token: str, order: OrderRequest) -> BrokerOrder:
        """Place ``order``; an order that already exists under its client_order_id is returned (adopted)."""
        ...

    async def get_order_by_client_order_id(
        self, *, access_token: str, client_order_id: str
    ) -> BrokerOrder | None:
        """The order sent under ``client_order_id``, or None if the broker knows none (reconciliation)."""
        ...

    async def get_order(self, *, access_token: str, broker_order_id: str) -> BrokerOrder | None:
        """The order with the broker's id, or None if the broker knows none."""
        ...

    async def cancel_order(self, *, access_token: str, broker_order_id: str) -> bool:
        """Ask the broker to cancel; True when it accepted the request, False when it knows no such order."""
        ...
