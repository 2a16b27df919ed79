"""PUT /v1/alerts/discord/webhook, POST /v1/alerts/discord, GET /v1/alerts/{id} (contract §4)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from app.alerts import service
from app.alerts.deps import AlertRateLimit
from app.alerts.schemas import AlertIn, AlertOut, AlertQueued, WebhookIn
from app.auth.deps import CurrentUser, CurrentUserDetached
from app.brokers.deps import TokenCipherDep
from app.core.deps import DatabaseDep, SessionDep

router = APIRouter(tags=["alerts"])
_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}


@router.put(
    "/alerts/discord/webhook",
    status_code=204,
    responses={422: {"description": "A malformed webhook id or token (named).", **_PROBLEM}},
    summary="Set the caller's Discord webhook (id and token; the URL is composed by the server)",
)
async def set_webhook(
    body: WebhookIn, user: CurrentUser, session: SessionDep, cipher: TokenCipherDep
) -> Response:
    await service.set_webhook(
        session=session,
        cipher=cipher,
        user_id=user.id,
        webhook_id=body.webhook_id,
        webhook_token=body.webhook_token,
    )
    return Response(status_code=204)


@router.post(
    "/alerts/discord",
    status_code=202,
    response_model=AlertQueued,
    responses={
        409: {"description": "No webhook set, or it was disabled by Discord's answer.", **_PROBLEM},
        429: {"description": "RATE_LIMIT_ALERTS exceeded for this user.", **_PROBLEM},
    },
    summary="Queue an alert for the caller's Discord webhook",
)
async def post_alert(
    body: AlertIn, user: CurrentUserDetached, _limit: AlertRateLimit, database: DatabaseDep
) -> AlertQueued:
    return await service.enqueue(database=database, user_id=user.id, content=body.content)


# {alert_id:uuid}: only a UUID matches, so /v1/alerts/discord is never read as an alert id (an OPTIONS
# or GET there is a 405 naming POST, the one method it has, not a 422 for a malformed id).
@router.get("/alerts/{alert_id:uuid}", response_model=AlertOut, summary="One of the caller's alerts")
async def get_alert(
    alert_id: Annotated[uuid.UUID, Path()], user: CurrentUser, session: SessionDep
) -> AlertOut:
    return await service.get_alert(session=session, user_id=user.id, alert_id=alert_id)
