"""Order fills queue an alert for users who set a Discord webhook, in the same statement as the fill
(placement on the paper broker, and a resting order filled later by the reconciler's matcher)."""

from __future__ import annotations

import pytest

from tests.alerts.test_dispatch import app_with, discord, settled, user_with_webhook  # noqa: F401
from tests.auth.helpers import fetch
from tests.orders.helpers import limit, market, place, trader

pytestmark = pytest.mark.asyncio


async def test_a_fill_queues_an_alert_that_is_delivered(make_client, database_url, discord) -> None:  # noqa: F811
    client = await app_with(make_client, discord)
    _, auth = await user_with_webhook(client, "600000000000000001")
    order = (await place(client, auth, market(qty="3", symbol="MSFT"))).json()
    assert order["status"] == "filled"
    (row,) = await fetch(database_url, "SELECT * FROM alerts")
    assert (row["source"], str(row["order_id"])) == ("order_fill", order["id"])
    assert row["content"].startswith("Order filled: buy 3 MSFT at an average of ")
    (sent,) = await settled(database_url, 1)
    assert sent["status"] == "sent"
    assert [m.content for m in discord.messages("600000000000000001")] == [row["content"]]


async def test_no_webhook_no_alert_and_a_resting_order_queues_none(make_client, database_url) -> None:
    client = await make_client()
    _, auth = await trader(client)
    assert (await place(client, auth, market())).json()["status"] == "filled"
    _, with_hook = await user_with_webhook(client, "600000000000000002")
    assert (await place(client, with_hook, limit("1.00"))).json()["status"] == "new"  # nothing filled
    assert await fetch(database_url, "SELECT 1 FROM alerts") == []
