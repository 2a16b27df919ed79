"""/v1/auth: signup, login, the current user's profile (contract §4 Auth)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.auth import service
from app.auth.deps import CurrentProfile, CurrentUser
from app.auth.fields import login_key
from app.auth.models import User
from app.auth.schemas import (
    LoginRequest,
    Profile,
    ProfileUpdate,
    SignupRequest,
    SignupResponse,
    TokenResponse,
)
from app.core.deps import DatabaseDep, LimiterDep, PasswordHashingDep, SessionDep, SettingsDep
from app.core.ratelimit import client_key, pseudonym
from app.core.security import issue_access_token

router = APIRouter(prefix="/auth", tags=["auth"])

_PROBLEM: dict[str, object] = {"content": {"application/problem+json": {}}}


@router.post(
    "/signup",
    status_code=201,
    response_model=SignupResponse,
    responses={
        409: {"description": "The email already has an account", **_PROBLEM},
        429: {"description": "Too many signups from this client", **_PROBLEM},
        422: {"description": "Invalid email, weak password or invalid text", **_PROBLEM},
    },
)
async def signup(
    body: SignupRequest,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    passwords: PasswordHashingDep,
    limiter: LimiterDep,
) -> SignupResponse:
    """Create an account. `display_name` is plain text: markup is stripped.

    `RATE_LIMIT_SIGNUP` applies per client IP (an IPv6 client by its /64), before any hashing.
    """
    await limiter.enforce(
        request, settings.rate_limit_signup, "signup-ip", client_key(request), local_fallback=True
    )
    user = await service.signup(
        session=session,
        passwords=passwords,
        email=body.normalized_email(),
        password=body.password,
        display_name=body.display_name,
    )
    return SignupResponse(id=user.id, email=user.email, display_name=user.display_name)


@router.post(
    "/login",
    response_model=TokenResponse,
    responses={
        401: {"description": "Bad credentials (same answer for an unknown email)", **_PROBLEM},
        429: {"description": "Too many attempts for this email or from this client", **_PROBLEM},
    },
)
async def login(
    body: LoginRequest,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    passwords: PasswordHashingDep,
    limiter: LimiterDep,
) -> TokenResponse:
    """Exchange credentials for a bearer access token.

    `RATE_LIMIT_LOGIN` applies per client IP and, separately, per email; both are checked before
    the password, so the right password after the limit trips is still refused (429).
    """
    email_key = login_key(body.email)
    email_ref = pseudonym(
        email_key, key=settings.pseudonym_key
    )  # never the address itself, nor its bare hash
    # Brute-force protection never switches off: if Redis fails, these are enforced per process.
    await limiter.enforce(
        request, settings.rate_limit_login, "login-ip", client_key(request), local_fallback=True
    )
    await limiter.enforce(request, settings.rate_limit_login, "login-email", email_ref, local_fallback=True)
    user_id = await service.authenticate(
        session=session, passwords=passwords, email_key=email_key, email_ref=email_ref, password=body.password
    )
    token = issue_access_token(user_id=user_id, settings=settings)
    return TokenResponse(access_token=token.token, expires_in=token.expires_in)


async def _profile(session: SessionDep, user: User) -> Profile:
    status = await service.subscription_status(session=session, user_id=user.id)
    return Profile(
        id=user.id, email=user.email, display_name=user.display_name, bio=user.bio, subscription_status=status
    )


@router.get("/me", response_model=Profile, responses={401: {"description": "No valid token", **_PROBLEM}})
async def me(profile: CurrentProfile, database: DatabaseDep) -> Profile:
    """The current user's profile."""
    status = await service.current_subscription_status(database=database, user_id=profile.id)
    return Profile(
        id=profile.id,
        email=profile.email,
        display_name=profile.display_name,
        bio=profile.bio,
        subscription_status=status,
    )


@router.patch(
    "/me",
    response_model=Profile,
    responses={
        401: {"description": "No valid token", **_PROBLEM},
        422: {"description": "Unknown field or invalid text", **_PROBLEM},
    },
)
async def update_me(body: ProfileUpdate, user: CurrentUser, session: SessionDep) -> Profile:
    """Update `display_name` (plain text) and/or `bio` (rich text); fields not sent are unchanged."""
    user = await service.update_profile(session=session, user=user, changes=body.changes())
    return await _profile(session, user)
