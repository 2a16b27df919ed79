"""The orders table and its audit trail, ``order_events`` (one row per state transition)."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base


class Order(Base):
    """One order of one user. ``client_order_id`` is what the broker knows it by (unique, ≤ 48 chars);
    ``next_reconcile_at`` is set while the reconciler still has to look at the order (unknown outcome,
    open at the broker, or rejected after the grace period and watched for a late appearance)."""

    __tablename__ = "orders"

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"))
    idempotency_key: Mapped[str] = mapped_column(String(64))
    # The Idempotency-Key claim the order was placed under: recovery completes that claim, never a later one.
    idempotency_claim: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    client_order_id: Mapped[str] = mapped_column(String(48), unique=True)
    provider: Mapped[str] = mapped_column(String(16))
    symbol: Mapped[str] = mapped_column(String(16))
    side: Mapped[str] = mapped_column(String(4))
    type: Mapped[str] = mapped_column(String(6))
    time_in_force: Mapped[str] = mapped_column(String(3))
    qty: Mapped[Decimal] = mapped_column(Numeric)
    limit_price: Mapped[Decimal | None] = mapped_column(Numeric)
    status: Mapped[str] = mapped_column(String(32))
    filled_qty: Mapped[Decimal] = mapped_column(Numeric, server_default=text("0"))
    filled_avg_price: Mapped[Decimal | None] = mapped_column(Numeric)
    broker_order_id: Mapped[str | None] = mapped_column(String(128))
    broker_status: Mapped[str | None] = mapped_column(String(32))
    reject_reason: Mapped[str | None] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    reconcile_attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    next_reconcile_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        Index("ix_orders_user_created", "user_id", text("created_at DESC"), text("id DESC")),
        Index(
            "ix_orders_reconcile_due",
            "next_reconcile_at",
            postgresql_where=text("next_reconcile_at IS NOT NULL"),
        ),
    )


class OrderEvent(Base):
    """A state transition of an order, written in the same statement or transaction as the change."""

    __tablename__ = "order_events"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    order_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("orders.id", ondelete="CASCADE"), index=True
    )
    from_status: Mapped[str | None] = mapped_column(String(32))
    to_status: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)
    filled_qty: Mapped[Decimal | None] = mapped_column(Numeric)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
