"""Accounts: signup, credential checks, profile. Keyword-only functions; never commits."""

from __future__ import annotations

import logging
import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.fields import NormalizedEmail
from app.auth.models import User
from app.auth.repository import EmailTaken, UserRepository
from app.billing import service as billing_service
from app.core.db import Database
from app.core.errors import Conflict, Unauthorized
from app.core.security import PasswordHashing

log = logging.getLogger("tradedesk.auth")


class InvalidCredentials(Unauthorized):
    """One answer for an unknown email and a wrong password (no account enumeration)."""

    slug = "invalid-credentials"

    def __init__(self) -> None:
        super().__init__("The email or password is incorrect.")


async def signup(
    *,
    session: AsyncSession,
    passwords: PasswordHashing,
    email: NormalizedEmail,
    password: str,
    display_name: str | None,
) -> User:
    """Create an account; ``Conflict`` when the (normalised) email already exists, also under races."""
    # Before touching the pool (no connection held), and behind every login in the hashing queue.
    password_hash = await passwords.hash(password, signup=True)
    try:
        user = await UserRepository(session).add(
            email=email.display,
            email_normalized=email.key,
            password_hash=password_hash,
            display_name=display_name or None,
        )
    except EmailTaken:
        raise Conflict("An account with this email already exists.") from None
    log.info("account created", extra={"user_id": str(user.id)})
    return user


async def authenticate(
    *, session: AsyncSession, passwords: PasswordHashing, email_key: str, email_ref: str, password: str
) -> uuid.UUID:
    """The user id for valid credentials, else ``InvalidCredentials``; the same Argon2 work either way.

    Re-hashes the password when the stored hash was made with other parameters. ``email_ref`` is the
    email's pseudonym, the only form of it that reaches a log line.
    """
    repo = UserRepository(session)
    credentials = await repo.get_credentials(email_key)
    # End the read-only transaction before Argon2 so the pooled connection is not held while the
    # hash waits for a worker thread (seconds under a burst). Nothing has been written; not a commit.
    await session.rollback()
    if credentials is None:
        await passwords.verify_dummy(password)
        log.info("login failed", extra={"email_hash": email_ref})
        raise InvalidCredentials()
    matches, needs_rehash = await passwords.verify(credentials.password_hash, password)
    if not matches:
        log.info("login failed", extra={"email_hash": email_ref})
        raise InvalidCredentials()
    if needs_rehash:
        new_hash = await passwords.hash(password)
        if await repo.replace_password_hash(
            credentials.user_id, old_hash=credentials.password_hash, new_hash=new_hash
        ):
            log.info(
                "password re-hashed with current parameters", extra={"user_id": str(credentials.user_id)}
            )
    return credentials.user_id


async def update_profile(*, session: AsyncSession, user: User, changes: dict[str, str | None]) -> User:
    """Apply already-sanitized profile fields; an empty string clears a field (stored as NULL)."""
    values = {name: (value or None) for name, value in changes.items()}
    if not values:
        return user
    return await UserRepository(session).update_profile(user, values)


async def current_subscription_status(*, database: Database, user_id: uuid.UUID) -> str:
    """``subscription_status`` without a session (one autocommit statement)."""
    return await billing_service.current_status(database=database, user_id=user_id)


async def subscription_status(*, session: AsyncSession, user_id: uuid.UUID) -> str:
    """The user's subscription status, as billing knows it (``none`` before any checkout)."""
    return await billing_service.subscription_status(session=session, user_id=user_id)
