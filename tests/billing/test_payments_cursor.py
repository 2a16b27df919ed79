"""GET /v1/billing/payments?cursor=…: a cursor the server did not issue (tampered, forged, out of range,
garbage) is 422 problem+json naming ``query.cursor`` — never 500 — and a real one keeps paging."""

from __future__ import annotations

import base64
import time
import uuid

import httpx
import pytest

from tests.billing import stripe_fake as sf
from tests.support.problems import assert_problem

PAYMENTS = "/v1/billing/payments"
WEBHOOK = "/v1/webhooks/stripe"


async def _signup(client: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    email, password = f"cursor-{uuid.uuid4().hex[:8]}@example.com", "correct horse battery staple"
    r = await client.post("/v1/auth/signup", json={"email": email, "password": password})
    assert r.status_code == 201, r.text
    token = (await client.post("/v1/auth/login", json={"email": email, "password": password})).json()[
        "access_token"
    ]
    return r.json()["id"], {"Authorization": f"Bearer {token}"}


async def _post(client: httpx.AsyncClient, evt: dict) -> None:
    body, headers = sf.signed(evt)
    assert (await client.post(WEBHOOK, content=body, headers=headers)).status_code == 200


async def _paying_user(client: httpx.AsyncClient, customer: str, payments: int) -> dict[str, str]:
    user_id, auth = await _signup(client)
    now = int(time.time())
    await _post(client, sf.checkout_completed(customer, user_id, created=now - 100))
    for i in range(payments):
        await _post(client, sf.invoice_paid(customer, f"in_{customer}_{i}", 100 + i, created=now - 90 + i))
    return auth


def _b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


_PID = "00000000-0000-4000-8000-000000000000"
# Cursors in the shape the server used to issue (base64 of "<isoformat>|<uuid>"), with fields a client
# can forge: each of these must be refused as a bad cursor, whatever the server's format now is.
FORGED = {
    "year_1_east_of_utc": _b64(f"0001-01-01T00:00:00+14:00|{_PID}"),  # before year 1 once in UTC
    "year_9999_west_of_utc": _b64(f"9999-12-31T23:59:59-14:00|{_PID}"),  # after year 9999 once in UTC
    "year_0": _b64(f"0000-01-01T00:00:00+00:00|{_PID}"),
    "naive_timestamp": _b64(f"2026-01-01T00:00:00|{_PID}"),
    "date_only": _b64(f"2026-01-01|{_PID}"),
    "garbage_timestamp": _b64(f"yesterday at noon|{_PID}"),
    "garbage_uuid": _b64("2026-01-01T00:00:00+00:00|not-a-uuid"),
    "no_separator": _b64("2026-01-01T00:00:00+00:00"),
    "not_base64": "!!!",
    "not_utf8": base64.urlsafe_b64encode(b"\xff\xfe\xfd|x").decode(),
    "non_ascii": "caf\u00e9",
    "nul": "\x00",
    "whitespace": "   ",
}


@pytest.mark.parametrize("cursor", list(FORGED.values()), ids=list(FORGED))
async def test_forged_or_garbage_cursor_is_422_naming_the_field(
    client: httpx.AsyncClient, cursor: str
) -> None:
    auth = await _paying_user(client, "cus_cur", 1)
    body = assert_problem(await client.get(PAYMENTS, params={"cursor": cursor}, headers=auth), 422)
    assert [e["field"] for e in body["errors"]] == ["query.cursor"]


async def test_empty_and_over_long_cursors_are_422(client: httpx.AsyncClient) -> None:
    auth = await _paying_user(client, "cus_len", 0)
    for cursor in ("", "A" * 201):
        body = assert_problem(await client.get(PAYMENTS, params={"cursor": cursor}, headers=auth), 422)
        assert [e["field"] for e in body["errors"]] == ["query.cursor"], cursor


async def test_real_cursor_pages_and_any_change_to_it_is_refused(client: httpx.AsyncClient) -> None:
    auth = await _paying_user(client, "cus_page", 5)
    seen: list[str] = []
    cursor: str | None = None
    cursors: list[str] = []
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        r = await client.get(PAYMENTS, params=params, headers=auth)
        assert r.status_code == 200, r.text
        seen += [p["invoice_id"] for p in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
        cursors.append(cursor)
    assert seen == [f"in_cus_page_{i}" for i in range(4, -1, -1)]
    # Flip each character of a real cursor in turn: every variant is refused (422), none answers 500
    # or a page built from forged fields.
    real = cursors[0]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
    for i, ch in enumerate(real):
        tampered = real[:i] + alphabet[(alphabet.index(ch) + 1) % len(alphabet)] + real[i + 1 :]
        r = await client.get(PAYMENTS, params={"cursor": tampered}, headers=auth)
        assert r.status_code == 422, (i, tampered, r.text)
    for cut in (real[:-1], real[1:], real + "A"):
        assert (await client.get(PAYMENTS, params={"cursor": cut}, headers=auth)).status_code == 422, cut


async def test_a_cursor_is_only_good_for_the_user_it_was_issued_to(client: httpx.AsyncClient) -> None:
    auth = await _paying_user(client, "cus_owner", 3)
    other = await _paying_user(client, "cus_other", 3)
    cursor = (await client.get(PAYMENTS, params={"limit": 1}, headers=auth)).json()["next_cursor"]
    assert cursor
    body = assert_problem(await client.get(PAYMENTS, params={"cursor": cursor}, headers=other), 422)
    assert [e["field"] for e in body["errors"]] == ["query.cursor"]
