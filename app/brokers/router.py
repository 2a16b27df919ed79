"""Broker account linking (OAuth, provider ``alpaca``) and the link's status."""

from __future__ import annotations

import uuid
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import RedirectResponse

from app.brokers import service
from app.brokers.schemas import AuthorizeOut, ConnectionOut
from app.core.deps import CurrentUser, SessionDep
from app.core.errors import BadRequest, ServiceUnavailable
from app.core.security import decode_access_token
from app.providers.oauth import AlpacaOAuth

router = APIRouter(tags=["broker link"])


def _oauth(request: Request) -> AlpacaOAuth:
    oauth: AlpacaOAuth | None = request.app.state.broker_oauth
    if oauth is None:
        raise ServiceUnavailable("Broker linking is not configured (ALPACA_OAUTH_CLIENT_ID, "
                                 "ALPACA_OAUTH_CLIENT_SECRET and ALPACA_OAUTH_REDIRECT_URI must be set).",
                                 retry_after=3600)
    return oauth


def _frontend_redirect(request: Request, status: str) -> RedirectResponse:
    # Only ever the first configured front-end origin, whatever the request carries (no open redirect).
    origin = request.app.state.settings.frontend_origins[0]
    return RedirectResponse(f"{origin}/settings/broker?{urlencode({'status': status})}", status_code=302)


def _caller_id(request: Request) -> uuid.UUID | None:
    """The caller's user id when the callback carries a bearer token (it must then match the state)."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise BadRequest("Authorization must be 'Bearer <access_token>'.")
    return decode_access_token(token.strip(), settings=request.app.state.settings)


@router.get("/oauth/alpaca/authorize", response_model=AuthorizeOut, summary="Start linking an Alpaca account")
async def authorize(request: Request, user: CurrentUser, session: SessionDep) -> AuthorizeOut:
    url = await service.start_link(session=session, oauth=_oauth(request), user_id=user.id)
    return AuthorizeOut(authorize_url=url)


@router.get("/oauth/alpaca/callback", status_code=302, response_class=RedirectResponse,
            summary="OAuth redirect target: exchange the code, store the token encrypted",
            responses={302: {"description": "To {FRONTEND_URL}/settings/broker?status=connected|error"},
                       400: {"description": "Unknown, expired, reused or foreign state"}})
async def callback(
    request: Request,
    state: Annotated[str | None, Query(max_length=256)] = None,
    code: Annotated[str | None, Query(max_length=2048)] = None,
    error: Annotated[str | None, Query(max_length=256)] = None,
) -> RedirectResponse:
    oauth = _oauth(request)
    if not state:
        raise BadRequest("The callback needs a state.", errors=[{"field": "query.state", "message": "required"}])
    if not code and not error:
        raise BadRequest("The callback needs a code.", errors=[{"field": "query.code", "message": "required"}])
    caller = _caller_id(request)
    if error or not code:
        # The user declined at the provider: burn the state, store nothing.
        await service.reject_link(sessionmaker=request.app.state.sessionmaker, state=state, caller_id=caller)
        return _frontend_redirect(request, "error")
    ok = await service.complete_link(sessionmaker=request.app.state.sessionmaker, oauth=oauth,
                                     cipher=request.app.state.token_cipher, code=code, state=state, caller_id=caller)
    return _frontend_redirect(request, "connected" if ok else "error")


@router.get("/broker/connection", response_model=ConnectionOut, summary="The caller's broker link")
async def get_connection(user: CurrentUser, session: SessionDep) -> ConnectionOut:
    return await service.get_connection(session=session, user_id=user.id)


@router.delete("/broker/connection", status_code=204, summary="Unlink the broker account")
async def delete_connection(user: CurrentUser, session: SessionDep) -> Response:
    await service.delete_connection(session=session, user_id=user.id)
    return Response(status_code=204)
