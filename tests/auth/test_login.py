"""POST /v1/auth/login: tokens, one answer for unknown email and wrong password, equal Argon2 work,
re-hash on login when parameters change, Unicode-normalised passwords."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import jwt
import pytest
from argon2 import PasswordHasher

from app.core.security import ARGON2_MEMORY_COST_KIB, ARGON2_PARALLELISM, ARGON2_TIME_COST
from tests.auth.helpers import (
    PASSWORD,
    assert_problem,
    bearer,
    error_fields,
    fetch,
    login,
    peer,
    signup,
    unique_email,
    user_row,
)
from tests.support.metrics import sample
from tests.support.settings import TEST_JWT_SECRET

CURRENT_PREFIX = f"$argon2id$v=19$m={ARGON2_MEMORY_COST_KIB},t={ARGON2_TIME_COST},p={ARGON2_PARALLELISM}$"


async def test_login_returns_a_bearer_token_with_the_contract_claims(client: httpx.AsyncClient) -> None:
    email = unique_email()
    user = (await signup(client, email)).json()
    before = int(time.time())
    r = await login(client, email.upper())  # the email is case-insensitive
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer" and body["expires_in"] == 900
    assert r.headers["cache-control"] == "no-store"
    assert jwt.get_unverified_header(body["access_token"])["alg"] == "HS256"
    claims = jwt.decode(
        body["access_token"],
        TEST_JWT_SECRET,
        algorithms=["HS256"],
        audience="tradedesk-api",
        issuer="tradedesk",
    )
    assert claims["sub"] == user["id"]
    assert claims["iss"] == "tradedesk" and claims["aud"] == "tradedesk-api"
    assert before - 1 <= claims["iat"] <= int(time.time()) + 1
    assert claims["exp"] - claims["iat"] == 900
    assert len(claims["jti"]) >= 16
    me = await client.get("/v1/auth/me", headers=bearer(body["access_token"]))
    assert me.status_code == 200 and me.json()["id"] == user["id"]
    second = (await login(client, email)).json()["access_token"]
    assert jwt.decode(second, options={"verify_signature": False})["jti"] != claims["jti"]


async def test_token_lifetime_follows_the_setting(make_client) -> None:
    client = await make_client(access_token_ttl_seconds=120)
    email = unique_email()
    await signup(client, email)
    body = (await login(client, email)).json()
    assert body["expires_in"] == 120
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 120


def _comparable(r: httpx.Response) -> tuple[dict, dict[str, str]]:
    body = r.json()
    assert body.pop("request_id") == r.headers["x-request-id"]
    headers = {k.lower(): v for k, v in r.headers.items() if k.lower() not in ("x-request-id", "date")}
    return body, headers


async def test_unknown_email_and_wrong_password_answers_are_identical(make_client) -> None:
    # A day-long limit window: X-RateLimit-Reset counts down to a window edge that is hours away, so
    # concurrent answers can differ by at most the one-second tick they straddle.
    client = await make_client(rate_limit_login="5/day")
    email = unique_email("victim")
    await signup(client, email)
    # Separate client IPs and separate emails, so the three answers see identical rate-limit counters.
    async with peer(client, "10.0.0.1") as a, peer(client, "10.0.0.2") as b, peer(client, "10.0.0.3") as c:
        wrong, unknown, malformed = await asyncio.gather(
            login(a, email, "wrong password, long enough"),
            login(b, unique_email("nobody"), "wrong password, long enough"),
            login(c, "not an email at all", "wrong password, long enough"),
        )
    bodies, headers = zip(*(_comparable(r) for r in (wrong, unknown, malformed)), strict=True)
    for r in (wrong, unknown, malformed):
        assert_problem(r, 401)
        assert r.headers["www-authenticate"] == "Bearer"
    assert bodies[0] == bodies[1] == bodies[2]
    assert bodies[0]["detail"] == "The email or password is incorrect."
    # X-RateLimit-Reset is a countdown in whole seconds: two answers a few ms apart may straddle a tick.
    resets = [int(h.pop("x-ratelimit-reset")) for h in headers]
    assert max(resets) - min(resets) <= 1
    assert headers[0] == headers[1] == headers[2]
    # Byte-identical once the request id is put back to the same value.
    raw = [r.content.replace(r.headers["x-request-id"].encode(), b"RID") for r in (wrong, unknown, malformed)]
    assert raw[0] == raw[1] == raw[2]


def _verify_count(metrics: str) -> float:
    return sample(metrics, "password_hash_duration_seconds_count", operation="verify")


def _hash_count(metrics: str) -> float:
    return sample(metrics, "password_hash_duration_seconds_count", operation="hash")


async def test_unknown_email_costs_the_same_argon2_work_as_a_wrong_password(
    client: httpx.AsyncClient,
) -> None:
    email = unique_email()
    await signup(client, email)
    # The dummy hash an unknown email is checked against has exactly the real parameters.
    passwords = client.app.state.passwords  # type: ignore[attr-defined]
    assert passwords._dummy_hash.startswith(CURRENT_PREFIX)

    async def verifies_for(e: str) -> tuple[int, float]:
        before = _verify_count((await client.get("/metrics")).text)
        r = await login(client, e, "definitely the wrong one")
        return r.status_code, _verify_count((await client.get("/metrics")).text) - before

    assert await verifies_for(email) == (401, 1)
    assert await verifies_for(unique_email("ghost")) == (401, 1)
    assert await verifies_for("not-an-email") == (401, 1)


async def test_login_rehashes_when_parameters_changed(client: httpx.AsyncClient, database_url: str) -> None:
    email = unique_email()
    user = (await signup(client, email)).json()
    legacy = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(PASSWORD)
    await fetch(database_url, "UPDATE users SET password_hash = $1 WHERE id = $2::uuid", legacy, user["id"])

    # A wrong password must not touch the stored hash.
    assert (await login(client, email, "not the password at all")).status_code == 401
    assert (await user_row(database_url, user["id"]))["password_hash"] == legacy

    assert (await login(client, email)).status_code == 200
    upgraded = (await user_row(database_url, user["id"]))["password_hash"]
    assert upgraded != legacy and upgraded.startswith(CURRENT_PREFIX)
    # The new hash verifies, and no further re-hash happens.
    before = _hash_count((await client.get("/metrics")).text)
    assert (await login(client, email)).status_code == 200
    assert (await user_row(database_url, user["id"]))["password_hash"] == upgraded
    assert _hash_count((await client.get("/metrics")).text) == before


@pytest.mark.parametrize(
    ("at_signup", "at_login"),
    [
        ("Cafe\u0301-latte-12345", "Caf\u00e9-latte-12345"),  # decomposed vs precomposed é
        ("\uff30assword-wide-123", "Password-wide-123"),  # full-width P (NFKC folds it)
    ],
)
async def test_password_is_unicode_normalised(
    client: httpx.AsyncClient, at_signup: str, at_login: str
) -> None:
    email = unique_email()
    assert (await signup(client, email, password=at_signup)).status_code == 201
    assert (await login(client, email, at_login)).status_code == 200


async def test_password_is_not_trimmed_or_case_folded(client: httpx.AsyncClient) -> None:
    email = unique_email()
    await signup(client, email, password="  Secret passphrase  ")
    assert (await login(client, email, "Secret passphrase")).status_code == 401
    assert (await login(client, email, "  secret passphrase  ")).status_code == 401
    assert (await login(client, email, "  Secret passphrase  ")).status_code == 200


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"email": "a@example.com"}, "password"),
        ({"password": PASSWORD}, "email"),
        ({"email": "a@example.com", "password": ""}, "password"),
        ({"email": "a@example.com", "password": "x" * 1025}, "password"),
        ({"email": "a@example.com", "password": PASSWORD, "remember": True}, "remember"),
    ],
)
async def test_malformed_login_is_422(client: httpx.AsyncClient, payload: dict, field: str) -> None:
    assert field in error_fields(await client.post("/v1/auth/login", json=payload))


async def test_deleted_account_cannot_log_in(client: httpx.AsyncClient, database_url: str) -> None:
    email = unique_email()
    user = (await signup(client, email)).json()
    await fetch(database_url, "DELETE FROM users WHERE id = $1::uuid", user["id"])
    assert_problem(await login(client, email), 401)
    assert uuid.UUID(user["id"])
