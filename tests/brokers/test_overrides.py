"""The broker-link OAuth client is reached through BrokerOAuthDep: a test swaps it with dependency_overrides,
and BROKER_OAUTH_PROVIDER=local picks the in-process one at startup (never in production)."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from app.brokers.deps import get_broker_oauth
from app.core.config import ConfigurationError
from app.providers.oauth import BrokerOAuth, LocalOAuth, OAuthExchangeError
from tests.support.settings import make_settings

REDIRECT = "http://127.0.0.1:8000/v1/oauth/alpaca/callback"


async def _user(client: httpx.AsyncClient) -> dict[str, str]:
    email, password = f"b-{uuid.uuid4().hex[:8]}@example.com", "correct horse battery staple"
    assert (
        await client.post("/v1/auth/signup", json={"email": email, "password": password})
    ).status_code == 201
    token = (await client.post("/v1/auth/login", json={"email": email, "password": password})).json()[
        "access_token"
    ]
    return {"Authorization": f"Bearer {token}"}


async def _link_through(
    client: httpx.AsyncClient, headers: dict[str, str], *, code: str | None = None
) -> str:
    """Start a link, follow the provider's redirect back to our callback; the front-end status it ends on."""
    url = (await client.get("/v1/oauth/alpaca/authorize", headers=headers)).json()["authorize_url"]
    query = parse_qs(urlsplit(url).query)
    assert url.startswith(REDIRECT)  # the local server grants consent at once: straight back to us
    callback = await client.get(
        "/v1/oauth/alpaca/callback",
        headers=headers,
        params={"code": code or query["code"][0], "state": query["state"][0]},
    )
    assert callback.status_code == 302
    return parse_qs(urlsplit(callback.headers["location"]).query)["status"][0]


async def test_oauth_client_is_swapped_through_dependency_overrides(make_client) -> None:
    local = LocalOAuth(redirect_uri=REDIRECT)

    async def oauth() -> BrokerOAuth:
        return local

    # No ALPACA_OAUTH_* at all: without the override these routes answer 503.
    client = await make_client(
        app_hook=lambda app: app.dependency_overrides.update({get_broker_oauth: oauth})
    )
    headers = await _user(client)
    assert await _link_through(client, headers) == "connected"
    connection = (await client.get("/v1/broker/connection", headers=headers)).json()
    assert connection["connected"] is True


async def test_local_oauth_is_chosen_from_settings_and_refuses_codes_it_did_not_issue(make_client) -> None:
    client = await make_client(broker_oauth_provider="local")
    headers = await _user(client)
    assert await _link_through(client, headers, code="local-" + "0" * 64) == "error"  # forged: nothing stored
    assert (await client.get("/v1/broker/connection", headers=headers)).json()["connected"] is False
    assert await _link_through(client, headers) == "connected"


async def test_local_oauth_exchange_is_offline_and_strict() -> None:
    local = LocalOAuth(redirect_uri=REDIRECT)
    code = parse_qs(urlsplit(local.authorize_url("some-state")).query)["code"][0]
    token = await local.exchange(code)
    assert token.access_token.startswith("local-") and token.token_type == "bearer"
    with pytest.raises(OAuthExchangeError):
        await local.exchange(code)  # single-use
    with pytest.raises(OAuthExchangeError):
        await local.exchange("local-a-code-from-somewhere-else")


def test_local_oauth_is_refused_in_production(database_url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        make_settings(
            database_url,
            app_env="production",
            frontend_url="https://app.example.com",
            broker_oauth_provider="local",
        )
    assert "BROKER_OAUTH_PROVIDER" in str(info.value)
