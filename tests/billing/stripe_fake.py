"""Stripe events signed exactly as Stripe signs them (t=…,v1=HMAC-SHA256(secret, "t.payload"))."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import stripe

from tests.support.settings import TEST_WEBHOOK_SECRET


def event(
    type_: str, obj: dict[str, Any], *, event_id: str | None = None, created: int | None = None
) -> dict[str, Any]:
    return {
        "id": event_id or f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "api_version": "2024-06-20",
        "created": created if created is not None else int(time.time()),
        "type": type_,
        "livemode": False,
        "data": {"object": obj},
    }


def signed(
    evt: dict[str, Any], *, secret: str = TEST_WEBHOOK_SECRET, timestamp: int | None = None
) -> tuple[bytes, dict[str, str]]:
    payload = json.dumps(evt, separators=(",", ":"))
    header = stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp=timestamp)
    return payload.encode(), {"Stripe-Signature": header, "Content-Type": "application/json"}


def invoice_paid(
    customer: str, invoice_id: str, amount: int, currency: str = "usd", **kw: Any
) -> dict[str, Any]:
    return event(
        "invoice.paid",
        {
            "object": "invoice",
            "id": invoice_id,
            "customer": customer,
            "amount_paid": amount,
            "currency": currency,
            "status": "paid",
        },
        **kw,
    )


def checkout_completed(customer: str, user_id: str, **kw: Any) -> dict[str, Any]:
    return event(
        "checkout.session.completed",
        {
            "object": "checkout.session",
            "id": f"cs_{uuid.uuid4().hex[:12]}",
            "customer": customer,
            "client_reference_id": user_id,
            "mode": "subscription",
        },
        **kw,
    )


def subscription(
    type_: str, customer: str, status: str, *, period_end: int | None = None, **kw: Any
) -> dict[str, Any]:
    obj: dict[str, Any] = {"object": "subscription", "id": "sub_123", "customer": customer, "status": status}
    if period_end:
        obj["items"] = {"data": [{"id": "si_1", "current_period_end": period_end}]}
    return event(type_, obj, **kw)
