"""Orders on the paper broker, end to end over HTTP into PostgreSQL: placement, replay, reads, cancel,
the paper matcher through the reconciler, and validation."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.orders.helpers import events, limit, market, new_key, order_rows, place, trader
from tests.support.problems import assert_problem

pytestmark = pytest.mark.asyncio


async def test_market_order_fills_at_the_synthetic_quote(make_client, database_url) -> None:
    client = await make_client()
    _, auth = await trader(client)
    r = await place(client, auth, market(qty=3))
    assert r.status_code == 201, r.text
    order = r.json()
    assert order["status"] == "filled"
    assert order["qty"] == "3" and order["filled_qty"] == "3"
    assert Decimal(order["filled_avg_price"]) > 0
    assert order["client_order_id"].startswith("td-") and len(order["client_order_id"]) == 48
    assert r.headers["location"] == f"/v1/orders/{order['id']}"
    got = await client.get(f"/v1/orders/{order['id']}", headers=auth)
    assert got.status_code == 200 and got.json()["status"] == "filled"
    assert await events(database_url, order["id"]) == [
        (None, "submitting", "submitted"),
        ("submitting", "filled", "placed"),
    ]
