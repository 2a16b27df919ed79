"""All billing SQL. Every write is idempotent on its natural key.

Billing never reads another feature's tables: a user id is checked by the foreign key on
``billing_accounts.user_id``, not by a query on ``users``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Collection
from typing import Any

import sqlalchemy.exc
from sqlalchemy import ColumnElement, and_, delete, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.billing.models import BillingAccount, BillingSubscription, Payment
from app.core.db import Database

# Plain statements: compiled once, no per-call construct building on the hot path.
_CLAIM_EVENT = text(
    "INSERT INTO stripe_events (id, type, stripe_created_at) VALUES (:id, :type, :created) "
    "ON CONFLICT (id) DO NOTHING RETURNING id"
)
# The dedup record and the payment in ONE statement: a statement is atomic on its own, so the pair
# commits together or not at all, in a single round trip. A concurrent delivery of the same event
# waits on the first one's stripe_events row and then claims nothing (and so pays nothing).
_CLAIM_AND_PAY = text(
    "WITH claimed AS ("
    " INSERT INTO stripe_events (id, type, stripe_created_at) VALUES (:id, :type, :created)"
    " ON CONFLICT (id) DO NOTHING RETURNING id"
    "), paid AS ("
    " INSERT INTO payments (invoice_id, stripe_customer_id, amount_minor, currency, paid_at, event_id)"
    " SELECT :invoice_id, :customer, :amount, :currency, :paid_at, id FROM claimed"
    " ON CONFLICT (invoice_id) DO NOTHING RETURNING id"
    ") SELECT (SELECT count(*) FROM claimed) AS claimed, (SELECT count(*) FROM paid) AS paid"
)


class UnknownUser(Exception):
    """The user id names no account (the foreign key refused it)."""


class SubscriptionOfAnotherCustomer(Exception):
    """The subscription id is already stored for another customer."""


def _subscription_row(customer_id: str, subscription_id: str | None) -> tuple[ColumnElement[bool], ...]:
    if subscription_id is None:
        return (
            BillingSubscription.stripe_customer_id == customer_id,
            BillingSubscription.stripe_subscription_id.is_(None),
        )
    return (
        BillingSubscription.stripe_subscription_id == subscription_id,
        BillingSubscription.stripe_customer_id == customer_id,
    )


FOREIGN_KEY_VIOLATION = "23503"

# The subscription that speaks for a user (BillingRepository.subscription_for_user, speaking_subscription).
_SPEAKING_SUBSCRIPTION = text(
    "SELECT s.status, s.current_period_end FROM billing_subscriptions s"
    " JOIN billing_accounts a ON a.stripe_customer_id = s.stripe_customer_id WHERE a.user_id = :user_id"
    " ORDER BY s.status = ANY(:speaking_first) DESC, s.status_event_at DESC, s.updated_at DESC, s.id LIMIT 1"
)


async def speaking_subscription(
    database: Database, *, user_id: uuid.UUID, speaking_first: Collection[str]
) -> tuple[str, dt.datetime | None] | None:
    """``BillingRepository.subscription_for_user`` as one statement on the driver path (``GET /v1/auth/me``)."""
    rows = await database.run_single(
        _SPEAKING_SUBSCRIPTION, {"user_id": user_id, "speaking_first": sorted(speaking_first)}
    )
    return (rows[0]["status"], rows[0]["current_period_end"]) if rows else None


class DeliveryLedger:
    """A delivery's whole effect when it fits in one statement (``invoice.paid``, the types we ignore), run on
    the driver path (``Database.run_single``): the hot path of the webhook, no session around it."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def claim(self, *, event_id: str, type_: str, created: dt.datetime) -> bool:
        """Record the event id; False if it was already recorded (or is being recorded concurrently)."""
        rows = await self.database.run_single(
            _CLAIM_EVENT, {"id": event_id, "type": type_, "created": created}
        )
        return bool(rows)

    async def claim_and_pay(
        self,
        *,
        event_id: str,
        type_: str,
        created: dt.datetime,
        invoice_id: str,
        customer_id: str,
        amount_minor: int,
        currency: str,
        paid_at: dt.datetime,
    ) -> tuple[bool, bool]:
        """Record the event and its payment in one atomic statement: (claimed, payment_added)."""
        (row,) = await self.database.run_single(
            _CLAIM_AND_PAY,
            {
                "id": event_id,
                "type": type_,
                "created": created,
                "invoice_id": invoice_id,
                "customer": customer_id,
                "amount": amount_minor,
                "currency": currency,
                "paid_at": paid_at,
            },
        )
        return bool(row["claimed"]), bool(row["paid"])


class BillingRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def claim_event(self, *, event_id: str, type_: str, created: dt.datetime) -> bool:
        """Record the event id; False if it was already recorded (or is being recorded concurrently:
        the INSERT waits for the other transaction and then sees its row)."""
        result = await self.session.execute(_CLAIM_EVENT, {"id": event_id, "type": type_, "created": created})
        return result.scalar_one_or_none() is not None

    async def lock_account(self, customer_id: str) -> bool:
        """Create the customer's account row if needed and lock it for this transaction, so every state
        change of one customer (its link, its subscriptions) is serialised. Returns whether the customer
        has an unidentified subscription row."""
        await self.session.execute(
            insert(BillingAccount).values(stripe_customer_id=customer_id).on_conflict_do_nothing()
        )
        has_unidentified = (
            select(BillingSubscription.id)
            .where(
                BillingSubscription.stripe_customer_id == customer_id,
                BillingSubscription.stripe_subscription_id.is_(None),
            )
            .exists()
        )
        stmt = (
            select(has_unidentified)
            .where(BillingAccount.stripe_customer_id == customer_id)
            .with_for_update(of=BillingAccount)
        )
        return bool((await self.session.execute(stmt)).scalar_one())

    async def link_user(self, *, customer_id: str, user_id: uuid.UUID) -> None:
        """Link the (existing, locked) customer to the user."""
        # A user has one current customer: detach any other first (unique user_id).
        await self.session.execute(
            update(BillingAccount)
            .where(BillingAccount.user_id == user_id, BillingAccount.stripe_customer_id != customer_id)
            .values(user_id=None)
        )
        try:
            await self.session.execute(
                update(BillingAccount)
                .where(BillingAccount.stripe_customer_id == customer_id)
                .values(user_id=user_id)
            )
        except sqlalchemy.exc.IntegrityError as exc:
            if getattr(exc.orig, "sqlstate", None) == FOREIGN_KEY_VIOLATION:
                raise UnknownUser() from None
            raise

    async def set_status_if_newer(
        self,
        *,
        customer_id: str,
        subscription_id: str | None,
        status: str,
        event_at: dt.datetime,
        current_period_end: dt.datetime | None,
    ) -> str:
        """Apply a subscription's status unless a newer event already set one (out-of-order delivery).

        ``subscription_id=None`` is the customer's unidentified subscription row. Returns ``applied``,
        ``tie`` (applied, but the stored status came from an event created in the same second, which
        Stripe's timestamps cannot order) or ``older`` (not applied). The subscription's row is read
        with ``FOR UPDATE``, so concurrent deliveries for one subscription are serialised.
        """
        where = _subscription_row(customer_id, subscription_id)
        stored = await self._locked_event_at(where)
        if stored is None:
            values = {
                "stripe_subscription_id": subscription_id,
                "stripe_customer_id": customer_id,
                "status": status,
                "status_event_at": event_at,
                "current_period_end": current_period_end,
            }
            inserted = (
                await self.session.execute(
                    insert(BillingSubscription)
                    .values(**values)
                    .on_conflict_do_nothing()
                    .returning(BillingSubscription.id)
                )
            ).scalar_one_or_none()
            if inserted is not None:
                return "applied"
            stored = await self._locked_event_at(where)  # a concurrent first delivery created it meanwhile
            if stored is None:  # the id is stored under another customer: Stripe never moves a subscription
                raise SubscriptionOfAnotherCustomer()
        if stored > event_at:
            return "older"
        changes: dict[str, object] = {"status": status, "status_event_at": event_at, "updated_at": func.now()}
        if current_period_end is not None:
            changes["current_period_end"] = current_period_end
        await self.session.execute(update(BillingSubscription).where(*where).values(**changes))
        return "tie" if stored == event_at else "applied"

    async def _locked_event_at(self, where: tuple[ColumnElement[bool], ...]) -> dt.datetime | None:
        stmt = select(BillingSubscription.status_event_at).where(*where).with_for_update()
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def newest_identified_change(
        self, *, customer_id: str, excluding: Collection[str]
    ) -> dt.datetime | None:
        """The newest event time among the customer's identified subscriptions whose status is not in
        ``excluding``."""
        stmt = select(func.max(BillingSubscription.status_event_at)).where(
            BillingSubscription.stripe_customer_id == customer_id,
            BillingSubscription.stripe_subscription_id.is_not(None),
            BillingSubscription.status.not_in(list(excluding)),
        )
        return (await self.session.execute(stmt)).scalar_one()

    async def retire_unidentified(self, *, customer_id: str, up_to: dt.datetime) -> None:
        """Delete the customer's unidentified subscription row if its state is not newer than ``up_to``."""
        await self.session.execute(
            delete(BillingSubscription).where(
                *_subscription_row(customer_id, None), BillingSubscription.status_event_at <= up_to
            )
        )

    async def subscription_for_user(
        self, *, user_id: uuid.UUID, speaking_first: Collection[str]
    ) -> tuple[str, dt.datetime | None] | None:
        """(status, current_period_end) of the subscription that speaks for the user: one whose status is
        in ``speaking_first`` if any, else the most recently changed (by event time); None without any."""
        result = await self.session.execute(
            _SPEAKING_SUBSCRIPTION, {"user_id": user_id, "speaking_first": sorted(speaking_first)}
        )
        row = result.one_or_none()
        return (row.status, row.current_period_end) if row is not None else None

    async def payments_page(
        self, *, user_id: uuid.UUID, limit: int, after: tuple[dt.datetime, uuid.UUID] | None
    ) -> list[Payment]:
        """Newest first, keyset-paginated on (paid_at, id)."""
        stmt = (
            select(Payment)
            .join(BillingAccount, BillingAccount.stripe_customer_id == Payment.stripe_customer_id)
            .where(BillingAccount.user_id == user_id)
        )
        if after is not None:
            paid_at, pid = after
            stmt = stmt.where(
                or_(Payment.paid_at < paid_at, and_(Payment.paid_at == paid_at, Payment.id < pid))
            )
        stmt = stmt.order_by(Payment.paid_at.desc(), Payment.id.desc()).limit(limit)
        return list((await self.session.execute(stmt)).scalars())


