"""Migration 0006 (status per subscription) on a database that already holds per-customer status.

Upgrade carries each customer's known status into a row for "the customer's subscription whose id
we do not know", which keeps paying users active across the deploy and gives way to the first
identified subscription state that is newer than it; downgrade folds the per-subscription rows back
into one status per customer (the user's status, as the new code computes it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from tests.billing import stripe_fake as sf
from tests.support import db as dbsupport

WEBHOOK = "/v1/webhooks/stripe"


@pytest.fixture
async def db_at_0005() -> AsyncIterator[str]:
    """A fresh database migrated to 0005 (before this change). Requested before make_client, so it is
    dropped only after the app on it has shut down."""
    name, url = await dbsupport.create_database("tradedesk_0006")
    try:
        await asyncio.to_thread(dbsupport.migrate, url, "0005")
        yield url
    finally:
        await dbsupport.drop_database(name)


async def _sql(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dbsupport.asyncpg_dsn(url))
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def _signup(client: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    email, password = f"mig-{uuid.uuid4().hex[:8]}@example.com", "correct horse battery staple"
    r = await client.post("/v1/auth/signup", json={"email": email, "password": password})
    assert r.status_code == 201, r.text
    token = (await client.post("/v1/auth/login", json={"email": email, "password": password})).json()[
        "access_token"
    ]
    return r.json()["id"], {"Authorization": f"Bearer {token}"}


async def _deliver(client: httpx.AsyncClient, evt: dict[str, Any]) -> None:
    body, headers = sf.signed(evt)
    r = await client.post(WEBHOOK, content=body, headers=headers)
    assert r.status_code == 200, r.text


def _sub(type_: str, customer: str, sub_id: str, status: str, created: int) -> dict[str, Any]:
    evt = sf.subscription(type_, customer, status, created=created)
    evt["data"]["object"]["id"] = sub_id
    return evt


async def _subscription(client: httpx.AsyncClient, auth: dict[str, str]) -> dict[str, Any]:
    r = await client.get("/v1/billing/subscription", headers=auth)
    assert r.status_code == 200, r.text
    return r.json()


async def test_per_customer_status_survives_upgrade_and_downgrade(db_at_0005: str, make_client) -> None:
    url = db_at_0005
    client = await make_client(database_url=url)  # signup only touches users, the same at 0005
    (paying, paying_auth), (cancelled, cancelled_auth), (switching, switching_auth) = [
        await _signup(client) for _ in range(3)
    ]
    now = int(time.time())
    at = dt.datetime.fromtimestamp(now - 3600, dt.UTC)
    period_end = dt.datetime.fromtimestamp(now + 86_400, dt.UTC)
    await _sql(
        url,
        """
        INSERT INTO billing_accounts (stripe_customer_id, user_id, status, status_event_at, current_period_end)
        VALUES ('cus_paying', $1, 'active', $4, $5), ('cus_cancelled', $2, 'canceled', $4, NULL),
               ('cus_switching', $3, 'active', $4, NULL), ('cus_unlinked', NULL, 'past_due', $4, NULL),
               ('cus_nothing', NULL, 'none', NULL, NULL)
    """,
        uuid.UUID(paying),
        uuid.UUID(cancelled),
        uuid.UUID(switching),
        at,
        period_end,
    )

    await asyncio.to_thread(dbsupport.migrate, url, "head")
    rows = await _sql(
        url,
        "SELECT stripe_customer_id, stripe_subscription_id, status, status_event_at, "
        "current_period_end FROM billing_subscriptions ORDER BY stripe_customer_id",
    )
    assert [tuple(r) for r in rows] == [
        ("cus_cancelled", None, "canceled", at, None),
        ("cus_paying", None, "active", at, period_end),
        ("cus_switching", None, "active", at, None),
        ("cus_unlinked", None, "past_due", at, None),
    ]
    columns = {
        r["column_name"]
        for r in await _sql(
            url, "SELECT column_name FROM information_schema.columns WHERE table_name = 'billing_accounts'"
        )
    }
    assert columns == {"stripe_customer_id", "user_id", "updated_at"}

    # The carried status is what the users see, period end included.
    assert await _subscription(client, paying_auth) == {
        "status": "active",
        "current_period_end": period_end.isoformat().replace("+00:00", "Z"),
    }
    assert (await _subscription(client, cancelled_auth))["status"] == "canceled"
    # A subscription that never started (an abandoned checkout) does not replace it...
    await _deliver(
        client, _sub("customer.subscription.updated", "cus_paying", "sub_abandoned", "incomplete", now - 60)
    )
    assert (await _subscription(client, paying_auth))["status"] == "active"
    # ...an identified state older than it does not either...
    await _deliver(
        client, _sub("customer.subscription.updated", "cus_cancelled", "sub_c", "past_due", now - 7200)
    )
    assert (await _subscription(client, cancelled_auth))["status"] == "canceled"
    # ...and a newer identified state does: the unidentified row has given way.
    await _deliver(client, _sub("customer.subscription.deleted", "cus_paying", "sub_p", "canceled", now - 30))
    assert (await _subscription(client, paying_auth))["status"] == "canceled"
    checkout = sf.checkout_completed("cus_switching", switching, created=now - 20)
    checkout["data"]["object"]["subscription"] = "sub_s2"
    await _deliver(client, checkout)
    assert (await _subscription(client, switching_auth))["status"] == "active"
    remaining = await _sql(
        url,
        "SELECT stripe_customer_id FROM billing_subscriptions "
        "WHERE stripe_subscription_id IS NULL ORDER BY 1",
    )
    assert [r[0] for r in remaining] == ["cus_cancelled", "cus_unlinked"]

    await asyncio.to_thread(dbsupport.downgrade, url, "0005")
    folded = await _sql(
        url,
        "SELECT stripe_customer_id, status, status_event_at FROM billing_accounts "
        "ORDER BY stripe_customer_id",
    )
    assert [tuple(r) for r in folded] == [
        ("cus_cancelled", "canceled", at),  # its identified sub_c state was older (and not active)
        ("cus_nothing", "none", None),
        ("cus_paying", "canceled", dt.datetime.fromtimestamp(now - 30, dt.UTC)),  # newest event time kept
        ("cus_switching", "active", dt.datetime.fromtimestamp(now - 20, dt.UTC)),
        ("cus_unlinked", "past_due", at),
    ]
    tables = {r[0] for r in await _sql(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert "billing_subscriptions" not in tables
    await asyncio.to_thread(dbsupport.migrate, url, "head")  # and up again
