"""Alpaca Trading API v2 orders, sent with the user's OAuth token through the shared outbound layer.

Why this module and not alpaca-py: that SDK has no timeouts and re-sends an order POST on a 504, which can
hide (or duplicate) an order. Here every call goes through ``app.core.http`` (total deadline
``BROKER_TIMEOUT_SECONDS``, circuit breaker ``alpaca-trading``, metrics) and every failure is classified as
``app.providers.broker.base`` describes.

Endpoints (the token goes in ``Authorization: Bearer …`` on each request; the shared client holds none):

* ``POST /v2/orders`` ``{symbol, qty, side, type, time_in_force, limit_price?, client_order_id}``, amounts as
  decimal strings → the order;
* ``GET /v2/orders:by_client_order_id?client_order_id=…`` and ``GET /v2/orders/{id}`` → the order, or 404;
* ``DELETE /v2/orders/{id}`` → 204 (cancel requested), 404 (no such order), 422 (no longer cancelable).

**No blind retry of a side effect.** The POST and the DELETE are sent with ``idempotent=False``: one
attempt, never retried by the outbound layer. Alpaca dedups by ``client_order_id``, so a retried POST could
not create a second order — but the layer reports only the *last* attempt: a first attempt answered 504
(order perhaps placed) followed by a refused connection would surface as "nothing sent", and the orders
feature would mark rejected an order that exists. A retried DELETE could likewise turn a cancel that
worked into a 422 "not cancelable". One attempt keeps the outcome honest; the orders feature (same
``client_order_id`` on every retry of a key) and the reconciler retry instead. GETs have no effect and are
retried by the layer (connection failures, 502/503/504/429).

**Duplicates.** A 422 ``{"code": 40010001, "message": "client_order_id must be unique"}`` means an order
under our ``client_order_id`` already exists (an earlier attempt whose answer was lost): it is looked up and
returned — adopted — within what is left of the deadline. It must match the request (symbol, side, qty,
type, time in force, limit price), else ``BrokerRejected``: the id was used for another order. The order
exists, so any failure of that lookup is ``BrokerOutcomeUnknown``, never "nothing sent".

**"Not found"** is a 404 whose body is a JSON object (Alpaca's ``{"code", "message"}``). A 404 without one
(a proxy's page, a wrong base URL) proves nothing about the order and is an unknown outcome: otherwise the
reconciler would reject orders the broker does have.

**Status mapping** (Alpaca's documented order statuses → ``BrokerOrderStatus``, in ``STATUS_MAP``):

* ``accepted``, ``pending_new``, ``accepted_for_bidding``, ``pending_review``, ``held`` → ``accepted``;
* ``new``, ``partially_filled``, ``filled``, ``pending_cancel``, ``canceled``, ``expired``, ``rejected``,
  ``replaced`` → the status of the same name;
* ``done_for_day``, ``calculated``, ``stopped``, ``suspended``, ``pending_replace`` (``STATUS_FROM_FILL``),
  and any status Alpaca adds later (logged) → read from the fill: ``new`` when nothing is filled,
  ``partially_filled``, or ``filled`` once ``filled_qty`` reaches ``qty``.

The last group holds the statuses that say nothing about the fill (a day's pause, settlement pending, a
guaranteed price, a trading halt, a replace in progress): none ends the order by itself (only a complete
fill does), so the reconciler keeps watching them. The broker's word is kept in ``BrokerOrder.raw_status``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import time
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

import httpx

from app.core.http import OutboundClient, UpstreamError, UpstreamStatusError
from app.providers.broker.base import (
    DUPLICATE_CLIENT_ORDER_ID,
    BrokerOrder,
    BrokerOrderStatus,
    BrokerOutcomeUnknown,
    BrokerRejected,
    OrderRequest,
    OrderSide,
    OrderType,
    TimeInForce,
    adopt_existing,
)

log = logging.getLogger("tradedesk.broker")

PROVIDER = "alpaca-trading"
MAX_REASON_CHARS = 300
_ORDER_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # Alpaca order ids are UUIDs
_E = TypeVar("_E", OrderSide, OrderType, TimeInForce)

S = BrokerOrderStatus
STATUS_MAP: dict[str, BrokerOrderStatus] = {
    "accepted": S.ACCEPTED,
    "pending_new": S.ACCEPTED,
    "accepted_for_bidding": S.ACCEPTED,
    "pending_review": S.ACCEPTED,
    "held": S.ACCEPTED,
    "new": S.NEW,
    "partially_filled": S.PARTIALLY_FILLED,
    "filled": S.FILLED,
    "pending_cancel": S.PENDING_CANCEL,
    "canceled": S.CANCELED,
    "expired": S.EXPIRED,
    "rejected": S.REJECTED,
    "replaced": S.REPLACED,
}
# Open states that say nothing about the fill: read from filled_qty instead.
STATUS_FROM_FILL = frozenset({"done_for_day", "calculated", "stopped", "suspended", "pending_replace"})


class AlpacaBroker:
    """``BrokerProvider`` for Alpaca; one instance for all users, over the ``alpaca-trading`` client."""

    name = "alpaca"

    def __init__(self, client: OutboundClient) -> None:
        self.client = client

    async def submit_order(self, *, access_token: str, order: OrderRequest) -> BrokerOrder:
        """Place ``order`` (one attempt); a duplicate client_order_id adopts the existing order."""
        ends_at = time.monotonic() + self.client.deadline
        response = await self._send(
            "POST", "/v2/orders", access_token, json=_order_body(order), idempotent=False
        )
        if response.is_success:
            placed = self._read_order(response)
            if placed.client_order_id != order.client_order_id:
                raise BrokerOutcomeUnknown(PROVIDER, "the answer names another client_order_id")
            return placed
        if _is_duplicate(response):
            return await self._adopt(access_token, order, ends_at)
        raise self._failure(response)

    async def get_order_by_client_order_id(
        self, *, access_token: str, client_order_id: str
    ) -> BrokerOrder | None:
        """The order sent under ``client_order_id``, or None when Alpaca knows none."""
        return await self._lookup(access_token, client_order_id, deadline=None)

    async def get_order(self, *, access_token: str, broker_order_id: str) -> BrokerOrder | None:
        """The order with Alpaca's id, or None when Alpaca knows none."""
        response = await self._send("GET", f"/v2/orders/{_order_id(broker_order_id)}", access_token)
        if _is_not_found(response):
            return None
        if not response.is_success:
            raise self._failure(response)
        found = self._read_order(response)
        if found.broker_order_id != broker_order_id:
            raise BrokerOutcomeUnknown(PROVIDER, "the answer names another order id")
        return found

    async def cancel_order(self, *, access_token: str, broker_order_id: str) -> bool:
        """Request a cancel (one attempt): True when accepted, False when Alpaca knows no such order."""
        response = await self._send(
            "DELETE", f"/v2/orders/{_order_id(broker_order_id)}", access_token, idempotent=False
        )
        if response.is_success:
            return True
        if _is_not_found(response):
            return False
        raise self._failure(response)

    # ------------------------------------------------------------------ plumbing
    async def _lookup(
        self, access_token: str, client_order_id: str, *, deadline: float | None
    ) -> BrokerOrder | None:
        response = await self._send(
            "GET",
            "/v2/orders:by_client_order_id",
            access_token,
            params={"client_order_id": client_order_id},
            deadline=deadline,
        )
        if _is_not_found(response):
            return None
        if not response.is_success:
            raise self._failure(response)
        found = self._read_order(response)
        if found.client_order_id != client_order_id:
            raise BrokerOutcomeUnknown(PROVIDER, "the answer names another client_order_id")
        return found

    async def _adopt(self, access_token: str, order: OrderRequest, ends_at: float) -> BrokerOrder:
        remaining = ends_at - time.monotonic()
        if remaining <= 0:
            raise BrokerOutcomeUnknown(PROVIDER, "duplicate client_order_id, no time left to look it up")
        try:
            existing = await self._lookup(access_token, order.client_order_id, deadline=remaining)
        except (UpstreamError, BrokerRejected) as exc:
            # The broker said the order exists: failing to read it leaves its state unknown, not unsent.
            raise BrokerOutcomeUnknown(
                PROVIDER,
                "duplicate client_order_id, lookup failed",
                retry_after=getattr(exc, "retry_after", 1.0),
            ) from exc
        if existing is None:
            raise BrokerOutcomeUnknown(PROVIDER, "duplicate client_order_id the broker cannot find")
        return adopt_existing(existing, order, provider=PROVIDER)

    async def _send(self, method: str, path: str, access_token: str, **kwargs: Any) -> httpx.Response:
        """One call; an error that may have reached Alpaca becomes BrokerOutcomeUnknown, a not-sent one passes."""
        try:
            return await self.client.request(
                method, path, headers={"Authorization": f"Bearer {access_token}"}, **kwargs
            )
        except UpstreamError as exc:
            if not exc.maybe_sent:
                raise  # breaker open, or the connection failed before a byte left: nothing happened
            reason = f"HTTP {exc.status_code}" if isinstance(exc, UpstreamStatusError) else exc.outcome
            raise BrokerOutcomeUnknown(
                PROVIDER, reason.replace("_", " "), retry_after=exc.retry_after
            ) from exc

    def _read_order(self, response: httpx.Response) -> BrokerOrder:
        try:
            return parse_order(_json(response))
        except ValueError as exc:
            raise BrokerOutcomeUnknown(PROVIDER, f"unreadable order ({exc})") from exc

    def _failure(self, response: httpx.Response) -> Exception:
        """What a non-success answer that is not a duplicate or a JSON 404 means."""
        status = response.status_code
        if status == 404 and not _is_not_found(response):
            return BrokerOutcomeUnknown(PROVIDER, "HTTP 404 without the broker's error body")
        if 400 <= status < 500:
            code, message = _error_body(response)
            return BrokerRejected(message or f"HTTP {status}", status, code=code)
        return BrokerOutcomeUnknown(PROVIDER, f"unexpected HTTP {status}")


