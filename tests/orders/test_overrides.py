"""The broker is reached through BrokerDep and the caller's account through the accounts lookup: a test
swaps either with dependency_overrides (no import path is patched), and the order flow runs unchanged
over the substitute."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from app.orders.deps import get_broker, get_broker_accounts
from app.providers.broker import (
    BrokerOrder,
    BrokerOrderStatus,
    BrokerProvider,
    BrokerRejected,
    OrderRequest,
)
from tests.orders.helpers import market, place, trader
from tests.support.problems import assert_problem

pytestmark = pytest.mark.asyncio


class RecordingBroker:
    """A BrokerProvider that accepts every order (status ``accepted``) and remembers what it was sent."""

    name = "paper"

    def __init__(self) -> None:
        self.sent: list[tuple[str, OrderRequest]] = []

    async def submit_order(self, *, access_token: str, order: OrderRequest) -> BrokerOrder:
        self.sent.append((access_token, order))
        now = dt.datetime.now(dt.UTC)
        return BrokerOrder(
            broker_order_id=str(uuid.uuid4()),
            client_order_id=order.client_order_id,
            status=BrokerOrderStatus.ACCEPTED,
            raw_status="pending_new",
            symbol=order.symbol,
            qty=order.qty,
            side=order.side,
            type=order.type,
            time_in_force=order.time_in_force,
            limit_price=order.limit_price,
            filled_qty=order.qty - order.qty,
            filled_avg_price=None,
            created_at=now,
            submitted_at=now,
            updated_at=now,
        )

    async def get_order_by_client_order_id(self, *, access_token: str, client_order_id: str) -> None:
        return None

    async def get_order(self, *, access_token: str, broker_order_id: str) -> None:
        return None

    async def cancel_order(self, *, access_token: str, broker_order_id: str) -> bool:
        raise BrokerRejected("not cancelable", 422)


async def test_the_broker_and_the_account_are_swapped_through_dependency_overrides(make_client) -> None:
    broker = RecordingBroker()
    assert isinstance(broker, BrokerProvider)

    async def accounts_override():
        async def lookup(user_id: uuid.UUID) -> str:
            return f"acct-{user_id}"

        return lookup

    client = await make_client()
    client.app.dependency_overrides[get_broker] = lambda: broker
    client.app.dependency_overrides[get_broker_accounts] = accounts_override
    user, auth = await trader(client)
    r = await place(client, auth, market(symbol="msft"))
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "accepted"
    ((token, sent),) = broker.sent
    assert token == f"acct-{user['id']}"
    assert sent.symbol == "MSFT" and sent.client_order_id == r.json()["client_order_id"]
    # The substitute's refusal of a cancel is the broker's reason, 422.
    cancel = await client.delete(f"/v1/orders/{r.json()['id']}", headers=auth)
    assert "not cancelable" in assert_problem(cancel, 422)["detail"]
