"""All billing SQL. Every write is idempotent on its natural key.

Billing never reads another feature's tables: a user id is checked by the foreign key on
``billing_accounts.user_id``, not by a query on ``users``.
"""

from __future__ import annotations

import datetime as dt
import uuid

import sqlalchemy.exc
from sqlalchemy import and_, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.billing.models import BillingAccount, Payment

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


FOREIGN_KEY_VIOLATION = "23503"


class BillingRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def claim_event(self, *, event_id: str, type_: str, created: dt.datetime) -> bool:
        """Record the event id; False if it was already recorded (or is being recorded concurrently:
        the INSERT waits for the other transaction and then sees its row)."""
        result = await self.session.execute(_CLAIM_EVENT, {"id": event_id, "type": type_, "created": created})
        return result.scalar_one_or_none() is not None

    async def claim_and_pay(self, *, event_id: str, type_: str, created: dt.datetime, invoice_id: str,
                            customer_id: str, amount_minor: int, currency: str,
                            paid_at: dt.datetime) -> tuple[bool, bool]:
        """Record the event and its payment in one atomic statement: (claimed, payment_added)."""
        row = (await self.session.execute(_CLAIM_AND_PAY, {
            "id": event_id, "type": type_, "created": created, "invoice_id": invoice_id,
            "customer": customer_id, "amount": amount_minor, "currency": currency, "paid_at": paid_at,
        })).one()
        return bool(row.claimed), bool(row.paid)

    async def ensure_account(self, customer_id: str) -> None:
        stmt = insert(BillingAccount).values(stripe_customer_id=customer_id).on_conflict_do_nothing()
        await self.session.execute(stmt)

    async def link_user(self, *, customer_id: str, user_id: uuid.UUID) -> None:
        # A user has one current customer: detach any other first (unique user_id).
        await self.session.execute(
            update(BillingAccount)
            .where(BillingAccount.user_id == user_id, BillingAccount.stripe_customer_id != customer_id)
            .values(user_id=None)
        )
        await self.ensure_account(customer_id)
        try:
            await self.session.execute(
                update(BillingAccount).where(BillingAccount.stripe_customer_id == customer_id).values(user_id=user_id)
            )
        except sqlalchemy.exc.IntegrityError as exc:
            if getattr(exc.orig, "sqlstate", None) == FOREIGN_KEY_VIOLATION:
                raise UnknownUser() from None
            raise

    async def set_status_if_newer(self, *, customer_id: str, status: str, event_at: dt.datetime,
                                  current_period_end: dt.datetime | None) -> str:
        """Apply a status unless a newer event already set one (out-of-order delivery).

        Returns ``applied``, ``tie`` (applied, but the stored status came from an event created in the
        same second, which Stripe's timestamps cannot order) or ``older`` (not applied). The account
        row is locked, so concurrent deliveries for one customer are serialised.
        """
        await self.ensure_account(customer_id)
        stored = (
            await self.session.execute(
                select(BillingAccount.status_event_at)
                .where(BillingAccount.stripe_customer_id == customer_id)
                .with_for_update()
            )
        ).scalar_one()
        if stored is not None and stored > event_at:
            return "older"
        values: dict[str, object] = {"status": status, "status_event_at": event_at,
                                     "updated_at": dt.datetime.now(dt.UTC)}
        if current_period_end is not None:
            values["current_period_end"] = current_period_end
        await self.session.execute(
            update(BillingAccount).where(BillingAccount.stripe_customer_id == customer_id).values(**values)
        )
        return "tie" if stored == event_at else "applied"

    async def account_for_user(self, user_id: uuid.UUID) -> BillingAccount | None:
        return (
            await self.session.execute(select(BillingAccount).where(BillingAccount.user_id == user_id))
        ).scalar_one_or_none()

    async def payments_page(self, *, user_id: uuid.UUID, limit: int,
                            after: tuple[dt.datetime, uuid.UUID] | None) -> list[Payment]:
        """Newest first, keyset-paginated on (paid_at, id)."""
        stmt = (
            select(Payment)
            .join(BillingAccount, BillingAccount.stripe_customer_id == Payment.stripe_customer_id)
            .where(BillingAccount.user_id == user_id)
        )
        if after is not None:
            paid_at, pid = after
            stmt = stmt.where(or_(Payment.paid_at < paid_at, and_(Payment.paid_at == paid_at, Payment.id < pid)))
        stmt = stmt.order_by(Payment.paid_at.desc(), Payment.id.desc()).limit(limit)
        return list((await self.session.execute(stmt)).scalars())
