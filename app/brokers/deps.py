"""Broker linking's own dependencies: the OAuth client (503 while unconfigured) and the token cipher."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.core.crypto import TokenCipher
from app.core.errors import ServiceUnavailable
from app.providers.oauth import BrokerOAuth


async def get_broker_oauth(request: Request) -> BrokerOAuth:
    """The OAuth client built at startup; 503 while ALPACA_OAUTH_* is incomplete."""
    oauth: BrokerOAuth | None = request.app.state.broker_oauth
    if oauth is None:
        raise ServiceUnavailable(
            "Broker linking is not configured (ALPACA_OAUTH_CLIENT_ID, "
            "ALPACA_OAUTH_CLIENT_SECRET and ALPACA_OAUTH_REDIRECT_URI must be set).",
            retry_after=3600,
        )
    return oauth


async def get_token_cipher(request: Request) -> TokenCipher:
    cipher: TokenCipher = request.app.state.token_cipher
    return cipher


BrokerOAuthDep = Annotated[BrokerOAuth, Depends(get_broker_oauth)]
TokenCipherDep = Annotated[TokenCipher, Depends(get_token_cipher)]