# The operator's audit (python -m app.cli audit-payments): what arrived since a moment, read-only.
_AUDIT_EVENTS = text(
    "SELECT id, type, stripe_created_at, processed_at FROM stripe_events"
    " WHERE processed_at >= :since ORDER BY processed_at, id LIMIT :limit"
)
_AUDIT_EVENT_COUNTS = text(
    "SELECT type, count(*) AS n FROM stripe_events WHERE processed_at >= :since GROUP BY type ORDER BY type"
)
# Payments recorded since then: by the processing time of the event that paid them (a payment's
# paid_at comes from the event's payload, which whoever signed the event chose).
_AUDIT_PAYMENTS = text(
    "SELECT p.invoice_id, p.stripe_customer_id, a.user_id, p.amount_minor, p.currency, p.paid_at,"
    " p.event_id, e.processed_at"
    " FROM payments p LEFT JOIN stripe_events e ON e.id = p.event_id"
    " LEFT JOIN billing_accounts a ON a.stripe_customer_id = p.stripe_customer_id"
    " WHERE coalesce(e.processed_at, p.paid_at) >= :since ORDER BY coalesce(e.processed_at, p.paid_at), p.id"
    " LIMIT :limit"
)
_AUDIT_PAYMENTS_WITHOUT_EVENT = text(
    "SELECT p.invoice_id, p.stripe_customer_id, a.user_id, p.amount_minor, p.currency, p.paid_at, p.event_id"
    " FROM payments p LEFT JOIN billing_accounts a ON a.stripe_customer_id = p.stripe_customer_id"
    " WHERE p.paid_at >= :since AND NOT EXISTS (SELECT 1 FROM stripe_events e WHERE e.id = p.event_id)"
    " ORDER BY p.paid_at, p.id LIMIT :limit"
)
_AUDIT_PAYMENT_TOTALS = text(
    "SELECT p.currency, count(*) AS n, sum(p.amount_minor) AS amount_minor, count(*) FILTER (WHERE e.id IS NULL)"
    " AS without_event"
    " FROM payments p LEFT JOIN stripe_events e ON e.id = p.event_id"
    " WHERE coalesce(e.processed_at, p.paid_at) >= :since GROUP BY p.currency ORDER BY p.currency"
)
_AUDIT_SUBSCRIPTIONS = text(
    "SELECT s.stripe_customer_id, s.stripe_subscription_id, a.user_id, s.status, s.status_event_at, s.updated_at"
    " FROM billing_subscriptions s LEFT JOIN billing_accounts a ON a.stripe_customer_id = s.stripe_customer_id"
    " WHERE s.updated_at >= :since ORDER BY s.updated_at LIMIT :limit"
)
# Stripe signs an event when it sends it and retries for up to three days: an event "created" in the
# future, or processed long after its creation, deserves a look in Stripe's dashboard.
_AUDIT_ODD_TIMING = text(
    "SELECT id, type, stripe_created_at, processed_at FROM stripe_events WHERE processed_at >= :since"
    " AND (stripe_created_at > processed_at + interval '5 minutes'"
    " OR stripe_created_at < processed_at - interval '3 days') ORDER BY processed_at LIMIT :limit"
)


