"""Broker linking over OAuth against a fake token endpoint on the real outbound client."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest
from cryptography.fernet import Fernet

from app.brokers.repository import BrokerRepository
from app.core.crypto import InvalidToken, TokenCipher
from tests.support import db as dbsupport
from tests.support.settings import TEST_FERNET_KEY

ROOT = Path(__file__).resolve().parents[2]
FRONTEND = "http://localhost:3000"
TOKEN_URL = "https://oauth.fake/oauth/token"
OAUTH = {
    "alpaca_oauth_client_id": "client-123",
    "alpaca_oauth_client_secret": "client-secret-xyz",
    "alpaca_oauth_redirect_uri": "http://localhost:8000/v1/oauth/alpaca/callback",
    "alpaca_oauth_token_url": TOKEN_URL,
    "alpaca_oauth_authorize_url": "https://oauth.fake/oauth/authorize",
}
ACCESS_TOKEN = "alpaca-access-token-SECRET-0001"


class FakeTokenEndpoint:
    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.mode == "hang":
            await asyncio.sleep(30)
        if self.mode == "500":
            return httpx.Response(500, json={"message": "internal"})
        if self.mode == "400":
            return httpx.Response(400, json={"error": "invalid_grant"})
        await asyncio.sleep(0.05)  # let parallel callbacks overlap
        return httpx.Response(
            200, json={"access_token": ACCESS_TOKEN, "token_type": "bearer", "scope": "account:write trading"}
        )


async def _app(make_client, fake: FakeTokenEndpoint, **overrides):
    def hook(app):
        app.state.http_transports = {"alpaca-oauth": httpx.MockTransport(fake)}

    return await make_client(app_hook=hook, **{**OAUTH, **overrides})


async def _user(client: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    email, password = f"u-{uuid.uuid4().hex[:8]}@example.com", "correct horse battery staple"
    r = await client.post("/v1/auth/signup", json={"email": email, "password": password})
    assert r.status_code == 201, r.text
    token = (await client.post("/v1/auth/login", json={"email": email, "password": password})).json()[
        "access_token"
    ]
    return r.json()["id"], {"Authorization": f"Bearer {token}"}


async def _state(client: httpx.AsyncClient, auth: dict[str, str]) -> str:
    r = await client.get("/v1/oauth/alpaca/authorize", headers=auth)
    assert r.status_code == 200, r.text
    query = parse_qs(urlsplit(r.json()["authorize_url"]).query)
    return query["state"][0]


async def _rows(database_url: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dbsupport.asyncpg_dsn(database_url))
    try:
        return await conn.fetch(sql)
    finally:
        await conn.close()


async def test_full_round_trip_stores_the_token_encrypted(make_client, database_url: str) -> None:
    fake = FakeTokenEndpoint()
    client = await _app(make_client, fake)
    user_id, auth = await _user(client)
    r = await client.get("/v1/oauth/alpaca/authorize", headers=auth)
    url = urlsplit(r.json()["authorize_url"])
    query = parse_qs(url.query)
    assert f"{url.scheme}://{url.netloc}{url.path}" == OAUTH["alpaca_oauth_authorize_url"]
    assert query["response_type"] == ["code"] and query["client_id"] == ["client-123"]
    assert query["redirect_uri"] == [OAUTH["alpaca_oauth_redirect_uri"]] and query["scope"]
    state = query["state"][0]
    assert len(state) >= 43  # 32 random bytes, url-safe base64
    assert not await _rows(database_url, f"SELECT 1 FROM oauth_states WHERE state_hash = '{state}'")  # hashed

    cb = await client.get("/v1/oauth/alpaca/callback", params={"code": "the-code", "state": state})
    assert cb.status_code == 302
    assert cb.headers["location"] == f"{FRONTEND}/settings/broker?status=connected"
    sent = parse_qs(fake.requests[0].content.decode())
    assert fake.requests[0].method == "POST" and str(fake.requests[0].url) == TOKEN_URL
    assert sent == {
        "grant_type": ["authorization_code"],
        "code": ["the-code"],
        "client_id": ["client-123"],
        "client_secret": ["client-secret-xyz"],
        "redirect_uri": [OAUTH["alpaca_oauth_redirect_uri"]],
    }

    conn = (await client.get("/v1/broker/connection", headers=auth)).json()
    assert conn["provider"] == "alpaca" and conn["connected"] is True and conn["connected_at"]
    stored = (await _rows(database_url, "SELECT access_token_encrypted FROM broker_connections"))[0][0]
    assert ACCESS_TOKEN not in stored
    assert TokenCipher([TEST_FERNET_KEY]).decrypt(stored) == ACCESS_TOKEN

    assert (await client.delete("/v1/broker/connection", headers=auth)).status_code == 204
    assert (await client.get("/v1/broker/connection", headers=auth)).json()["connected"] is False
    assert (await client.delete("/v1/broker/connection", headers=auth)).status_code == 204


async def test_reused_unknown_expired_and_foreign_state_are_400_and_store_nothing(
    make_client, database_url: str
) -> None:
    fake = FakeTokenEndpoint()
    client = await _app(make_client, fake)
    _, auth = await _user(client)
    _, other_auth = await _user(client)

    state = await _state(client, auth)
    assert (
        await client.get("/v1/oauth/alpaca/callback", params={"code": "c", "state": state})
    ).status_code == 302
    await client.delete("/v1/broker/connection", headers=auth)
    calls = len(fake.requests)
    reused = await client.get("/v1/oauth/alpaca/callback", params={"code": "c", "state": state})
    assert reused.status_code == 400 and reused.headers["content-type"].startswith("application/problem+json")

    unknown = await client.get("/v1/oauth/alpaca/callback", params={"code": "c", "state": "x" * 43})
    assert unknown.status_code == 400

    expired = await _state(client, auth)
    conn = await asyncpg.connect(dbsupport.asyncpg_dsn(database_url))
    await conn.execute(
        "UPDATE oauth_states SET expires_at = now() - interval '1 second' WHERE used_at IS NULL"
    )
    await conn.close()
    assert (
        await client.get("/v1/oauth/alpaca/callback", params={"code": "c", "state": expired})
    ).status_code == 400

    foreign = await _state(client, auth)
    r = await client.get(
        "/v1/oauth/alpaca/callback", params={"code": "c", "state": foreign}, headers=other_auth
    )
    assert r.status_code == 400
    # The foreign attempt did not burn the owner's state.
    assert (
        await client.get("/v1/oauth/alpaca/callback", params={"code": "c", "state": foreign}, headers=auth)
    ).status_code == 302
    await client.delete("/v1/broker/connection", headers=auth)

    assert len(fake.requests) == calls + 1  # only the owner's valid callback reached the provider
    assert await _rows(database_url, "SELECT 1 FROM broker_connections") == []


@pytest.mark.parametrize("mode", ["500", "400", "hang"])
async def test_provider_failure_redirects_with_error_and_stores_nothing(
    make_client, database_url: str, mode: str
) -> None:
    client = await _app(make_client, FakeTokenEndpoint(mode), http_timeout_seconds=1)
    _, auth = await _user(client)
    state = await _state(client, auth)
    r = await client.get("/v1/oauth/alpaca/callback", params={"code": "c", "state": state})
    assert r.status_code == 302
    assert r.headers["location"] == f"{FRONTEND}/settings/broker?status=error"
    assert (await client.get("/v1/broker/connection", headers=auth)).json()["connected"] is False
    assert await _rows(database_url, "SELECT 1 FROM broker_connections") == []


async def test_provider_post_is_never_retried(make_client) -> None:
    fake = FakeTokenEndpoint("500")
    client = await _app(make_client, fake)
    _, auth = await _user(client)
    await client.get("/v1/oauth/alpaca/callback", params={"code": "c", "state": await _state(client, auth)})
    assert len(fake.requests) == 1


async def test_parallel_callbacks_with_one_state_link_once(make_client, database_url: str) -> None:
    fake = FakeTokenEndpoint()
    client = await _app(make_client, fake)
    _, auth = await _user(client)
    state = await _state(client, auth)
    responses = await asyncio.gather(
        *(client.get("/v1/oauth/alpaca/callback", params={"code": "c", "state": state}) for _ in range(10))
    )
    assert sorted(r.status_code for r in responses) == [302] + [400] * 9
    assert len(fake.requests) == 1
    assert len(await _rows(database_url, "SELECT 1 FROM broker_connections")) == 1


async def test_redirect_goes_only_to_the_first_frontend_origin(make_client) -> None:
    client = await _app(
        make_client, FakeTokenEndpoint(), frontend_url="https://app.example.com,https://admin.example.com"
    )
    _, auth = await _user(client)
    state = await _state(client, auth)
    r = await client.get(
        "/v1/oauth/alpaca/callback",
        params={
            "code": "c",
            "state": state,
            "redirect_uri": "https://evil.example",
            "next": "https://evil.example",
            "return_to": "//evil.example",
        },
        headers={"Origin": "https://evil.example", "Referer": "https://evil.example/"},
    )
    assert r.headers["location"] == "https://app.example.com/settings/broker?status=connected"


async def test_declined_at_provider_burns_state_and_stores_nothing(make_client, database_url: str) -> None:
    fake = FakeTokenEndpoint()
    client = await _app(make_client, fake)
    _, auth = await _user(client)
    state = await _state(client, auth)
    r = await client.get("/v1/oauth/alpaca/callback", params={"error": "access_denied", "state": state})
    assert r.headers["location"].endswith("status=error") and fake.requests == []
    assert (
        await client.get("/v1/oauth/alpaca/callback", params={"code": "c", "state": state})
    ).status_code == 400


async def test_oauth_unconfigured_answers_503(client: httpx.AsyncClient) -> None:
    _, auth = await _user(client)
    r = await client.get("/v1/oauth/alpaca/authorize", headers=auth)
    assert r.status_code == 503 and "ALPACA_OAUTH_CLIENT_ID" in r.json()["detail"]
    assert (await client.get("/v1/oauth/alpaca/authorize")).status_code == 401


async def test_key_rotation_keeps_old_tokens_readable_and_cli_reencrypts(
    make_client, database_url: str
) -> None:
    old_key = TEST_FERNET_KEY
    client = await _app(make_client, FakeTokenEndpoint())
    user_id, auth = await _user(client)
    await client.get("/v1/oauth/alpaca/callback", params={"code": "c", "state": await _state(client, auth)})
    before = (await _rows(database_url, "SELECT access_token_encrypted FROM broker_connections"))[0][0]

    new_key = Fernet.generate_key().decode()
    rotated_app = await _app(make_client, FakeTokenEndpoint(), token_encryption_key=f"{new_key},{old_key}")
    assert (await rotated_app.get("/v1/broker/connection", headers=auth)).json()["connected"] is True
    # The app's own read path (what the live broker provider uses) still opens the old token.
    assert await _app_access_token(rotated_app, user_id) == ACCESS_TOKEN

    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "FRONTEND_URL": FRONTEND,
        "JWT_SECRET": "cli-jwt-secret-0123456789-abcdefghijklmnop",
        "STRIPE_WEBHOOK_SECRET": "whsec_cli_0123456789",
        "TOKEN_ENCRYPTION_KEY": f"{new_key},{old_key}",
        "PYTHONPATH": str(ROOT),
    }
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli", "rotate-token-keys"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert '"rotated": 1' in proc.stdout
    after = (await _rows(database_url, "SELECT access_token_encrypted FROM broker_connections"))[0][0]
    assert after != before
    assert TokenCipher([new_key]).decrypt(after) == ACCESS_TOKEN
    with pytest.raises(InvalidToken):
        TokenCipher([old_key]).decrypt(after)
    # Once rotated, the old key can be dropped from the configuration.
    new_only = await _app(make_client, FakeTokenEndpoint(), token_encryption_key=new_key)
    assert await _app_access_token(new_only, user_id) == ACCESS_TOKEN


async def _app_access_token(client: httpx.AsyncClient, user_id: str) -> str | None:
    """The token as the app itself reads it back: its database and its configured cipher."""
    app = client.app  # type: ignore[attr-defined]
    async with app.state.database.own_transaction() as session:
        row = await BrokerRepository(session).get_connection(uuid.UUID(user_id))
    return app.state.token_cipher.decrypt(row.access_token_encrypted) if row else None
