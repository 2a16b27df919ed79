"""The orders feature's dependencies: the broker (built once at startup), the caller's broker account,
the per-user order limit and the Idempotency-Key claim."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Request

from app.auth.deps import CurrentUserDetached, PerUserLimit
from app.core.idempotency import IdempotencyRecord, idempotency_key
from app.orders.service import AccountLookup, BrokerAccountMissing, OrderPolicy
from app.providers.broker import BrokerProvider


async def get_broker(request: Request) -> BrokerProvider:
    broker: BrokerProvider = request.app.state.broker
    return broker


async def get_order_policy(request: Request) -> OrderPolicy:
    policy: OrderPolicy = request.app.state.order_policy
    return policy


async def get_broker_accounts(request: Request) -> AccountLookup:
    accounts: AccountLookup = request.app.state.broker_accounts
    return accounts


BrokerDep = Annotated[BrokerProvider, Depends(get_broker)]
OrderPolicyDep = Annotated[OrderPolicy, Depends(get_order_policy)]


async def get_broker_account(
    user: CurrentUserDetached, accounts: Annotated[AccountLookup, Depends(get_broker_accounts)]
) -> str:
    """The caller's account at the broker (the access token sent with each call); 409 when
    BROKER_PROVIDER=alpaca and the user has not linked an account."""
    token = await accounts(user.id)
    if token is None:
        raise BrokerAccountMissing(
            "No broker account is linked: connect one with GET /v1/oauth/alpaca/authorize first."
        )
    return token


BrokerAccountDep = Annotated[str, Depends(get_broker_account)]


OrderRateLimit = Annotated[None, Depends(PerUserLimit("rate_limit_orders", name="orders"))]


async def caller_id(user: CurrentUserDetached) -> uuid.UUID:
    return user.id


# Orders have an outside effect (the broker call): no takeover; the reconciler finishes a crashed key.
OrderIdempotency = Annotated[IdempotencyRecord, idempotency_key(owner=caller_id, takeover_after=None)]