# ---------------------------------------------------------------------- request and answer shapes
def _decimal_text(value: Decimal) -> str:
    return format(value, "f")  # never exponent notation: Decimal("1E+2") -> "100"


def _order_body(order: OrderRequest) -> dict[str, str]:
    body = {
        "symbol": order.symbol,
        "qty": _decimal_text(order.qty),
        "side": order.side.value,
        "type": order.type.value,
        "time_in_force": order.time_in_force.value,
        "client_order_id": order.client_order_id,
    }
    if order.limit_price is not None:
        body["limit_price"] = _decimal_text(order.limit_price)
    return body


def _order_id(value: str) -> str:
    if not _ORDER_ID.fullmatch(value):
        raise ValueError("not a broker order id")
    return value


def _json(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content, parse_float=Decimal)
    except ValueError:
        raise ValueError("not JSON") from None


def _error_body(response: httpx.Response) -> tuple[int | None, str]:
    try:
        body = _json(response)
    except ValueError:
        return None, ""
    if not isinstance(body, dict):
        return None, ""
    code = body.get("code")
    message = body.get("message")
    return (
        code if isinstance(code, int) and not isinstance(code, bool) else None,
        str(message)[:MAX_REASON_CHARS] if message else "",
    )


def _is_duplicate(response: httpx.Response) -> bool:
    if response.status_code != 422:
        return False
    code, message = _error_body(response)
    return code == DUPLICATE_CLIENT_ORDER_ID or "client_order_id must be unique" in message.lower()