class AuditRepository:
    """Read-only queries behind the payments audit."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def _rows(self, stmt: Any, **params: Any) -> list[dict[str, Any]]:
        return [dict(row._mapping) for row in await self.session.execute(stmt, params)]

    async def events(self, *, since: dt.datetime, limit: int) -> list[dict[str, Any]]:
        return await self._rows(_AUDIT_EVENTS, since=since, limit=limit)

    async def event_counts(self, *, since: dt.datetime) -> dict[str, int]:
        return {r["type"]: int(r["n"]) for r in await self._rows(_AUDIT_EVENT_COUNTS, since=since)}

    async def payments(self, *, since: dt.datetime, limit: int) -> list[dict[str, Any]]:
        return await self._rows(_AUDIT_PAYMENTS, since=since, limit=limit)

    async def payments_without_event(self, *, since: dt.datetime, limit: int) -> list[dict[str, Any]]:
        return await self._rows(_AUDIT_PAYMENTS_WITHOUT_EVENT, since=since, limit=limit)

    async def payment_totals(self, *, since: dt.datetime) -> list[dict[str, Any]]:
        return await self._rows(_AUDIT_PAYMENT_TOTALS, since=since)

    async def subscriptions(self, *, since: dt.datetime, limit: int) -> list[dict[str, Any]]:
        return await self._rows(_AUDIT_SUBSCRIPTIONS, since=since, limit=limit)

    async def odd_timing(self, *, since: dt.datetime, limit: int) -> list[dict[str, Any]]:
        return await self._rows(_AUDIT_ODD_TIMING, since=since, limit=limit)
