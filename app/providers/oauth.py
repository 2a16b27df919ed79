"""OAuth 2.0 (authorization-code grant) for linking a user's brokerage account, behind one Protocol.

* ``AlpacaOAuth`` (live): the code exchange is a form POST through the shared outbound layer: total
  deadline, circuit breaker, metrics — and no retry (a POST is not idempotent, and an authorization
  code is single-use).
* ``LocalOAuth`` (local, ``BROKER_OAUTH_PROVIDER=local``, refused in production): an in-process
  authorization server for development and tests. Consent is granted at once — the authorize URL
  is the redirect URI itself, carrying a code — and the exchange, with no network, accepts only a
  code it issued, once.

``build_broker_oauth`` picks one from the settings at startup; ``None`` (routes answer 503) while
the live one lacks its client id, secret or redirect URI.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlencode

from app.core.config import Settings
from app.core.http import Outbound, OutboundClient

PROVIDER = "alpaca-oauth"
# `make run`'s own callback: where LocalOAuth sends the browser when ALPACA_OAUTH_REDIRECT_URI is unset.
LOCAL_REDIRECT_URI = "http://127.0.0.1:8000/v1/oauth/alpaca/callback"
SCOPE = "account:write trading"


class OAuthExchangeError(Exception):
    """The provider did not give us a usable token (refused the code or answered garbage)."""


@dataclass(frozen=True, slots=True)
class OAuthToken:
    access_token: str
    token_type: str
    scope: str | None


class BrokerOAuth(Protocol):
    def authorize_url(self, state: str) -> str:
        """Where to send the user to grant access; the provider later redirects back with ``state``."""
        ...

    async def exchange(self, code: str) -> OAuthToken:
        """Trade the code for an access token. Raises ``UpstreamError`` (timeout, 5xx, breaker open)
        or ``OAuthExchangeError`` (refused code, unusable answer)."""
        ...


class AlpacaOAuth:
    def __init__(
        self,
        *,
        client: OutboundClient,
        authorize_url: str,
        token_url: str,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
    ) -> None:
        self.client = client
        self._authorize_url = authorize_url
        self._token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._redirect_uri = redirect_uri

    def authorize_url(self, state: str) -> str:
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self._client_id,
                "redirect_uri": self._redirect_uri,
                "state": state,
                "scope": SCOPE,
            }
        )
        return f"{self._authorize_url}?{query}"

    async def exchange(self, code: str) -> OAuthToken:
        """Trade the code for an access token. Raises UpstreamError (timeout, 5xx, breaker open)
        or OAuthExchangeError (4xx or an unusable body)."""
        response = await self.client.post(
            self._token_url,
            data={
                "grant_type": "authorization_code",
                "code": code,
                "client_id": self._client_id,
                "client_secret": self._client_secret,
                "redirect_uri": self._redirect_uri,
            },
        )
        if response.status_code != 200:
            raise OAuthExchangeError(f"token endpoint answered {response.status_code}")
        try:
            body = response.json()
            token = body["access_token"]
        except (ValueError, KeyError, TypeError):
            raise OAuthExchangeError("token endpoint answered without an access_token") from None
        if not isinstance(token, str) or not token or len(token) > 4096:
            raise OAuthExchangeError("token endpoint answered an unusable access_token")
        token_type = str(body.get("token_type") or "bearer")
        if token_type.lower() != "bearer":
            raise OAuthExchangeError(f"unsupported token_type {token_type!r}")
        scope = body.get("scope")
        return OAuthToken(access_token=token, token_type="bearer", scope=str(scope)[:255] if scope else None)  # nosec B106 # the OAuth token type, not a secret


class LocalOAuth:
    """An in-process authorization server: consent is immediate; each code it issues is single-use.

    One process's memory holds the codes (at most ``max_pending``, oldest dropped first): made for
    ``make run`` and tests, not for several workers."""

    def __init__(self, *, redirect_uri: str, max_pending: int = 10_000) -> None:
        self._redirect_uri = redirect_uri
        self._max_pending = max_pending
        self._issued: OrderedDict[str, None] = OrderedDict()

    def authorize_url(self, state: str) -> str:
        code = "local-" + secrets.token_urlsafe(32)
        self._issued[code] = None
        while len(self._issued) > self._max_pending:
            self._issued.popitem(last=False)
        return f"{self._redirect_uri}?{urlencode({'code': code, 'state': state})}"

    async def exchange(self, code: str) -> OAuthToken:
        if self._issued.pop(code, False) is False:
            raise OAuthExchangeError("the local authorization server did not issue this code, or it was used")
        return OAuthToken(access_token="local-" + secrets.token_urlsafe(32), token_type="bearer", scope=SCOPE)  # nosec B106 # the OAuth token type, not a secret


def build_broker_oauth(settings: Settings, outbound: Outbound) -> BrokerOAuth | None:
    """The OAuth client BROKER_OAUTH_PROVIDER names, or None (routes answer 503) while the live one's
    settings are incomplete."""
    if settings.broker_oauth_provider == "local":
        return LocalOAuth(redirect_uri=settings.alpaca_oauth_redirect_uri or LOCAL_REDIRECT_URI)
    secret = (
        settings.alpaca_oauth_client_secret.get_secret_value() if settings.alpaca_oauth_client_secret else ""
    )
    if not (settings.alpaca_oauth_client_id and secret and settings.alpaca_oauth_redirect_uri):
        return None
    client = outbound.create(PROVIDER, base_url=settings.alpaca_oauth_token_url)
    return AlpacaOAuth(
        client=client,
        authorize_url=settings.alpaca_oauth_authorize_url,
        token_url=settings.alpaca_oauth_token_url,
        client_id=settings.alpaca_oauth_client_id,
        client_secret=secret,
        redirect_uri=settings.alpaca_oauth_redirect_uri,
    )