def _is_not_found(response: httpx.Response) -> bool:
    if response.status_code != 404:
        return False
    try:
        return isinstance(_json(response), dict)
    except ValueError:
        return False


def map_status(raw: str, *, filled_qty: Decimal, qty: Decimal) -> BrokerOrderStatus:
    """Alpaca's order status as a ``BrokerOrderStatus`` (the table in the module docstring)."""
    known = STATUS_MAP.get(raw)
    if known is not None:
        return known
    if raw not in STATUS_FROM_FILL:
        log.warning("unknown Alpaca order status, read from the fill", extra={"status": raw[:40]})
    if filled_qty <= 0:
        return S.NEW
    return S.FILLED if filled_qty >= qty else S.PARTIALLY_FILLED


def parse_order(body: Any) -> BrokerOrder:
    """Alpaca's order JSON as a ``BrokerOrder``; ``ValueError`` when it is not a usable order."""
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    qty = _amount(body.get("qty"), "qty")
    filled_qty = _amount(body.get("filled_qty") or "0", "filled_qty", zero=True)
    raw_status = _text(body.get("status"), "status")
    return BrokerOrder(
        broker_order_id=_text(body.get("id"), "id"),
        client_order_id=_text(body.get("client_order_id"), "client_order_id"),
        status=map_status(raw_status, filled_qty=filled_qty, qty=qty),
        raw_status=raw_status,
        symbol=_text(body.get("symbol"), "symbol"),
        qty=qty,
        side=_choice(OrderSide, body.get("side"), "side"),
        type=_choice(OrderType, body.get("type") or body.get("order_type"), "type"),
        time_in_force=_choice(TimeInForce, body.get("time_in_force"), "time_in_force"),
        limit_price=_optional_amount(body.get("limit_price"), "limit_price"),
        filled_qty=filled_qty,
        filled_avg_price=_optional_amount(body.get("filled_avg_price"), "filled_avg_price"),
        created_at=_time(body.get("created_at"), "created_at"),
        submitted_at=_optional_time(body.get("submitted_at"), "submitted_at"),
        updated_at=_optional_time(body.get("updated_at"), "updated_at"),
    )


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field} is missing")
    return value


def _choice(kind: type[_E], value: Any, field: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{field} {str(value)[:20]!r} is not supported") from None


def _amount(value: Any, field: str, *, zero: bool = False) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise ValueError(f"{field} is not a decimal")
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{field} is not a decimal") from None
    if not number.is_finite() or number < 0 or (number == 0 and not zero):
        raise ValueError(f"{field} is not a valid amount")
    return number


def _optional_amount(value: Any, field: str) -> Decimal | None:
    return None if value is None else _amount(value, field)


def _time(value: Any, field: str) -> dt.datetime:
    if not isinstance(value, str):
        raise ValueError(f"{field} is not a timestamp")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{field} is not a timestamp") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def _optional_time(value: Any, field: str) -> dt.datetime | None:
    return None if value is None else _time(value, field)
