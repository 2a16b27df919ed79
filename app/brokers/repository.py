"""All broker-link SQL."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import delete, func, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.brokers.models import BrokerConnection, OAuthState
from app.core.db import rowcount


class BrokerRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add_state(
        self, *, state_hash: str, binding_hash: str, user_id: uuid.UUID, provider: str, ttl: dt.timedelta
    ) -> None:
        self.session.add(
            OAuthState(
                state_hash=state_hash,
                binding_hash=binding_hash,
                user_id=user_id,
                provider=provider,
                expires_at=dt.datetime.now(dt.UTC) + ttl,
            )
        )
        await self.session.flush()

    async def consume_state(
        self, *, state_hash: str, provider: str, caller_id: uuid.UUID | None, binding_hash: str | None
    ) -> uuid.UUID | None:
        """Mark the state used, atomically, if the request proves it comes from the flow's owner: a bearer
        token of the owner (``caller_id``), or else the browser's binding cookie. Its user, or None — and
        the state untouched — if unknown, expired, used, someone else's or from another browser."""
        if caller_id is not None:
            proof = OAuthState.user_id == caller_id  # a token, when sent, must be the owner's
        elif binding_hash is not None:
            proof = OAuthState.binding_hash == binding_hash
        else:
            return None
        stmt = (
            update(OAuthState)
            .where(
                OAuthState.state_hash == state_hash,
                OAuthState.provider == provider,
                OAuthState.used_at.is_(None),
                OAuthState.expires_at > func.now(),
                proof,
            )
            .values(used_at=func.now())
            .returning(OAuthState.user_id)
        )
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def purge_states(self, *, older_than: dt.datetime) -> int:
        result = await self.session.execute(delete(OAuthState).where(OAuthState.expires_at < older_than))
        return rowcount(result)

    async def upsert_connection(
        self, *, user_id: uuid.UUID, provider: str, token_encrypted: str, scope: str | None
    ) -> None:
        stmt = insert(BrokerConnection).values(
            user_id=user_id, provider=provider, access_token_encrypted=token_encrypted, scope=scope
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[BrokerConnection.user_id],
            set_={
                "provider": provider,
                "access_token_encrypted": token_encrypted,
                "scope": scope,
                "connected_at": func.now(),
                "updated_at": func.now(),
            },
        )
        await self.session.execute(stmt)

    async def get_connection(self, user_id: uuid.UUID) -> BrokerConnection | None:
        return await self.session.get(BrokerConnection, user_id)

    async def delete_connection(self, user_id: uuid.UUID) -> bool:
        result = await self.session.execute(
            delete(BrokerConnection).where(BrokerConnection.user_id == user_id)
        )
        return rowcount(result) > 0
