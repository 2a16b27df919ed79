from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, String, Text, func, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base


class StripeEvent(Base):
    """One row per Stripe event id that took effect: the exactly-once record."""

    __tablename__ = "stripe_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(255))
    stripe_created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    processed_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class BillingAccount(Base):
    """A Stripe customer, linked to a user by checkout. Its subscriptions hold the status."""

    __tablename__ = "billing_accounts"

    stripe_customer_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="SET NULL"), unique=True
    )
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class BillingSubscription(Base):
    """One Stripe subscription's state, keyed by its id.

    ``status_event_at`` is the ``created`` time of the event that set the status, so an older event for
    the same subscription, delivered late, never overwrites a newer state. A row without a subscription
    id (at most one per customer) is a status whose subscription is not known: carried over from the
    per-customer status before migration 0006, or set by a checkout that named no subscription. It
    gives way to the first newer state of an identified subscription that started (see the service).
    """

    __tablename__ = "billing_subscriptions"
    __table_args__ = (
        Index(
            "uq_billing_subscriptions_unidentified",
            "stripe_customer_id",
            unique=True,
            postgresql_where=text("stripe_subscription_id IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    stripe_subscription_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    stripe_customer_id: Mapped[str] = mapped_column(
        String(255), ForeignKey("billing_accounts.stripe_customer_id", ondelete="CASCADE"), index=True
    )
    status: Mapped[str] = mapped_column(String(32))
    status_event_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    current_period_end: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Payment(Base):
    """One paid invoice. Unique by invoice id, so any redelivery or sibling event adds nothing."""

    __tablename__ = "payments"

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    invoice_id: Mapped[str] = mapped_column(String(255), unique=True)
    stripe_customer_id: Mapped[str] = mapped_column(String(255), index=True)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    paid_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    event_id: Mapped[str] = mapped_column(Text)
