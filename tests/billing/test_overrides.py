"""Billing reaches its webhook verifier through WebhookVerifierDep: a test can swap it, and the route
still sees only what the verifier vouches for (the kill switch stays in front of it)."""

from __future__ import annotations

import json

from app.billing.deps import get_webhook_verifier
from app.providers.stripe import InvalidSignature, StripeEvent, WebhookVerifier
from tests.billing import stripe_fake as sf

WEBHOOK = "/v1/webhooks/stripe"


class TrustHeaderVerifier:
    """Accepts a body whose signature header is exactly the word the test chose (no Stripe involved)."""

    def __init__(self, word: str) -> None:
        self.word = word
        self.seen: list[str] = []

    def verify(self, payload: bytes, signature_header: str | None) -> StripeEvent:
        if signature_header != self.word:
            raise InvalidSignature("not the word")
        raw = json.loads(payload)
        self.seen.append(raw["id"])
        return StripeEvent(
            id=raw["id"], type=raw["type"], created=raw["created"], data_object=raw["data"]["object"]
        )


def _override(verifier: WebhookVerifier):
    async def dependency() -> WebhookVerifier:
        return verifier

    return lambda app: app.dependency_overrides.update({get_webhook_verifier: dependency})


async def test_webhook_verifier_is_swapped_through_dependency_overrides(make_client) -> None:
    verifier = TrustHeaderVerifier("swordfish")
    client = await make_client(app_hook=_override(verifier))
    evt = sf.invoice_paid("cus_override", "in_override", 1999)
    body = json.dumps(evt).encode()

    real_signature = sf.signed(evt)[1]  # a genuine Stripe signature means nothing to the swapped verifier
    refused = await client.post(WEBHOOK, content=body, headers=real_signature)
    assert refused.status_code == 400 and "not the word" in refused.json()["detail"]

    ok = await client.post(WEBHOOK, content=body, headers={"Stripe-Signature": "swordfish"})
    assert ok.status_code == 200 and ok.json() == {"received": True, "duplicate": False}
    again = await client.post(WEBHOOK, content=body, headers={"Stripe-Signature": "swordfish"})
    assert again.json() == {"received": True, "duplicate": True}  # still exactly once behind it
    assert verifier.seen == [evt["id"], evt["id"]]


async def test_kill_switch_answers_before_any_verifier_runs(make_client) -> None:
    verifier = TrustHeaderVerifier("swordfish")
    client = await make_client(app_hook=_override(verifier), stripe_webhook_enabled=False)
    evt = sf.invoice_paid("cus_off", "in_off", 100)
    r = await client.post(
        WEBHOOK, content=json.dumps(evt).encode(), headers={"Stripe-Signature": "swordfish"}
    )
    assert r.status_code == 503 and r.headers["retry-after"]
    assert verifier.seen == []
