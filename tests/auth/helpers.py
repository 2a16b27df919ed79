"""Small helpers for the auth tests: real HTTP calls and direct reads of the users table."""

from __future__ import annotations

import itertools
from typing import Any

import asyncpg
import httpx

from tests.support import db as dbsupport
from tests.support.problems import assert_problem  # noqa: F401 (re-exported for tests)

PASSWORD = "correct horse battery staple"
_counter = itertools.count(1)


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}{next(_counter)}@example.com"


async def signup(
    client: httpx.AsyncClient, email: str | None = None, password: str = PASSWORD, **extra: Any
) -> httpx.Response:
    return await client.post(
        "/v1/auth/signup", json={"email": email or unique_email(), "password": password, **extra}
    )


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD, **kw: Any) -> httpx.Response:
    return await client.post("/v1/auth/login", json={"email": email, "password": password}, **kw)


async def signup_and_token(
    client: httpx.AsyncClient, email: str | None = None, **extra: Any
) -> tuple[dict, str]:
    email = email or unique_email()
    r = await signup(client, email, **extra)
    assert r.status_code == 201, r.text
    t = await login(client, email)
    assert t.status_code == 200, t.text
    return r.json(), t.json()["access_token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def peer(client: httpx.AsyncClient, ip: str) -> httpx.AsyncClient:
    """Another client on the same app, seen from another IP address."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=client.app, client=(ip, 40000)),  # type: ignore[attr-defined]
        base_url="http://testserver",
        timeout=30,
    )


async def fetch(database_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dbsupport.asyncpg_dsn(database_url))
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def user_row(database_url: str, user_id: str) -> asyncpg.Record | None:
    rows = await fetch(database_url, "SELECT * FROM users WHERE id = $1::uuid", user_id)
    return rows[0] if rows else None


def error_fields(r: httpx.Response) -> set[str]:
    return {e["field"] for e in assert_problem(r, 422)["errors"]}
