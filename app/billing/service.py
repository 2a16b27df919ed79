"""Billing rules: Stripe events take effect exactly once, in the transaction that records them."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.billing.repository import (
    AuditRepository,
    BillingRepository,
    DeliveryLedger,
    SubscriptionOfAnotherCustomer,
    UnknownUser,
    speaking_subscription,
)
from app.billing.schemas import PaymentOut, PaymentsPage, SubscriptionOut
from app.core.config import Settings
from app.core.db import Database
from app.core.observability import WEBHOOK_EVENTS
from app.core.pagination import SignedCursor
from app.providers.stripe import StripeEvent

log = logging.getLogger("tradedesk.billing")

# Stripe amounts are in the currency's smallest unit; these have no minor unit, these have three.
ZERO_DECIMAL = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())
THREE_DECIMAL = frozenset("bhd jod kwd omr tnd".split())
SUBSCRIPTION_STATUSES = frozenset(
    "active past_due canceled trialing unpaid incomplete incomplete_expired paused".split()
)
# A user is paying while any of their subscriptions is in one of these; else the most recently changed
# subscription speaks for them.
PAYING_STATUSES = frozenset({"active", "trialing"})
# A subscription in one of these never started (its first payment never succeeded: an abandoned
# checkout). It cannot tell what became of the subscription an unidentified row stands for.
NEVER_STARTED = frozenset({"incomplete", "incomplete_expired"})


def format_amount(amount_minor: int, currency: str) -> str:
    """1999 usd -> "19.99"; 500 jpy -> "500"; 1234 kwd -> "1.234"."""
    currency = currency.lower()
    exponent = 0 if currency in ZERO_DECIMAL else 3 if currency in THREE_DECIMAL else 2
    return str(Decimal(amount_minor).scaleb(-exponent)) if exponent else str(amount_minor)


def _ts(value: Any) -> dt.datetime | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return dt.datetime.fromtimestamp(value, dt.UTC)
    return None


def _customer_id(obj: dict[str, Any]) -> str | None:
    customer = obj.get("customer")
    if isinstance(customer, dict):
        customer = customer.get("id")
    return customer if isinstance(customer, str) and 0 < len(customer) <= 255 else None


def _checkout_subscription(obj: dict[str, Any]) -> tuple[str | None, dt.datetime | None]:
    """The checkout's subscription id (None if it names none) and, when expanded, its period end."""
    value = obj.get("subscription")
    if value is None:
        return None, None
    period_end = None
    if isinstance(value, dict):
        period_end = _period_end(value)
        value = value.get("id")
    if not isinstance(value, str) or not 0 < len(value) <= 255:
        raise UnprocessableEvent("data.object.subscription", "not a subscription id or subscription object")
    return value, period_end


def _period_end(obj: dict[str, Any]) -> dt.datetime | None:
    # Older API versions carry it on the subscription, newer ones on each item.
    end = _ts(obj.get("current_period_end"))
    if end is None:
        items = (obj.get("items") or {}).get("data") or []
        ends = [_ts(item.get("current_period_end")) for item in items if isinstance(item, dict)]
        end = max((e for e in ends if e is not None), default=None)
    return end


class UnprocessableEvent(Exception):
    """A known event type whose payload we cannot apply. Nothing is recorded and the delivery is
    refused (422), so Stripe keeps redelivering and the failure stays visible until someone acts —
    a payment is never silently acknowledged and dropped."""

    def __init__(self, field: str, reason: str) -> None:
        self.field, self.reason = field, reason
        super().__init__(f"{field}: {reason}")


# Events that change account state read and lock that state: they run in a transaction. Every other
# type's whole effect (a payment, or nothing) fits in one atomic statement (DeliveryLedger: Database.run_single).
STATEFUL_TYPES = frozenset(
    {"checkout.session.completed", "customer.subscription.updated", "customer.subscription.deleted"}
)
# The error series of the events we act on exist (at 0) from startup, so the PaymentWebhookErrors alert
# (deploy/prometheus/alerts.yml) counts their very first failure as well.
for _type in (*sorted(STATEFUL_TYPES), "invoice.paid"):
    for _outcome in ("failed", "unprocessable"):
        WEBHOOK_EVENTS.labels(_type, _outcome)


