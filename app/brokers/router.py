"""Broker account linking (OAuth, provider ``alpaca``) and the link's status."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Cookie, Query, Response
from fastapi.responses import RedirectResponse

from app.auth.deps import CurrentUser, OptionalCaller
from app.brokers import service
from app.brokers.deps import BrokerOAuthDep, TokenCipherDep
from app.brokers.schemas import AuthorizeOut, CompleteIn, ConnectionOut
from app.core.config import Settings
from app.core.deps import DatabaseDep, SessionDep, SettingsDep
from app.core.errors import BadGateway, BadRequest
from app.core.openapi import required_query

router = APIRouter(tags=["broker link"])

# The browser binding (contract §4 Broker link): set by /authorize, required by /callback unless the
# callback carries the owner's bearer token. Sent back only to the OAuth routes, never readable by script.
BINDING_COOKIE = "td_oauth_binding"
BINDING_PATH = "/v1/oauth/alpaca"
BindingCookie = Annotated[str | None, Cookie(alias=BINDING_COOKIE, max_length=128, include_in_schema=False)]


def _set_binding(response: Response, settings: Settings, value: str) -> None:
    response.set_cookie(
        BINDING_COOKIE,
        value,
        max_age=int(service.STATE_TTL.total_seconds()),
        path=BINDING_PATH,
        httponly=True,
        samesite="lax",
        secure=settings.app_env != "development",
    )


def _clear_binding(response: Response, settings: Settings) -> None:
    response.delete_cookie(
        BINDING_COOKIE,
        path=BINDING_PATH,
        httponly=True,
        samesite="lax",
        secure=settings.app_env != "development",
    )


def _frontend_redirect(frontend_origin: str, status: str) -> RedirectResponse:
    # Only ever the first configured front-end origin, whatever the request carries (no open redirect).
    return RedirectResponse(
        f"{frontend_origin}/settings/broker?{urlencode({'status': status})}", status_code=302
    )


@router.get("/oauth/alpaca/authorize", response_model=AuthorizeOut, summary="Start linking an Alpaca account")
async def authorize(
    user: CurrentUser, session: SessionDep, oauth: BrokerOAuthDep, settings: SettingsDep, response: Response
) -> AuthorizeOut:
    """The provider's consent URL; also sets the `td_oauth_binding` cookie the callback must bring back."""
    start = await service.start_link(session=session, oauth=oauth, user_id=user.id)
    _set_binding(response, settings, start.binding)
    return AuthorizeOut(authorize_url=start.authorize_url)


@router.get(
    "/oauth/alpaca/callback",
    status_code=302,
    response_class=RedirectResponse,
    summary="OAuth redirect target: exchange the code, store the token encrypted",
    responses={
        302: {"description": "To {FRONTEND_URL}/settings/broker?status=connected|error"},
        400: {
            "description": "Unknown, expired, reused or foreign state, or neither the "
            "browser that started the link nor its owner's token"
        },
    },
)
async def callback(
    oauth: BrokerOAuthDep,
    database: DatabaseDep,
    cipher: TokenCipherDep,
    settings: SettingsDep,
    caller: OptionalCaller,
    binding: BindingCookie = None,
    # Checked below: without a state the callback is a 400 like every other bad state (contract §4).
    state: Annotated[
        str | None,
        required_query(
            description="The state from GET /v1/oauth/alpaca/authorize.", max_length=256, minLength=1
        ),
    ] = None,
    code: Annotated[
        str | None,
        Query(min_length=1, max_length=2048, description="The authorization code; required unless `error`."),
    ] = None,
    error: Annotated[
        str | None, Query(max_length=256, description="Set by the provider when the user declined.")
    ] = None,
) -> RedirectResponse:
    if not state:
        raise BadRequest(
            "The callback needs a state.", errors=[{"field": "query.state", "message": "required"}]
        )
    if not code and not error:
        raise BadRequest(
            "The callback needs a code.", errors=[{"field": "query.code", "message": "required"}]
        )
    frontend = settings.frontend_origins[0]
    if error or not code:
        # The user declined at the provider: burn the state, store nothing.
        await service.reject_link(database=database, state=state, caller_id=caller, binding=binding)
        redirect = _frontend_redirect(frontend, "error")
    else:
        ok = await service.complete_link(
            database=database,
            oauth=oauth,
            cipher=cipher,
            code=code,
            state=state,
            caller_id=caller,
            binding=binding,
        )
        redirect = _frontend_redirect(frontend, "connected" if ok else "error")
    _clear_binding(redirect, settings)  # the state is spent: the binding has nothing left to prove
    return redirect


@router.post(
    "/oauth/alpaca/complete",
    status_code=204,
    summary="Finish a link from a front end's own redirect page",
    responses={
        400: {"description": "Unknown, expired, reused state, or not the caller's"},
        502: {"description": "The provider refused or failed the exchange; nothing stored"},
    },
)
async def complete(
    body: CompleteIn, user: CurrentUser, oauth: BrokerOAuthDep, database: DatabaseDep, cipher: TokenCipherDep
) -> Response:
    """For a front end on another site that uses its own page as the redirect URI: it posts the `code`
    and `state` it received, with the user's token. Only the state's owner may complete it."""
    ok = await service.complete_link(
        database=database,
        oauth=oauth,
        cipher=cipher,
        code=body.code,
        state=body.state,
        caller_id=user.id,
        field="state",
    )
    if not ok:
        raise BadGateway(
            "The broker did not complete the link (it refused the code or failed); nothing was stored. "
            "Start the link again."
        )
    return Response(status_code=204)


@router.get("/broker/connection", response_model=ConnectionOut, summary="The caller's broker link")
async def get_connection(user: CurrentUser, session: SessionDep) -> ConnectionOut:
    return await service.get_connection(session=session, user_id=user.id)


@router.delete("/broker/connection", status_code=204, summary="Unlink the broker account")
async def delete_connection(user: CurrentUser, session: SessionDep) -> Response:
    await service.delete_connection(session=session, user_id=user.id)
    return Response(status_code=204)
