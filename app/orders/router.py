"""POST/GET /v1/orders, GET/DELETE /v1/orders/{id} (contract §4, Orders)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from starlette.responses import Response

from app.auth.deps import CurrentUserDetached
from app.core.deps import DatabaseDep
from app.orders import service
from app.orders.deps import BrokerAccountDep, BrokerDep, OrderIdempotency, OrderPolicyDep, OrderRateLimit
from app.orders.schemas import OrderCreate, OrderOut, OrdersPage

router = APIRouter(tags=["orders"])

_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}
_PLACE_RESPONSES: dict[int | str, dict[str, Any]] = {
    201: {"description": "The broker has the order (its status: accepted, new, filled, ...)."},
    202: {
        "model": OrderOut,
        "description": "The broker's answer is unknown (timeout after sending, 5xx): status "
        "pending_reconciliation; the reconciler settles it, see GET /v1/orders/{id}.",
    },
    400: {"description": "Idempotency-Key missing or malformed.", **_PROBLEM},
    409: {"description": "A request with this key is in flight; or no broker account linked.", **_PROBLEM},
    422: {"description": "Invalid order, key reused for another body, or refused by the broker.", **_PROBLEM},
    429: {"description": "RATE_LIMIT_ORDERS exceeded for this user.", **_PROBLEM},
    503: {"description": "Broker unavailable (breaker open or unreachable): nothing was sent.", **_PROBLEM},
}
OrderId = Annotated[uuid.UUID, Path(description="The order's id (from POST /v1/orders)")]


@router.post(
    "/orders",
    status_code=201,
    response_model=OrderOut,
    responses=_PLACE_RESPONSES,
    summary="Place an order (Idempotency-Key required)",
)
async def place_order(
    body: OrderCreate,
    user: CurrentUserDetached,
    _limit: OrderRateLimit,
    record: OrderIdempotency,
    account: BrokerAccountDep,
    broker: BrokerDep,
    policy: OrderPolicyDep,
    database: DatabaseDep,
) -> Response:
    return await service.place_order(
        database=database,
        broker=broker,
        policy=policy,
        record=record,
        user_id=user.id,
        order_in=body,
        access_token=account,
    )


@router.get("/orders", response_model=OrdersPage, summary="The caller's orders, newest first")
async def list_orders(
    user: CurrentUserDetached,
    database: DatabaseDep,
    policy: OrderPolicyDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[
        str | None, Query(min_length=1, max_length=200, description="next_cursor of the previous page")
    ] = None,
) -> OrdersPage:
    return await service.list_orders(
        database=database, policy=policy, user_id=user.id, limit=limit, cursor=cursor
    )


@router.get("/orders/{order_id}", response_model=OrderOut, summary="One of the caller's orders")
async def get_order(order_id: OrderId, user: CurrentUserDetached, database: DatabaseDep) -> OrderOut:
    return await service.get_order(database=database, user_id=user.id, order_id=order_id)


@router.delete(
    "/orders/{order_id}",
    response_model=OrderOut,
    responses={
        404: {"description": "No such order (or another user's).", **_PROBLEM},
        409: {"description": "The order has ended, or the broker has not confirmed it yet.", **_PROBLEM},
        422: {"description": "The broker refused the cancel.", **_PROBLEM},
        503: {"description": "Broker unavailable; retry.", **_PROBLEM},
    },
    summary="Cancel one of the caller's open orders",
)
async def cancel_order(
    order_id: OrderId,
    user: CurrentUserDetached,
    account: BrokerAccountDep,
    broker: BrokerDep,
    policy: OrderPolicyDep,
    database: DatabaseDep,
) -> OrderOut:
    return await service.cancel_order(
        database=database,
        broker=broker,
        policy=policy,
        user_id=user.id,
        order_id=order_id,
        access_token=account,
    )