async def handle_event(*, database: Database, event: StripeEvent) -> str:
    """Record the event id and apply its effect, atomically. Returns the outcome: ``processed``,
    ``ignored`` (recorded, nothing to do) or ``duplicate`` (seen before: no change). Raises — with
    nothing recorded, so Stripe's redelivery can succeed — if anything fails."""
    created = _ts(event.created) or dt.datetime.now(dt.UTC)
    try:
        if event.type in STATEFUL_TYPES:
            async with database.own_transaction() as session:
                repo = BillingRepository(session)
                if not await repo.claim_event(event_id=event.id, type_=event.type, created=created):
                    outcome = "duplicate"
                else:
                    outcome = "processed" if await _apply_stateful(repo, event, created) else "ignored"
        elif event.type == "invoice.paid":
            payment = _payment(event, created)
            claimed, paid = await DeliveryLedger(database).claim_and_pay(
                event_id=event.id, type_=event.type, created=created, **payment
            )
            outcome = "duplicate" if not claimed else "processed" if paid else "ignored"
        else:
            claimed = await DeliveryLedger(database).claim(
                event_id=event.id, type_=event.type, created=created
            )
            outcome = "ignored" if claimed else "duplicate"
    except UnprocessableEvent as exc:
        WEBHOOK_EVENTS.labels(event.type, "unprocessable").inc()
        log.error(
            "stripe event not applicable; refused, nothing recorded",
            extra={"event_id": event.id, "event_type": event.type, "field": exc.field, "reason": exc.reason},
        )
        raise
    except Exception:
        WEBHOOK_EVENTS.labels(event.type, "failed").inc()
        log.error(
            "stripe event failed; nothing recorded, Stripe will redeliver",
            extra={"event_id": event.id, "event_type": event.type},
        )
        raise
    WEBHOOK_EVENTS.labels(event.type, outcome).inc()
    log.info("stripe event", extra={"event_id": event.id, "event_type": event.type, "outcome": outcome})
    return outcome


def _payment(event: StripeEvent, created: dt.datetime) -> dict[str, Any]:
    obj = event.data_object
    customer, invoice_id = _customer_id(obj), obj.get("id")
    amount, currency = obj.get("amount_paid"), obj.get("currency")
    if customer is None:
        raise UnprocessableEvent("data.object.customer", "missing or not a customer id")
    if not isinstance(invoice_id, str) or not invoice_id or len(invoice_id) > 255:
        raise UnprocessableEvent("data.object.id", "missing or not an invoice id")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
        raise UnprocessableEvent("data.object.amount_paid", "must be a non-negative integer (minor units)")
    if not isinstance(currency, str) or len(currency) != 3 or not currency.isalpha():
        raise UnprocessableEvent("data.object.currency", "must be a three-letter currency code")
    paid_at = _ts((obj.get("status_transitions") or {}).get("paid_at")) or created
    return {
        "invoice_id": invoice_id,
        "customer_id": customer,
        "amount_minor": amount,
        "currency": currency.lower(),
        "paid_at": paid_at,
    }


async def _apply_stateful(repo: BillingRepository, event: StripeEvent, created: dt.datetime) -> bool:
    obj = event.data_object
    if event.type == "checkout.session.completed":
        customer = _customer_id(obj)
        try:
            user_id = uuid.UUID(str(obj.get("client_reference_id")))
        except ValueError:
            user_id = None
        if customer is None:
            raise UnprocessableEvent("data.object.customer", "missing or not a customer id")
        if user_id is None:
            raise UnprocessableEvent("data.object.client_reference_id", "missing or not a user id")
        subscription, period_end = _checkout_subscription(obj)
        has_unidentified = await repo.lock_account(customer)
        try:
            await repo.link_user(customer_id=customer, user_id=user_id)
        except UnknownUser:
            raise UnprocessableEvent("data.object.client_reference_id", "names no user") from None
        await _set_status(
            repo, event, customer, subscription, "active", created, period_end, has_unidentified
        )
        return True

    if event.type in ("customer.subscription.updated", "customer.subscription.deleted"):
        customer, subscription, status = _customer_id(obj), obj.get("id"), obj.get("status")
        if event.type == "customer.subscription.deleted" and status not in SUBSCRIPTION_STATUSES:
            status = "canceled"
        if customer is None:
            raise UnprocessableEvent("data.object.customer", "missing or not a customer id")
        if not isinstance(subscription, str) or not 0 < len(subscription) <= 255:
            raise UnprocessableEvent("data.object.id", "missing or not a subscription id")
        if status not in SUBSCRIPTION_STATUSES:
            raise UnprocessableEvent(
                "data.object.status", f"unknown subscription status {str(status)[:40]!r}"
            )
        has_unidentified = await repo.lock_account(customer)
        return await _set_status(
            repo, event, customer, subscription, status, created, _period_end(obj), has_unidentified
        )
    return False


