"""Subscription status is kept per Stripe subscription id (contract §4 "Billing").

A user's status is ``active``/``trialing`` while any of their subscriptions is, else the status of
the most recently changed one; events are ordered per subscription; concurrent deliveries for one
subscription are serialised and each event id still takes effect once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.billing import stripe_fake as sf
from tests.support import db as dbsupport
from tests.support.metrics import grew, scrape

WEBHOOK = "/v1/webhooks/stripe"


def checkout(customer: str, user_id: str, subscription: Any, **kw: Any) -> dict[str, Any]:
    """checkout.session.completed carrying its subscription (an id, or the expanded object)."""
    evt = sf.checkout_completed(customer, user_id, **kw)
    evt["data"]["object"]["subscription"] = subscription
    return evt


def sub_event(
    type_: str, customer: str, sub_id: str | None, status: str, *, period_end: int | None = None, **kw: Any
) -> dict[str, Any]:
    evt = sf.subscription(type_, customer, status, period_end=period_end, **kw)
    evt["data"]["object"]["id"] = sub_id
    return evt


def updated(customer: str, sub_id: str, status: str, **kw: Any) -> dict[str, Any]:
    return sub_event("customer.subscription.updated", customer, sub_id, status, **kw)


def deleted(customer: str, sub_id: str, **kw: Any) -> dict[str, Any]:
    return sub_event("customer.subscription.deleted", customer, sub_id, "canceled", **kw)


async def _post(client: httpx.AsyncClient, evt: dict[str, Any]) -> httpx.Response:
    body, headers = sf.signed(evt)
    return await client.post(WEBHOOK, content=body, headers=headers)


async def _deliver(client: httpx.AsyncClient, *events: dict[str, Any]) -> None:
    for evt in events:
        r = await _post(client, evt)
        assert r.status_code == 200, r.text


async def _signup(client: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    email, password = f"sub-{uuid.uuid4().hex[:8]}@example.com", "correct horse battery staple"
    r = await client.post("/v1/auth/signup", json={"email": email, "password": password})
    assert r.status_code == 201, r.text
    token = (await client.post("/v1/auth/login", json={"email": email, "password": password})).json()[
        "access_token"
    ]
    return r.json()["id"], {"Authorization": f"Bearer {token}"}


async def _status(client: httpx.AsyncClient, auth: dict[str, str]) -> tuple[str, str | None]:
    sub = (await client.get("/v1/billing/subscription", headers=auth)).json()
    me = (await client.get("/v1/auth/me", headers=auth)).json()
    assert me["subscription_status"] == sub["status"], (me, sub)
    return sub["status"], sub["current_period_end"]


async def _rows(database_url: str) -> dict[str | None, str]:
    conn = await asyncpg.connect(dbsupport.asyncpg_dsn(database_url))
    try:
        rows = await conn.fetch("SELECT stripe_subscription_id, status FROM billing_subscriptions")
    finally:
        await conn.close()
    return {r["stripe_subscription_id"]: r["status"] for r in rows}


def _iso(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


async def test_switching_plans_keeps_a_paying_user_active(
    client: httpx.AsyncClient, database_url: str
) -> None:
    user_id, auth = await _signup(client)
    now = int(time.time())
    await _deliver(
        client,
        checkout("cus_sw", user_id, "sub_old", created=now - 1000),
        updated("cus_sw", "sub_old", "active", period_end=now + 100, created=now - 900),
    )
    assert await _status(client, auth) == ("active", _iso(now + 100))
    # The switch: a new subscription is bought, then the old one is cancelled.
    await _deliver(
        client,
        checkout("cus_sw", user_id, {"id": "sub_new", "object": "subscription"}, created=now - 20),
        updated("cus_sw", "sub_new", "active", period_end=now + 2_592_000, created=now - 19),
        deleted("cus_sw", "sub_old", created=now - 10),
    )
    # Active, with the active subscription's period end (not the cancelled one's).
    assert await _status(client, auth) == ("active", _iso(now + 2_592_000))
    assert await _rows(database_url) == {"sub_old": "canceled", "sub_new": "active"}
    # Only when the last paying subscription ends is the user no longer active.
    await _deliver(client, deleted("cus_sw", "sub_new", created=now - 5))
    assert (await _status(client, auth))[0] == "canceled"


async def test_an_abandoned_incomplete_subscription_does_not_overwrite_active(
    client: httpx.AsyncClient,
) -> None:
    user_id, auth = await _signup(client)
    now = int(time.time())
    await _deliver(
        client,
        checkout("cus_inc", user_id, "sub_paid", created=now - 100),
        updated("cus_inc", "sub_abandoned", "incomplete", created=now - 50),
        updated("cus_inc", "sub_abandoned", "incomplete_expired", created=now - 1),
    )
    assert (await _status(client, auth))[0] == "active"


async def test_events_are_ordered_per_subscription(client: httpx.AsyncClient, database_url: str) -> None:
    user_id, auth = await _signup(client)
    now = int(time.time())
    await _deliver(
        client,
        checkout("cus_ord", user_id, "sub_a", created=now - 100),
        updated("cus_ord", "sub_a", "past_due", created=now - 10),
    )
    # An older event for sub_a, delivered late, does not overwrite sub_a's newer state...
    await _deliver(client, updated("cus_ord", "sub_a", "active", created=now - 50))
    assert (await _status(client, auth))[0] == "past_due"
    # ...but an event for sub_b is applied to sub_b even though it is older than sub_a's state.
    await _deliver(client, updated("cus_ord", "sub_b", "trialing", created=now - 30))
    assert (await _status(client, auth))[0] == "trialing"
    assert await _rows(database_url) == {"sub_a": "past_due", "sub_b": "trialing"}
    # Nothing active or trialing: the most recently changed subscription speaks.
    await _deliver(client, deleted("cus_ord", "sub_b", created=now - 20))
    assert (await _status(client, auth))[0] == "past_due"
    await _deliver(client, updated("cus_ord", "sub_a", "unpaid", created=now - 5))
    assert (await _status(client, auth))[0] == "unpaid"


async def test_a_late_checkout_does_not_resurrect_its_cancelled_subscription(
    client: httpx.AsyncClient,
) -> None:
    user_id, auth = await _signup(client)
    now = int(time.time())
    await _deliver(
        client,
        deleted("cus_late", "sub_l", created=now),
        checkout("cus_late", user_id, "sub_l", created=now - 60),
    )
    assert (await _status(client, auth))[0] == "canceled"


async def test_same_second_events_for_one_subscription_are_flagged_not_for_two(make_client, capfd) -> None:
    client = await make_client(log_level="INFO")
    now = int(time.time())
    await _deliver(
        client,
        updated("cus_tie", "sub_x", "active", created=now),
        updated("cus_tie", "sub_y", "past_due", created=now),
    )
    assert "two subscription events in the same second" not in capfd.readouterr().err
    await _deliver(client, updated("cus_tie", "sub_x", "past_due", created=now))
    assert "two subscription events in the same second" in capfd.readouterr().err


@pytest.mark.parametrize(
    "make_event, field",
    [
        (lambda user: checkout("cus_bad", user, 42), "data.object.subscription"),
        (lambda user: checkout("cus_bad", user, {"object": "subscription"}), "data.object.subscription"),
        (lambda user: checkout("cus_bad", user, "x" * 300), "data.object.subscription"),
        (lambda user: sub_event("customer.subscription.updated", "cus_bad", "", "active"), "data.object.id"),
        (
            lambda user: sub_event("customer.subscription.deleted", "cus_bad", None, "canceled"),
            "data.object.id",
        ),
    ],
)
async def test_an_unusable_subscription_id_is_refused(
    client: httpx.AsyncClient, database_url: str, make_event, field: str
) -> None:
    user_id, auth = await _signup(client)
    r = await _post(client, make_event(user_id))
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == [field]
    assert (await _status(client, auth))[0] == "none"
    assert await _rows(database_url) == {}


async def test_concurrent_deliveries_for_one_customers_subscriptions(
    client: httpx.AsyncClient, database_url: str
) -> None:
    """Many events for two subscriptions of one customer, each delivered three times, all at once and in
    random order: every event id takes effect once, each subscription ends in the state of its newest
    event, and the user — whose newest event overall cancels the old plan — stays active."""
    user_id, auth = await _signup(client)
    now = int(time.time())
    events = [checkout("cus_cc", user_id, "sub_new", created=now - 200)]
    statuses = ["past_due", "active", "unpaid", "active", "trialing"]
    for i in range(20):  # sub_new's newest (now - 40 - 0) is active; sub_old's newest (now) cancels it
        events.append(
            updated("cus_cc", "sub_new", statuses[i % 5] if i else "active", created=now - 40 - 3 * i)
        )
        events.append(updated("cus_cc", "sub_old", statuses[(i + 2) % 5], created=now - 1 - 3 * i))
    events.append(deleted("cus_cc", "sub_old", created=now))
    deliveries = [evt for evt in events for _ in range(3)]
    random.Random(7).shuffle(deliveries)
    before = await scrape(client)
    responses = await asyncio.gather(*(_post(client, evt) for evt in deliveries))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    assert [r.json()["duplicate"] for r in responses].count(False) == len(events)
    after = await scrape(client)
    changes = sum(
        grew(before, after, "webhook_events_total", type=t, outcome=o)
        for t in ("customer.subscription.updated", "customer.subscription.deleted")
        for o in ("processed", "ignored")
    )
    assert changes == len(events) - 1
    assert (await _status(client, auth))[0] == "active"
    assert await _rows(database_url) == {"sub_new": "active", "sub_old": "canceled"}
