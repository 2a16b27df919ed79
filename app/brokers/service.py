"""Broker linking over OAuth, in atomic phases.

1. ``start_link``: a random ``state`` (32 bytes) is stored hashed, bound to the user, valid 10 min.
2. ``complete_link``:
   a. the state is consumed with one ``UPDATE … WHERE used_at IS NULL AND expires_at > now()
      RETURNING user_id`` in its own committed transaction — a replayed or parallel callback finds
      it used and gets 400;
   b. the code is exchanged over HTTP **outside** any transaction (no pooled connection is held
      while the provider thinks);
   c. the encrypted token and the link row are written in one transaction.
   Any failure after (a) leaves nothing stored; the user simply starts again.

Phases (a) and (c) commit on their own, through ``Database.own_transaction``.
Operator work lives here too: ``rotate_token_keys`` and ``purge_expired_states`` (``app.cli``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.brokers.models import BrokerConnection
from app.brokers.repository import BrokerRepository
from app.brokers.schemas import ConnectionOut
from app.core.crypto import InvalidToken, TokenCipher
from app.core.db import Database
from app.core.errors import BadRequest, log_exception
from app.core.http import UpstreamError
from app.core.rotation import RotationCounts, rotate_column
from app.providers.oauth import BrokerOAuth, OAuthExchangeError

log = logging.getLogger("tradedesk.brokers")

PROVIDER = "alpaca"
STATE_TTL = dt.timedelta(minutes=10)


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class LinkStart:
    authorize_url: str
    binding: str  # the td_oauth_binding cookie's value: proves a callback comes from this browser


async def start_link(*, session: AsyncSession, oauth: BrokerOAuth, user_id: uuid.UUID) -> LinkStart:
    """Create a single-use state bound to the user and to this browser; the provider's authorize URL."""
    state, binding = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    await BrokerRepository(session).add_state(
        state_hash=_sha256(state),
        binding_hash=_sha256(binding),
        user_id=user_id,
        provider=PROVIDER,
        ttl=STATE_TTL,
    )
    return LinkStart(authorize_url=oauth.authorize_url(state), binding=binding)


async def _consume(
    database: Database, *, state: str, caller_id: uuid.UUID | None, binding: str | None, field: str
) -> uuid.UUID:
    async with database.own_transaction() as session:
        user_id = await BrokerRepository(session).consume_state(
            state_hash=_sha256(state),
            provider=PROVIDER,
            caller_id=caller_id,
            binding_hash=_sha256(binding) if binding else None,
        )
    if user_id is None:
        log.warning(
            "oauth completion refused: unknown, expired, used or foreign state, or another browser",
            extra={"with_token": caller_id is not None, "with_binding": binding is not None},
        )
        raise BadRequest(
            "The OAuth state is unknown, expired or already used, or this request is not from the "
            "user or the browser that started the link; start the link again from the same "
            "browser, or complete it with that user's token.",
            errors=[{"field": field, "message": "invalid state"}],
        )
    return user_id


async def reject_link(
    *, database: Database, state: str, caller_id: uuid.UUID | None, binding: str | None
) -> None:
    """The user declined at the provider: consume the state, store nothing."""
    user_id = await _consume(database, state=state, caller_id=caller_id, binding=binding, field="query.state")
    log.info("broker link declined at the provider", extra={"user_id": str(user_id)})


async def complete_link(
    *,
    database: Database,
    oauth: BrokerOAuth,
    cipher: TokenCipher,
    code: str,
    state: str,
    caller_id: uuid.UUID | None,
    binding: str | None = None,
    field: str = "query.state",
) -> bool:
    """Consume the state (only for its owner's token or browser), exchange the code, store the encrypted
    token. Raises BadRequest — before any exchange, the state untouched — for an unusable state or a
    request that is not the owner's; returns False (nothing stored) when the provider or the store fails."""
    user_id = await _consume(database, state=state, caller_id=caller_id, binding=binding, field=field)
    try:
        token = await oauth.exchange(code)
    except (UpstreamError, OAuthExchangeError) as exc:
        log.warning(
            "oauth code exchange failed", extra={"user_id": str(user_id), "error": type(exc).__name__}
        )
        return False
    try:
        async with database.own_transaction() as session:
            await BrokerRepository(session).upsert_connection(
                user_id=user_id,
                provider=PROVIDER,
                token_encrypted=cipher.encrypt(token.access_token),
                scope=token.scope,
            )
    except Exception as exc:
        log_exception(log, "storing the broker link failed; nothing stored", exc, user_id=str(user_id))
        return False
    log.info("broker linked", extra={"user_id": str(user_id), "provider": PROVIDER})
    return True


async def get_connection(*, session: AsyncSession, user_id: uuid.UUID) -> ConnectionOut:
    """The user's link status."""
    row = await BrokerRepository(session).get_connection(user_id)
    return ConnectionOut(
        provider=PROVIDER, connected=row is not None, connected_at=row.connected_at if row else None
    )


async def delete_connection(*, session: AsyncSession, user_id: uuid.UUID) -> None:
    """Forget the link and its token (idempotent)."""
    if await BrokerRepository(session).delete_connection(user_id):
        log.info("broker unlinked", extra={"user_id": str(user_id), "provider": PROVIDER})


async def rotate_token_keys(*, database: Database, cipher: TokenCipher, **options: Any) -> RotationCounts:
    """Re-encrypt every stored broker token with the cipher's first key (``app.core.rotation``)."""
    return await rotate_column(
        database=database,
        cipher=cipher,
        key=BrokerConnection.user_id,
        column=BrokerConnection.access_token_encrypted,
        **options,
    )


async def purge_expired_states(*, database: Database, older_than: dt.timedelta = dt.timedelta(days=1)) -> int:
    """Delete OAuth states that expired more than ``older_than`` ago; how many."""
    async with database.own_transaction() as session:
        return await BrokerRepository(session).purge_states(older_than=dt.datetime.now(dt.UTC) - older_than)


async def access_token(*, database: Database, cipher: TokenCipher, user_id: uuid.UUID) -> str | None:
    """The user's decrypted broker access token, or None when no account is linked (or the stored token
    cannot be decrypted with any current key: the user must link again). One autocommit read; no
    connection is held afterwards (the caller goes on to call the broker)."""
    async with database.own_transaction(single_statement=True) as session:
        row = await BrokerRepository(session).get_connection(user_id)
    if row is None:
        return None
    try:
        return cipher.decrypt(row.access_token_encrypted)
    except InvalidToken:
        log.error("stored broker token unreadable with the current keys", extra={"user_id": str(user_id)})
        return None