async def _set_status(
    repo: BillingRepository,
    event: StripeEvent,
    customer: str,
    subscription: str | None,
    status: str,
    created: dt.datetime,
    period_end: dt.datetime | None,
    has_unidentified: bool,
) -> bool:
    """Apply one subscription's status in event order (the customer's account row is locked)."""
    if subscription is None:
        # A status whose subscription we do not know yields to any identified subscription that started
        # and changed since: that is the better-informed state.
        newest = await repo.newest_identified_change(customer_id=customer, excluding=NEVER_STARTED)
        result = (
            "older"
            if newest is not None and newest >= created
            else await repo.set_status_if_newer(
                customer_id=customer,
                subscription_id=None,
                status=status,
                event_at=created,
                current_period_end=period_end,
            )
        )
    else:
        try:
            result = await repo.set_status_if_newer(
                customer_id=customer,
                subscription_id=subscription,
                status=status,
                event_at=created,
                current_period_end=period_end,
            )
        except SubscriptionOfAnotherCustomer:
            raise UnprocessableEvent(
                "data.object.customer", "is not the customer of this subscription"
            ) from None
        if result != "older" and has_unidentified and status not in NEVER_STARTED:
            await repo.retire_unidentified(customer_id=customer, up_to=created)
    if result == "older":
        log.info("older subscription event ignored", extra={"event_id": event.id, "event_type": event.type})
    elif result == "tie":
        # Stripe's `created` has one-second resolution: two changes of one subscription in the same
        # second cannot be ordered from the payloads. The later delivery wins; say so, so an operator
        # can check it in Stripe.
        log.warning(
            "two subscription events in the same second; the last delivered status is kept",
            extra={"event_id": event.id, "event_type": event.type, "status": status},
        )
    return result != "older"


async def subscription_status(*, session: AsyncSession, user_id: uuid.UUID) -> str:
    """The user's subscription status (``none`` before any checkout)."""
    return (await get_subscription(session=session, user_id=user_id)).status


async def current_status(*, database: Database, user_id: uuid.UUID) -> str:
    """``subscription_status`` without a session: one autocommit statement (the profile read)."""
    found = await speaking_subscription(database, user_id=user_id, speaking_first=PAYING_STATUSES)
    return found[0] if found is not None else "none"


async def get_subscription(*, session: AsyncSession, user_id: uuid.UUID) -> SubscriptionOut:
    """The status and period end of the subscription that speaks for the user."""
    found = await BillingRepository(session).subscription_for_user(
        user_id=user_id, speaking_first=PAYING_STATUSES
    )
    if found is None:
        return SubscriptionOut(status="none", current_period_end=None)
    status, period_end = found
    return SubscriptionOut(status=status, current_period_end=period_end)


# Payments cursors are signed (app/core/pagination.py), with a key of their own.
_CURSOR_KEY_LABEL = "tradedesk/billing/payments-cursor/v1"


def _cursor(settings: Settings) -> SignedCursor:
    return SignedCursor(settings.derived_key(_CURSOR_KEY_LABEL))


async def list_payments(
    *, session: AsyncSession, settings: Settings, user_id: uuid.UUID, limit: int, cursor: str | None
) -> PaymentsPage:
    """The user's payments, newest first."""
    cursors = _cursor(settings)
    after = cursors.decode(user_id, cursor) if cursor is not None else None
    rows = await BillingRepository(session).payments_page(user_id=user_id, limit=limit + 1, after=after)
    page, more = rows[:limit], len(rows) > limit
    items = [
        PaymentOut(
            invoice_id=p.invoice_id,
            amount=format_amount(p.amount_minor, p.currency),
            currency=p.currency,
            paid_at=p.paid_at,
        )
        for p in page
    ]
    next_cursor = cursors.encode(user_id, page[-1].paid_at, page[-1].id) if more else None
    return PaymentsPage(items=items, next_cursor=next_cursor)


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, dt.datetime):
            out[key] = value.isoformat()
        elif isinstance(value, uuid.UUID):
            out[key] = str(value)
        else:
            out[key] = value
    return out


async def audit(*, database: Database, since: dt.datetime, limit: int = 1000) -> dict[str, Any]:
    """What billing recorded since ``since``: webhook events, payments, subscription changes, and
    the rows that deserve a second look (a payment without its event, an event with odd timing)."""
    async with database.own_transaction() as session:
        repo = AuditRepository(session)
        events = await repo.events(since=since, limit=limit)
        event_counts = await repo.event_counts(since=since)
        payments = await repo.payments(since=since, limit=limit)
        totals = await repo.payment_totals(since=since)
        subscriptions = await repo.subscriptions(since=since, limit=limit)
        odd = await repo.odd_timing(since=since, limit=limit)
        without_event = await repo.payments_without_event(since=since, limit=limit)
    for p in (*payments, *without_event):
        p["amount"] = format_amount(p.pop("amount_minor"), p["currency"])
    return {
        "since": since.isoformat(),
        "events": sum(event_counts.values()),
        "events_by_type": event_counts,
        "payments": sum(int(t["n"]) for t in totals),
        "paid_by_currency": {
            t["currency"]: format_amount(int(t["amount_minor"]), t["currency"]) for t in totals
        },
        "subscriptions_changed": len(subscriptions),
        "suspicious": sum(int(t["without_event"]) for t in totals) + len(odd),
        "payments_without_event": [_jsonable(p) for p in without_event],
        "events_with_odd_timing": [_jsonable(e) for e in odd],
        "truncated": any(
            len(rows) >= limit for rows in (events, payments, subscriptions, without_event, odd)
        ),
        "items": {
            "events": [_jsonable(e) for e in events],
            "payments": [_jsonable(p) for p in payments],
            "subscriptions": [_jsonable(s) for s in subscriptions],
        },
    }
