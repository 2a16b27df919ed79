"""Stripe webhook and the user's billing views."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.auth.deps import CurrentUser
from app.billing import service
from app.billing.deps import VerifiedStripeEvent
from app.billing.schemas import PaymentsPage, SubscriptionOut, WebhookAck
from app.core.deps import DatabaseDep, SessionDep, SettingsDep
from app.core.errors import Unprocessable

router = APIRouter(tags=["billing"])


@router.post(
    "/webhooks/stripe",
    response_model=WebhookAck,
    summary="Stripe webhook: verified, applied exactly once",
    responses={
        400: {"description": "Bad, missing or stale signature (also: a body that is not the signed one)"},
        422: {"description": "An event of a known type that cannot be applied (`errors[].field`)"},
        503: {"description": "Kill switch on"},
    },
    # Read raw (the signature covers the exact bytes), so FastAPI does not document it by itself.
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "description": "A Stripe event, exactly as Stripe sent and signed it.",
                        "required": ["id", "type"],
                        "properties": {
                            "id": {"type": "string", "examples": ["evt_1"]},
                            "type": {"type": "string", "examples": ["invoice.paid"]},
                            "data": {"type": "object"},
                        },
                    }
                }
            },
        }
    },
)
async def stripe_webhook(event: VerifiedStripeEvent, database: DatabaseDep) -> WebhookAck:
    try:
        outcome = await service.handle_event(database=database, event=event)
    except service.UnprocessableEvent as exc:
        raise Unprocessable(
            f"Event {event.id} ({event.type}) cannot be applied: {exc.field} {exc.reason}. Nothing was "
            "recorded; Stripe will redeliver.",
            errors=[{"field": exc.field, "message": exc.reason}],
        ) from None
    return WebhookAck(received=True, duplicate=outcome == "duplicate")


@router.get("/billing/subscription", response_model=SubscriptionOut, summary="The caller's subscription")
async def get_subscription(user: CurrentUser, session: SessionDep) -> SubscriptionOut:
    return await service.get_subscription(session=session, user_id=user.id)


@router.get("/billing/payments", response_model=PaymentsPage, summary="The caller's payments, newest first")
async def list_payments(
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[
        str | None, Query(min_length=1, max_length=200, description="next_cursor of the previous page")
    ] = None,
) -> PaymentsPage:
    return await service.list_payments(
        session=session, settings=settings, user_id=user.id, limit=limit, cursor=cursor
    )
