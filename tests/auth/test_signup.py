"""POST /v1/auth/signup: 201 shape, 409 (case-insensitive, race-safe), 422 with field names."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from app.core.security import ARGON2_MEMORY_COST_KIB, ARGON2_PARALLELISM, ARGON2_TIME_COST
from tests.auth.helpers import PASSWORD, assert_problem, error_fields, fetch, signup, unique_email, user_row


async def test_signup_returns_201_with_contract_fields_and_stores_argon2id(
    client: httpx.AsyncClient, database_url: str
) -> None:
    r = await signup(client, "Ada.Lovelace@Example.COM", display_name="  Ada   <b>Lovelace</b> ")
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"id", "email", "display_name"}
    assert body["email"] == "Ada.Lovelace@example.com"  # as typed; domain canonicalised
    assert body["display_name"] == "Ada Lovelace"
    row = await user_row(database_url, body["id"])
    assert row["email_normalized"] == "ada.lovelace@example.com"
    assert row["display_name"] == "Ada Lovelace"
    assert row["password_hash"].startswith(
        f"$argon2id$v=19$m={ARGON2_MEMORY_COST_KIB},t={ARGON2_TIME_COST},p={ARGON2_PARALLELISM}$"
    )
    assert PASSWORD not in row["password_hash"]


async def test_display_name_is_optional_and_markup_only_name_is_null(client: httpx.AsyncClient) -> None:
    r = await signup(client)
    assert r.status_code == 201 and r.json()["display_name"] is None
    r = await signup(client, display_name="<script>alert(1)</script>")
    assert r.status_code == 201 and r.json()["display_name"] is None


@pytest.mark.parametrize(
    "second", ["ada@example.com", "ADA@EXAMPLE.COM", "  Ada@Example.com ", "ａｄａ@example.com"]
)
async def test_existing_email_is_409_case_insensitively(client: httpx.AsyncClient, second: str) -> None:
    assert (await signup(client, "Ada@example.com")).status_code == 201
    body = assert_problem(await signup(client, second), 409)
    assert "exists" in body["detail"]


async def test_concurrent_duplicate_signups_create_exactly_one_account(
    client: httpx.AsyncClient, database_url: str
) -> None:
    variants = [
        "race@example.com",
        "Race@example.com",
        "RACE@example.com",
        "race@EXAMPLE.com",
        "rAce@example.com",
        "racE@example.com",
        "RaCe@example.com",
        "race@Example.Com",
    ]
    responses = await asyncio.gather(*(signup(client, e) for e in variants))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * (len(variants) - 1), [r.text for r in responses]
    for r in responses:
        if r.status_code == 409:
            assert_problem(r, 409)
    rows = await fetch(
        database_url, "SELECT count(*) AS n FROM users WHERE email_normalized = 'race@example.com'"
    )
    assert rows[0]["n"] == 1


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"email": "a@example.com", "password": "short"}, "password"),
        ({"email": "a@example.com", "password": "x" * 11}, "password"),
        ({"email": "a@example.com", "password": "x" * 1025}, "password"),
        ({"email": "a@example.com", "password": " " * 12}, "password"),
        ({"email": "a@example.com"}, "password"),
        ({"email": "not-an-email", "password": PASSWORD}, "email"),
        ({"email": "a@b", "password": PASSWORD}, "email"),
        ({"email": "Ada <a@example.com>", "password": PASSWORD}, "email"),
        ({"email": "a@example.com\u0000", "password": PASSWORD}, "email"),
        ({"email": "x" * 400 + "@example.com", "password": PASSWORD}, "email"),
        ({"password": PASSWORD}, "email"),
        ({"email": "a@example.com", "password": PASSWORD, "display_name": "bell\u0007"}, "display_name"),
        ({"email": "a@example.com", "password": PASSWORD, "display_name": "x" * 101}, "display_name"),
        ({"email": "a@example.com", "password": PASSWORD, "display_name": 42}, "display_name"),
        ({"email": "a@example.com", "password": PASSWORD, "is_admin": True}, "is_admin"),
        ({"email": "a@example.com", "password": PASSWORD, "bio": "<b>hi</b>"}, "bio"),
    ],
)
async def test_invalid_signup_is_422_naming_the_field(
    client: httpx.AsyncClient, database_url: str, payload: dict, field: str
) -> None:
    r = await client.post("/v1/auth/signup", json=payload)
    assert field in error_fields(r), r.json()
    assert (await fetch(database_url, "SELECT count(*) AS n FROM users"))[0]["n"] == 0


async def test_password_of_exactly_12_and_1024_characters_is_accepted(client: httpx.AsyncClient) -> None:
    assert (await signup(client, password="x" * 12)).status_code == 201
    assert (await signup(client, password="y" * 1024)).status_code == 201


async def test_weak_password_error_does_not_echo_the_password(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/auth/signup", json={"email": unique_email(), "password": "hunter2-abc"})
    assert_problem(r, 422)
    assert "hunter2-abc" not in r.text
