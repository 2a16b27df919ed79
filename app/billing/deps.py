"""Billing's own dependencies: the webhook verifier and the verified Stripe event.

``VerifiedStripeEvent`` owns everything that happens before an event is trusted: the kill switch
(``STRIPE_WEBHOOK_ENABLED=false`` → 503, Stripe redelivers later), the raw-body signature check
(→ 400) and their metrics (``webhook_events_total{type="unknown",outcome=disabled|bad_signature}``).
The route receives only events Stripe really signed.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, Request

from app.core.deps import SettingsDep
from app.core.errors import BadRequest, ServiceUnavailable
from app.core.observability import WEBHOOK_EVENTS
from app.core.openapi import required_header
from app.providers.stripe import InvalidSignature, StripeEvent, WebhookVerifier

log = logging.getLogger("tradedesk.billing")


async def get_webhook_verifier(request: Request) -> WebhookVerifier:
    verifier: WebhookVerifier = request.app.state.stripe_verifier
    return verifier


WebhookVerifierDep = Annotated[WebhookVerifier, Depends(get_webhook_verifier)]


async def verified_stripe_event(
    request: Request,
    settings: SettingsDep,
    verifier: WebhookVerifierDep,
    # Checked by the verifier (missing or bad: the contract's 400), documented as required.
    stripe_signature: Annotated[
        str | None,
        required_header(
            alias="Stripe-Signature",
            description="Stripe's signature of the raw body (`t=<unix time>,v1=<hex HMAC-SHA256>`), "
            "verified with STRIPE_WEBHOOK_SECRET and a 300 s tolerance.",
            minLength=1,
        ),
    ] = None,
) -> StripeEvent:
    """The event in the request body, if the kill switch is off and Stripe signed it."""
    if not settings.stripe_webhook_enabled:
        WEBHOOK_EVENTS.labels("unknown", "disabled").inc()
        raise ServiceUnavailable(
            "Stripe webhooks are switched off (STRIPE_WEBHOOK_ENABLED=false); Stripe will redeliver later.",
            retry_after=60,
        )
    payload = await request.body()
    try:
        return verifier.verify(payload, stripe_signature)
    except InvalidSignature as exc:
        WEBHOOK_EVENTS.labels("unknown", "bad_signature").inc()
        log.warning("stripe webhook refused", extra={"reason": str(exc)})
        raise BadRequest(f"Stripe signature verification failed: {exc}.") from None


VerifiedStripeEvent = Annotated[StripeEvent, Depends(verified_stripe_event)]
