"""Stripe webhooks: verified with the SDK, exactly once under concurrent redelivery, atomic, ordered."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import httpx
import pytest

from tests.billing import stripe_fake as sf
from tests.support import db as dbsupport
from tests.support.metrics import grew, sample, scrape

WEBHOOK = "/v1/webhooks/stripe"


async def _post(client: httpx.AsyncClient, evt: dict, **kw) -> httpx.Response:
    body, headers = sf.signed(evt, **kw)
    return await client.post(WEBHOOK, content=body, headers=headers)


async def _fetch(database_url: str, sql: str, *args) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dbsupport.asyncpg_dsn(database_url))
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def _signup(client: httpx.AsyncClient, email: str | None = None) -> tuple[str, dict[str, str]]:
    email = email or f"user-{uuid.uuid4().hex[:8]}@example.com"
    password = "correct horse battery staple"
    r = await client.post("/v1/auth/signup", json={"email": email, "password": password})
    assert r.status_code == 201, r.text
    token = (await client.post("/v1/auth/login", json={"email": email, "password": password})).json()[
        "access_token"
    ]
    return r.json()["id"], {"Authorization": f"Bearer {token}"}


async def test_valid_event_takes_effect(client: httpx.AsyncClient, database_url: str) -> None:
    r = await _post(client, sf.invoice_paid("cus_A", "in_1", 1999))
    assert r.status_code == 200
    assert r.json() == {"received": True, "duplicate": False}
    rows = await _fetch(database_url, "SELECT invoice_id, amount_minor, currency FROM payments")
    assert [tuple(r) for r in rows] == [("in_1", 1999, "usd")]


@pytest.mark.parametrize("case", ["tampered", "wrong_secret", "missing_header", "stale", "garbage_header"])
async def test_bad_signatures_are_400_and_record_nothing(
    client: httpx.AsyncClient, database_url: str, case: str
) -> None:
    evt = sf.invoice_paid("cus_A", "in_bad", 500)
    if case == "tampered":
        body, headers = sf.signed(evt)
        body = body.replace(b"500", b"50000")
    elif case == "wrong_secret":
        body, headers = sf.signed(evt, secret="whsec_someone_else_entirely")
    elif case == "missing_header":
        body, headers = sf.signed(evt)
        headers.pop("Stripe-Signature")
    elif case == "stale":
        body, headers = sf.signed(evt, timestamp=int(time.time()) - 400)
    else:
        body, headers = sf.signed(evt)
        headers["Stripe-Signature"] = "t=abc,v1=zzz"
    r = await client.post(WEBHOOK, content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert await _fetch(database_url, "SELECT 1 FROM stripe_events") == []
    assert await _fetch(database_url, "SELECT 1 FROM payments") == []


async def test_second_of_two_rotated_secrets_is_accepted(make_client) -> None:
    client = await make_client(stripe_webhook_secret="whsec_old_secret_0001,whsec_new_secret_0002")
    assert (
        await _post(client, sf.invoice_paid("cus_A", "in_r1", 100), secret="whsec_new_secret_0002")
    ).status_code == 200
    assert (
        await _post(client, sf.invoice_paid("cus_A", "in_r2", 100), secret="whsec_old_secret_0001")
    ).status_code == 200
    assert (
        await _post(client, sf.invoice_paid("cus_A", "in_r3", 100), secret="whsec_retired_secret_9")
    ).status_code == 400


async def test_fifty_concurrent_deliveries_make_exactly_one_payment(
    client: httpx.AsyncClient, database_url: str
) -> None:
    evt = sf.invoice_paid("cus_C", "in_concurrent", 2500)
    before = await scrape(client)
    responses = await asyncio.gather(*(_post(client, evt) for _ in range(50)))
    assert all(r.status_code == 200 for r in responses), [r.status_code for r in responses]
    duplicates = [r.json()["duplicate"] for r in responses]
    assert duplicates.count(False) == 1 and duplicates.count(True) == 49
    assert len(await _fetch(database_url, "SELECT 1 FROM payments")) == 1
    assert len(await _fetch(database_url, "SELECT 1 FROM stripe_events")) == 1
    after = await scrape(client)
    assert grew(before, after, "webhook_events_total", type="invoice.paid", outcome="processed") == 1
    assert grew(before, after, "webhook_events_total", type="invoice.paid", outcome="duplicate") == 49


async def test_same_invoice_under_two_event_ids_is_one_payment(
    client: httpx.AsyncClient, database_url: str
) -> None:
    assert (await _post(client, sf.invoice_paid("cus_D", "in_same", 700))).status_code == 200
    assert (await _post(client, sf.invoice_paid("cus_D", "in_same", 700))).json()["duplicate"] is False
    assert len(await _fetch(database_url, "SELECT 1 FROM payments")) == 1


async def test_failure_inside_the_effect_records_nothing_and_redelivery_succeeds_once(
    client: httpx.AsyncClient, database_url: str
) -> None:
    # A real database failure in the middle of the effect: a trigger that refuses the payment insert.
    conn = await asyncpg.connect(dbsupport.asyncpg_dsn(database_url))
    await conn.execute("""
        CREATE FUNCTION injected_failure() RETURNS trigger AS $$
        BEGIN RAISE EXCEPTION 'injected failure'; END $$ LANGUAGE plpgsql;
        CREATE TRIGGER injected_failure BEFORE INSERT ON payments FOR EACH ROW EXECUTE FUNCTION injected_failure();
    """)
    before = await scrape(client)
    try:
        evt = sf.invoice_paid("cus_F", "in_fail", 1234)
        r = await _post(client, evt)
        assert r.status_code == 500
        assert "injected" not in r.text
        assert await _fetch(database_url, "SELECT 1 FROM stripe_events") == []
        assert await _fetch(database_url, "SELECT 1 FROM billing_accounts") == []
    finally:
        await conn.execute("DROP TRIGGER injected_failure ON payments; DROP FUNCTION injected_failure();")
        await conn.close()
    again = await _post(client, evt)
    assert again.status_code == 200 and again.json()["duplicate"] is False
    third = await _post(client, evt)
    assert third.json()["duplicate"] is True
    assert len(await _fetch(database_url, "SELECT 1 FROM payments")) == 1
    after = await scrape(client)
    for outcome in ("failed", "processed", "duplicate"):  # the failure, the redelivery, the third delivery
        assert grew(before, after, "webhook_events_total", type="invoice.paid", outcome=outcome) == 1, outcome


async def test_out_of_order_subscription_events_keep_the_newest(client: httpx.AsyncClient) -> None:
    user_id, auth = await _signup(client)
    now = int(time.time())
    assert (
        await _post(client, sf.checkout_completed("cus_S", user_id, created=now - 100))
    ).status_code == 200
    newer = sf.subscription(
        "customer.subscription.updated", "cus_S", "past_due", created=now - 10, period_end=now + 86400 * 30
    )
    older = sf.subscription("customer.subscription.updated", "cus_S", "active", created=now - 50)
    assert (await _post(client, newer)).status_code == 200
    assert (await _post(client, older)).status_code == 200  # recorded, but does not overwrite
    sub = (await client.get("/v1/billing/subscription", headers=auth)).json()
    assert sub["status"] == "past_due"
    assert sub["current_period_end"] is not None
    me = (await client.get("/v1/auth/me", headers=auth)).json()
    assert me["subscription_status"] == "past_due"
    deleted = sf.subscription("customer.subscription.deleted", "cus_S", "canceled", created=now - 1)
    assert (await _post(client, deleted)).status_code == 200
    assert (await client.get("/v1/billing/subscription", headers=auth)).json()["status"] == "canceled"


async def test_late_checkout_does_not_resurrect_a_cancelled_subscription(client: httpx.AsyncClient) -> None:
    user_id, auth = await _signup(client)
    now = int(time.time())
    await _post(client, sf.subscription("customer.subscription.deleted", "cus_L", "canceled", created=now))
    await _post(client, sf.checkout_completed("cus_L", user_id, created=now - 60))
    assert (await client.get("/v1/billing/subscription", headers=auth)).json()["status"] == "canceled"


async def test_checkout_links_customer_and_payments_list_in_major_units(client: httpx.AsyncClient) -> None:
    user_id, auth = await _signup(client)
    other_id, other_auth = await _signup(client)
    assert (await client.get("/v1/billing/subscription", headers=auth)).json() == {
        "status": "none",
        "current_period_end": None,
    }
    now = int(time.time())
    # Payment arrives before the checkout that links the customer: still attributed once linked.
    await _post(client, sf.invoice_paid("cus_P", "in_usd", 1999, "usd", created=now - 30))
    await _post(client, sf.checkout_completed("cus_P", user_id, created=now - 20))
    await _post(client, sf.invoice_paid("cus_P", "in_jpy", 500, "JPY", created=now - 10))
    await _post(client, sf.invoice_paid("cus_P", "in_kwd", 1234, "kwd", created=now - 5))
    await _post(client, sf.invoice_paid("cus_Q", "in_other", 100, "usd", created=now))
    assert (await client.get("/v1/billing/subscription", headers=auth)).json()["status"] == "active"
    page = (await client.get("/v1/billing/payments", headers=auth)).json()
    assert [(p["invoice_id"], p["amount"], p["currency"]) for p in page["items"]] == [
        ("in_kwd", "1.234", "kwd"),
        ("in_jpy", "500", "jpy"),
        ("in_usd", "19.99", "usd"),
    ]
    assert page["next_cursor"] is None
    first = (await client.get("/v1/billing/payments", params={"limit": 2}, headers=auth)).json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    rest = (
        await client.get(
            "/v1/billing/payments", params={"limit": 2, "cursor": first["next_cursor"]}, headers=auth
        )
    ).json()
    assert [p["invoice_id"] for p in rest["items"]] == ["in_usd"] and rest["next_cursor"] is None
    assert (await client.get("/v1/billing/payments", headers=other_auth)).json()["items"] == []
    assert (
        await client.get("/v1/billing/payments", params={"cursor": "!!!"}, headers=auth)
    ).status_code == 422
    assert (await client.get("/v1/billing/payments")).status_code == 401


async def test_unknown_types_are_recorded_without_effect(
    client: httpx.AsyncClient, database_url: str
) -> None:
    evt = sf.event("customer.created", {"object": "customer", "id": "cus_X"})
    assert (await _post(client, evt)).json() == {"received": True, "duplicate": False}
    assert (await _post(client, evt)).json() == {"received": True, "duplicate": True}
    assert [r["type"] for r in await _fetch(database_url, "SELECT type FROM stripe_events")] == [
        "customer.created"
    ]
    assert await _fetch(database_url, "SELECT 1 FROM billing_accounts") == []


@pytest.mark.parametrize(
    "make_event, field",
    [
        (lambda: sf.checkout_completed("cus_U", str(uuid.uuid4())), "data.object.client_reference_id"),
        (lambda: sf.checkout_completed("cus_U", "not-a-uuid"), "data.object.client_reference_id"),
        (lambda: sf.invoice_paid("cus_M", "in_m", "19.99"), "data.object.amount_paid"),
        (lambda: sf.invoice_paid("cus_M", "in_m", 1999, currency="dollars"), "data.object.currency"),
        (lambda: sf.subscription("customer.subscription.updated", "cus_M", "exploded"), "data.object.status"),
    ],
)
async def test_known_types_that_cannot_be_applied_are_refused_not_dropped(
    client: httpx.AsyncClient, database_url: str, make_event, field: str
) -> None:
    """A payment (or account change) we cannot apply must not be acknowledged and lost: 422, nothing
    recorded, so Stripe keeps redelivering and the failure stays visible."""
    evt = make_event()
    before = await scrape(client)
    for _ in range(2):  # a redelivery is refused the same way: nothing was recorded
        r = await _post(client, evt)
        assert r.status_code == 422, r.text
        assert [e["field"] for e in r.json()["errors"]] == [field]
    assert await _fetch(database_url, "SELECT 1 FROM stripe_events") == []
    assert await _fetch(database_url, "SELECT 1 FROM payments") == []
    assert await _fetch(database_url, "SELECT 1 FROM billing_accounts") == []
    after = await scrape(client)
    assert grew(before, after, "webhook_events_total", type=evt["type"], outcome="unprocessable") == 2


async def test_account_events_take_effect_once_under_concurrent_redelivery(
    client: httpx.AsyncClient, database_url: str
) -> None:
    user_id, auth = await _signup(client)
    now = int(time.time())
    checkout = sf.checkout_completed("cus_CC", user_id, created=now - 10)
    update = sf.subscription("customer.subscription.updated", "cus_CC", "past_due", created=now)
    for evt in (checkout, update):
        responses = await asyncio.gather(*(_post(client, evt) for _ in range(25)))
        assert all(r.status_code == 200 for r in responses), [
            r.text for r in responses if r.status_code != 200
        ]
        assert [r.json()["duplicate"] for r in responses].count(False) == 1
    assert len(await _fetch(database_url, "SELECT 1 FROM stripe_events")) == 2
    assert (await client.get("/v1/billing/subscription", headers=auth)).json()["status"] == "past_due"


async def test_failure_inside_an_account_event_records_nothing(
    client: httpx.AsyncClient, database_url: str
) -> None:
    user_id, auth = await _signup(client)
    conn = await asyncpg.connect(dbsupport.asyncpg_dsn(database_url))
    await conn.execute("""
        CREATE FUNCTION injected_failure() RETURNS trigger AS $$
        BEGIN RAISE EXCEPTION 'injected failure'; END $$ LANGUAGE plpgsql;
        CREATE TRIGGER injected_failure BEFORE UPDATE ON billing_accounts FOR EACH ROW
            EXECUTE FUNCTION injected_failure();
    """)
    evt = sf.checkout_completed("cus_AF", user_id)
    try:
        assert (await _post(client, evt)).status_code == 500
        assert await _fetch(database_url, "SELECT 1 FROM stripe_events") == []
        assert (
            await _fetch(database_url, "SELECT 1 FROM billing_accounts") == []
        )  # the insert rolled back too
    finally:
        await conn.execute(
            "DROP TRIGGER injected_failure ON billing_accounts; DROP FUNCTION injected_failure();"
        )
        await conn.close()
    assert (await _post(client, evt)).json()["duplicate"] is False
    assert (await client.get("/v1/billing/subscription", headers=auth)).json()["status"] == "active"


async def test_kill_switch_answers_503(make_client, database_url: str) -> None:
    client = await make_client(stripe_webhook_enabled=False)
    r = await _post(client, sf.invoice_paid("cus_K", "in_k", 1))
    assert r.status_code == 503 and int(r.headers["retry-after"]) > 0
    assert await _fetch(database_url, "SELECT 1 FROM stripe_events") == []


async def test_failure_at_commit_records_nothing_and_is_counted(
    client: httpx.AsyncClient, database_url: str
) -> None:
    # A deferred constraint trigger fails when the statement commits (autocommit: at its end): the
    # answer is 500 and nothing — dedup record included — is kept.
    conn = await asyncpg.connect(dbsupport.asyncpg_dsn(database_url))
    await conn.execute("""
        CREATE FUNCTION injected_commit_failure() RETURNS trigger AS $$
        BEGIN RAISE EXCEPTION 'injected at commit'; END $$ LANGUAGE plpgsql;
        CREATE CONSTRAINT TRIGGER injected_commit_failure AFTER INSERT ON payments
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION injected_commit_failure();
    """)
    before = _failed_count(await scrape(client))
    try:
        evt = sf.invoice_paid("cus_CF", "in_commit_fail", 4200)
        r = await _post(client, evt)
        assert r.status_code == 500
        assert await _fetch(database_url, "SELECT 1 FROM stripe_events") == []
        assert await _fetch(database_url, "SELECT 1 FROM payments") == []
    finally:
        await conn.execute(
            "DROP TRIGGER injected_commit_failure ON payments; DROP FUNCTION injected_commit_failure();"
        )
        await conn.close()
    assert _failed_count(await scrape(client)) == before + 1
    assert (await _post(client, evt)).json()["duplicate"] is False
    assert len(await _fetch(database_url, "SELECT 1 FROM payments")) == 1


def _failed_count(metrics: str) -> float:
    return sample(metrics, "webhook_events_total", type="invoice.paid", outcome="failed")


async def test_same_second_subscription_events_are_flagged(make_client, capfd) -> None:
    client = await make_client(log_level="INFO")
    now = int(time.time())
    await _post(client, sf.subscription("customer.subscription.updated", "cus_T", "active", created=now))
    await _post(client, sf.subscription("customer.subscription.updated", "cus_T", "past_due", created=now))
    err = capfd.readouterr().err
    assert "two subscription events in the same second" in err
