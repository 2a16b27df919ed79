"""All SQL about users."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy.exc
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.models import User
from app.core.db import Database, rowcount

EMAIL_UNIQUE_CONSTRAINT = "uq_users_email_normalized"
UNIQUE_VIOLATION = "23505"


class EmailTaken(Exception):
    """The normalised email already belongs to an account (unique index on ``email_normalized``)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    user_id: uuid.UUID
    password_hash: str


def _is_email_unique_violation(exc: sqlalchemy.exc.IntegrityError) -> bool:
    orig: Any = exc.orig
    if getattr(orig, "sqlstate", None) != UNIQUE_VIOLATION:
        return False
    constraint = getattr(getattr(orig, "__cause__", None), "constraint_name", None)
    return constraint is None or constraint == EMAIL_UNIQUE_CONSTRAINT


_EXISTS = text("SELECT 1 FROM users WHERE id = :user_id")
_PROFILE = text("SELECT id, email, display_name, bio FROM users WHERE id = :user_id")


@dataclass(frozen=True, slots=True)
class ProfileRow:
    """The user's own fields of their profile, read without a session."""

    id: uuid.UUID
    email: str
    display_name: str | None
    bio: str | None


class UserRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(
        self, *, email: str, email_normalized: str, password_hash: str, display_name: str | None
    ) -> User:
        """Insert a user; raise ``EmailTaken`` when the unique index refuses the email (race-safe)."""
        user = User(
            email=email,
            email_normalized=email_normalized,
            password_hash=password_hash,
            display_name=display_name,
        )
        self.session.add(user)
        try:
            await self.session.flush()
        except sqlalchemy.exc.IntegrityError as exc:
            if _is_email_unique_violation(exc):
                raise EmailTaken() from None
            raise
        await self.session.refresh(user)  # server defaults: id, created_at, updated_at
        return user

    async def get(self, user_id: uuid.UUID) -> User | None:
        return await self.session.get(User, user_id)

    async def get_credentials(self, email_normalized: str) -> Credentials | None:
        row = (
            await self.session.execute(
                select(User.id, User.password_hash).where(User.email_normalized == email_normalized)
            )
        ).one_or_none()
        return Credentials(row.id, row.password_hash) if row else None

    async def replace_password_hash(self, user_id: uuid.UUID, *, old_hash: str, new_hash: str) -> bool:
        """Compare-and-set: only replaces the hash that was verified (never clobbers a concurrent change)."""
        result = await self.session.execute(
            update(User)
            .where(User.id == user_id, User.password_hash == old_hash)
            .values(password_hash=new_hash, updated_at=func.now())
            .execution_options(synchronize_session=False)
        )
        return rowcount(result) > 0

    async def update_profile(self, user: User, values: dict[str, str | None]) -> User:
        for name, value in values.items():
            setattr(user, name, value)
        user.updated_at = func.now()
        await self.session.flush()
        await self.session.refresh(user)
        return user


async def user_exists(database: Database, user_id: uuid.UUID) -> bool:
    """Whether the user exists: one plain statement on the driver path (``Database.run_single``), no session
    (the order routes' caller check, on every order)."""
    return bool(await database.run_single(_EXISTS, {"user_id": user_id}))


async def profile_row(database: Database, user_id: uuid.UUID) -> ProfileRow | None:
    """The user's profile fields in one statement on the driver path (``GET /v1/auth/me``); None if no such user."""
    rows = await database.run_single(_PROFILE, {"user_id": user_id})
    return ProfileRow(**rows[0]) if rows else None
