"""``python -m app.cli audit-payments --since …``: the payment-webhook-compromised runbook's "audit all
recent payments". Events go in through the real webhook route, signed as Stripe signs them; the
audit runs as the operator runs it (a child process) and is read-only."""

from __future__ import annotations

import datetime as dt
import time
import uuid

import asyncpg
import httpx

from tests.billing.stripe_fake import checkout_completed, invoice_paid, signed, subscription
from tests.support import db as dbsupport
from tests.support.cli import run_cli

WEBHOOK = "/v1/webhooks/stripe"


async def _deliver(client: httpx.AsyncClient, evt: dict) -> None:
    body, headers = signed(evt)
    resp = await client.post(WEBHOOK, content=body, headers=headers)
    assert resp.status_code == 200, resp.text


async def _user(client: httpx.AsyncClient) -> str:
    email = f"audit-{uuid.uuid4().hex[:8]}@example.com"
    assert (
        await client.post("/v1/auth/signup", json={"email": email, "password": "pw-0123456789"})
    ).status_code == 201
    token = (await client.post("/v1/auth/login", json={"email": email, "password": "pw-0123456789"})).json()[
        "access_token"
    ]
    return (await client.get("/v1/auth/me", headers={"Authorization": f"Bearer {token}"})).json()["id"]


async def test_the_audit_lists_what_arrived_since_and_flags_nothing_when_all_is_well(
    client: httpx.AsyncClient, database_url: str
) -> None:
    user_id = await _user(client)
    await _deliver(client, checkout_completed("cus_audit1", user_id))
    await _deliver(client, subscription("customer.subscription.updated", "cus_audit1", "active"))
    for n, amount in enumerate((1999, 2500)):
        await _deliver(client, invoice_paid("cus_audit1", f"in_audit_{n}", amount))
    await _deliver(client, invoice_paid("cus_audit2", "in_audit_jpy", 500, currency="jpy"))

    code, out, err = await run_cli(database_url, "audit-payments", "--since", "1h")
    assert code == 0, err
    assert out is not None and out["command"] == "audit-payments"
    assert out["events"] == 5
    assert out["events_by_type"] == {
        "checkout.session.completed": 1,
        "customer.subscription.updated": 1,
        "invoice.paid": 3,
    }
    assert out["payments"] == 3
    assert out["paid_by_currency"] == {"jpy": "500", "usd": "44.99"}
    assert out["subscriptions_changed"] == 1
    assert (
        out["suspicious"] == 0 and out["payments_without_event"] == [] and out["events_with_odd_timing"] == []
    )
    paid = {p["invoice_id"]: p for p in out["items"]["payments"]}
    assert paid["in_audit_0"]["user_id"] == user_id and paid["in_audit_0"]["amount"] == "19.99"
    assert paid["in_audit_jpy"]["user_id"] is None  # a customer no checkout linked
    assert out["truncated"] is False

    # --since just after the last delivery was recorded (a moment in the past): nothing
    conn = await asyncpg.connect(dbsupport.asyncpg_dsn(database_url))
    try:
        last = await conn.fetchval("SELECT max(processed_at) FROM stripe_events")
    finally:
        await conn.close()
    later = (last + dt.timedelta(microseconds=1)).isoformat()
    code, out, err = await run_cli(database_url, "audit-payments", "--since", later)
    assert code == 0, err
    assert out is not None and out["events"] == 0 and out["payments"] == 0


async def test_rows_that_deserve_a_look_are_flagged_and_the_exit_status_is_1(
    client: httpx.AsyncClient, database_url: str
) -> None:
    # an event that claims to be four days old, signed now (Stripe stops retrying after three days)
    stale = invoice_paid("cus_odd", "in_odd", 100, created=int(time.time()) - 4 * 86400)
    await _deliver(client, stale)
    # a payment written around the webhook (directly in the database): no event recorded it
    conn = await asyncpg.connect(dbsupport.asyncpg_dsn(database_url))
    try:
        await conn.execute(
            "INSERT INTO payments (invoice_id, stripe_customer_id, amount_minor, currency, paid_at, event_id)"
            " VALUES ('in_forged', 'cus_forged', 99900, 'usd', now(), 'evt_never_seen')"
        )
    finally:
        await conn.close()

    code, out, err = await run_cli(database_url, "audit-payments", "--since", "2h", "--limit", "1")
    assert code == 1, err
    assert out is not None
    assert out["suspicious"] == 2
    assert [p["invoice_id"] for p in out["payments_without_event"]] == ["in_forged"]
    assert out["payments_without_event"][0]["amount"] == "999.00"
    assert [e["id"] for e in out["events_with_odd_timing"]] == [stale["id"]]
    assert out["payments"] == 2 and out["paid_by_currency"] == {"usd": "1000.00"}
    assert (
        out["truncated"] is True and len(out["items"]["payments"]) == 1
    )  # the listing is capped, totals not


async def test_bad_or_missing_since_is_a_usage_error(database_url: str) -> None:
    for args, message in (
        ((), "audit-payments needs --since"),
        (("--since", "yesterday"), "neither a duration"),
        (("--since", "2999-01-01T00:00:00Z"), "in the future"),
    ):
        code, out, err = await run_cli(database_url, "audit-payments", *args)
        assert code == 2 and out is None, (args, err)
        assert message in err, (args, err)
