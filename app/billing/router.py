"""Stripe webhook and the user's billing views."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request

from app.billing import service
from app.billing.schemas import PaymentsPage, SubscriptionOut, WebhookAck
from app.core.deps import CurrentUser, SessionDep, SettingsDep
from app.core.errors import BadRequest, ServiceUnavailable, Unprocessable
from app.core.observability import WEBHOOK_EVENTS
from app.providers.stripe import InvalidSignature, verify_event

router = APIRouter(tags=["billing"])
log = logging.getLogger("tradedesk.billing")


@router.post(
    "/webhooks/stripe",
    response_model=WebhookAck,
    summary="Stripe webhook: verified, applied exactly once",
    responses={400: {"description": "Bad, missing or stale signature"}, 503: {"description": "Kill switch on"}},
)
async def stripe_webhook(
    request: Request,
    settings: SettingsDep,
    stripe_signature: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> WebhookAck:
    if not settings.stripe_webhook_enabled:
        WEBHOOK_EVENTS.labels("unknown", "disabled").inc()
        raise ServiceUnavailable("Stripe webhooks are switched off (STRIPE_WEBHOOK_ENABLED=false); "
                                 "Stripe will redeliver later.", retry_after=60)
    payload = await request.body()
    try:
        event = verify_event(payload, stripe_signature, settings.stripe_webhook_secrets)
    except InvalidSignature as exc:
        WEBHOOK_EVENTS.labels("unknown", "bad_signature").inc()
        log.warning("stripe webhook refused", extra={"reason": str(exc)})
        raise BadRequest(f"Stripe signature verification failed: {exc}.") from None
    try:
        outcome = await service.handle_event(sessionmaker=request.app.state.sessionmaker,
                                             writer=request.app.state.billing_writer, event=event)
    except service.UnprocessableEvent as exc:
        raise Unprocessable(
            f"Event {event.id} ({event.type}) cannot be applied: {exc.field} {exc.reason}. Nothing was "
            "recorded; Stripe will redeliver.", errors=[{"field": exc.field, "message": exc.reason}],
        ) from None
    return WebhookAck(received=True, duplicate=outcome == "duplicate")


@router.get("/billing/subscription", response_model=SubscriptionOut, summary="The caller's subscription")
async def get_subscription(user: CurrentUser, session: SessionDep) -> SubscriptionOut:
    return await service.get_subscription(session=session, user_id=user.id)


@router.get("/billing/payments", response_model=PaymentsPage, summary="The caller's payments, newest first")
async def list_payments(
    user: CurrentUser,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> PaymentsPage:
    if cursor == "":
        raise BadRequest("cursor must not be empty")
    return await service.list_payments(session=session, user_id=user.id, limit=limit, cursor=cursor)
