"""Who is calling: the current-user dependency (401 without a valid token) and the optional caller.

Core keeps the primitives (``app.core.security``: JWT issue/decode); turning a bearer token into a
user is this feature's business. Routes use the aliases: ``user: CurrentUser``, ``caller: OptionalCaller``.
A feature's per-user limit is ``Annotated[None, Depends(PerUserLimit("rate_limit_orders", name="orders"))]``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.auth.models import User
from app.auth.repository import ProfileRow, UserRepository, profile_row, user_exists
from app.core.config import Settings
from app.core.deps import DatabaseDep, LimiterDep, SessionDep, SettingsDep
from app.core.errors import BadRequest, Unauthorized
from app.core.security import InvalidToken, decode_access_token

log = logging.getLogger("tradedesk.auth")

_bearer = HTTPBearer(auto_error=False, description="An access token from POST /v1/auth/login.")


def _remember_user(request: Request, user_id: uuid.UUID) -> None:
    # The access log and metrics middleware read the caller from the scope's state.
    request.scope.setdefault("state", {})["user_id"] = str(user_id)


async def get_current_user(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    """The user the bearer token names; 401 without a valid token or when the user no longer exists."""
    if credentials is None or not credentials.credentials:
        raise Unauthorized()
    user_id = decode_access_token(credentials.credentials, settings=settings)
    user = await UserRepository(session).get(user_id)
    if user is None:
        log.info("access token refused", extra={"reason": "user-not-found"})
        raise InvalidToken()
    _remember_user(request, user.id)
    return user


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller whose user row exists (only the id is loaded)."""

    id: uuid.UUID


async def get_current_user_detached(
    request: Request,
    database: DatabaseDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """``get_current_user`` without the request session: the user's existence is checked by one
    autocommit statement and the connection goes straight back to the pool. For routes that call an
    outside system (the broker), which must not hold a pooled connection — an open transaction —
    while it answers, and that need only the caller's id."""
    if credentials is None or not credentials.credentials:
        raise Unauthorized()
    user_id = decode_access_token(credentials.credentials, settings=settings)
    if not await user_exists(database, user_id):
        log.info("access token refused", extra={"reason": "user-not-found"})
        raise InvalidToken()
    _remember_user(request, user_id)
    return Caller(user_id)


async def get_current_profile(
    request: Request,
    database: DatabaseDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ProfileRow:
    """``get_current_user`` for a read of the caller's own profile: the same 401s, one autocommit
    statement instead of a session's ORM load and its BEGIN/COMMIT (``GET /v1/auth/me``, a hot read)."""
    if credentials is None or not credentials.credentials:
        raise Unauthorized()
    user_id = decode_access_token(credentials.credentials, settings=settings)
    profile = await profile_row(database, user_id)
    if profile is None:
        log.info("access token refused", extra={"reason": "user-not-found"})
        raise InvalidToken()
    _remember_user(request, user_id)
    return profile


async def get_optional_caller(request: Request, settings: SettingsDep) -> uuid.UUID | None:
    """The caller's user id when the request carries a bearer token, else None (no database read).

    For routes a browser reaches without a token (an OAuth callback) but where a token, when sent,
    must be valid: a malformed header is 400, an invalid or expired token 401.
    """
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise BadRequest("Authorization must be 'Bearer <access_token>'.")
    user_id = decode_access_token(token.strip(), settings=settings)
    _remember_user(request, user_id)
    return user_id


# The authenticated user (401 problem+json otherwise).
CurrentUser = Annotated[User, Depends(get_current_user)]
# The same user's profile fields, read without a session (the caller's own profile).
CurrentProfile = Annotated[ProfileRow, Depends(get_current_profile)]
# The same, read without holding a connection: for routes that call the broker (app/orders/).
CurrentUserDetached = Annotated[Caller, Depends(get_current_user_detached)]
# The caller's user id if a bearer token was sent, else None.
OptionalCaller = Annotated[uuid.UUID | None, Depends(get_optional_caller)]


def PerUserLimit(  # noqa: N802 - reads like a class at the use site, as core's RateLimit does
    setting: str, *, name: str
) -> Callable[..., Coroutine[Any, Any, None]]:
    """Dependency factory: the limit in Settings' ``setting`` (an env var operators tune) per caller, 429 +
    Retry-After past it. The caller is ``CurrentUserDetached``: no session, so a route that calls an
    outside system holds no connection for it."""
    if setting not in Settings.model_fields:
        raise ValueError(f"no setting {setting!r} holds a rate limit")

    async def dependency(
        request: Request, user: CurrentUserDetached, limiter: LimiterDep, settings: SettingsDep
    ) -> None:
        await limiter.enforce(request, getattr(settings, setting), name, str(user.id))

    dependency.__name__ = f"{name}_rate_limit"
    dependency.__doc__ = f"{setting.upper()} per user (429 + Retry-After past it)."
    return dependency
