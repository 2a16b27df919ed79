"""Broker account linking (OAuth, provider ``alpaca``) and the link's status."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Response
from fastapi.responses import RedirectResponse

from app.auth.deps import CurrentUser, OptionalCaller
from app.brokers import service
from app.brokers.deps import BrokerOAuthDep, TokenCipherDep
from app.brokers.schemas import AuthorizeOut, ConnectionOut
from app.core.deps import DatabaseDep, SessionDep, SettingsDep
from app.core.errors import BadRequest

router = APIRouter(tags=["broker link"])


def _frontend_redirect(frontend_origin: str, status: str) -> RedirectResponse:
    # Only ever the first configured front-end origin, whatever the request carries (no open redirect).
    return RedirectResponse(f"{frontend_origin}/settings/broker?{urlencode({'status': status})}", status_code=302)


@router.get("/oauth/alpaca/authorize", response_model=AuthorizeOut, summary="Start linking an Alpaca account")
async def authorize(user: CurrentUser, session: SessionDep, oauth: BrokerOAuthDep) -> AuthorizeOut:
    url = await service.start_link(session=session, oauth=oauth, user_id=user.id)
    return AuthorizeOut(authorize_url=url)


@router.get("/oauth/alpaca/callback", status_code=302, response_class=RedirectResponse,
            summary="OAuth redirect target: exchange the code, store the token encrypted",
            responses={302: {"description": "To {FRONTEND_URL}/settings/broker?status=connected|error"},
                       400: {"description": "Unknown, expired, reused or foreign state"}})
async def callback(
    oauth: BrokerOAuthDep,
    database: DatabaseDep,
    cipher: TokenCipherDep,
    settings: SettingsDep,
    caller: OptionalCaller,
    state: Annotated[str | None, Query(max_length=256)] = None,
    code: Annotated[str | None, Query(max_length=2048)] = None,
    error: Annotated[str | None, Query(max_length=256)] = None,
) -> RedirectResponse:
    if not state:
        raise BadRequest("The callback needs a state.", errors=[{"field": "query.state", "message": "required"}])
    if not code and not error:
        raise BadRequest("The callback needs a code.", errors=[{"field": "query.code", "message": "required"}])
    frontend = settings.frontend_origins[0]
    if error or not code:
        # The user declined at the provider: burn the state, store nothing.
        await service.reject_link(database=database, state=state, caller_id=caller)
        return _frontend_redirect(frontend, "error")
    ok = await service.complete_link(database=database, oauth=oauth, cipher=cipher, code=code, state=state,
                                     caller_id=caller)
    return _frontend_redirect(frontend, "connected" if ok else "error")


@router.get("/broker/connection", response_model=ConnectionOut, summary="The caller's broker link")
async def get_connection(user: CurrentUser, session: SessionDep) -> ConnectionOut:
    return await service.get_connection(session=session, user_id=user.id)


@router.delete("/broker/connection", status_code=204, summary="Unlink the broker account")
async def delete_connection(user: CurrentUser, session: SessionDep) -> Response:
    await service.delete_connection(session=session, user_id=user.id)
    return Response(status_code=204)
