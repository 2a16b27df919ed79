"""Stripe webhook verification behind a small Protocol, with the official SDK as its implementation.

``WebhookVerifier`` is what billing depends on (``app.billing.deps``); ``build_webhook_verifier`` makes
the one the settings call for at startup, and tests may swap it through ``app.dependency_overrides``.
There is deliberately no "local" verifier that accepts unsigned events: verification needs no
network, so the SDK one runs unchanged in development and tests (which sign their events exactly as
Stripe does), and a switch that skips signatures would be one setting away from production.

The signature is checked over the raw request bytes against every configured secret (several
during a rotation) with a 300 s tolerance. ``WebhookSignature.verify_header`` is used with the
tolerance passed explicitly (without it the SDK checks no timestamp at all), and the verified bytes
are parsed as plain JSON: no module-level ``stripe.api_key`` or global client is involved.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

import stripe

from app.core.config import Settings

TOLERANCE_SECONDS = 300


class InvalidSignature(Exception):
    """The payload is not a Stripe event signed with one of our secrets within the tolerance."""


@dataclass(frozen=True, slots=True)
class StripeEvent:
    id: str
    type: str
    created: int
    data_object: dict[str, Any]


class WebhookVerifier(Protocol):
    def verify(self, payload: bytes, signature_header: str | None) -> StripeEvent:
        """The event in ``payload``; ``InvalidSignature`` unless Stripe signed it with one of our secrets."""
        ...


class StripeSignatureVerifier:
    """The live verifier: Stripe's SDK, every configured secret (rotation), a 300 s tolerance."""

    def __init__(self, secrets: list[str], *, tolerance: int = TOLERANCE_SECONDS) -> None:
        if not secrets:
            raise ValueError("at least one webhook secret is required")
        self._secrets = list(secrets)
        self.tolerance = tolerance

    def verify(self, payload: bytes, signature_header: str | None) -> StripeEvent:
        return _verify_event(payload, signature_header, self._secrets, self.tolerance)


def build_webhook_verifier(settings: Settings) -> WebhookVerifier:
    """The verifier for STRIPE_WEBHOOK_SECRET (comma-separated during a rotation)."""
    return StripeSignatureVerifier(settings.stripe_webhook_secrets)


def _verify_event(
    payload: bytes, signature_header: str | None, secrets: list[str], tolerance: int = TOLERANCE_SECONDS
) -> StripeEvent:
    if not signature_header:
        raise InvalidSignature("missing Stripe-Signature header")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidSignature("payload is not UTF-8") from None
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(text, signature_header, secret, tolerance)
            break
        except stripe.SignatureVerificationError:
            continue
    else:
        raise InvalidSignature(
            "no configured secret matches the signature, or the timestamp is outside the tolerance"
        )
    try:
        raw = json.loads(text)
        event = StripeEvent(
            id=str(raw["id"]),
            type=str(raw["type"]),
            created=int(raw["created"]),
            data_object=dict(raw.get("data", {}).get("object") or {}),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        # Signed by Stripe but not an event we can read: refuse rather than record garbage.
        raise InvalidSignature("signed payload is not a Stripe event object") from None
    if not event.id.startswith("evt_") or len(event.id) > 255 or len(event.type) > 255:
        raise InvalidSignature("signed payload has an invalid event id or type")
    return event
