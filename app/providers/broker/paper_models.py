"""The table behind the paper broker (``app/providers/broker/paper.py``): one row per simulated order.

Kept apart from the simulator so ``app.models`` (Alembic, the tests) can import the schema alone. The
paper broker is an external system seen through ``BrokerProvider``: its table belongs to it, not to the
orders feature, which keeps its own orders and reaches these only through the Protocol.

``account`` is whatever the caller passes as ``access_token`` (the orders feature passes the user id): it
is stored as given, so it must not be a secret. ``client_order_id`` is unique per account, as at Alpaca.
Money and quantities are ``NUMERIC`` without a scale: exactly the decimal that was sent comes back.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

from sqlalchemy import CheckConstraint, DateTime, Index, Numeric, String, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base

# The only status an order rests in (working, nothing filled); every other one is terminal.
OPEN = "new"
FILLED = "filled"
CANCELED = "canceled"
EXPIRED = "expired"
STATUSES = (OPEN, FILLED, CANCELED, EXPIRED)
MAX_ACCOUNT_LENGTH = 64
MAX_SYMBOL_LENGTH = 16


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class PaperOrder(Base):
    """One simulated order: what was asked, and its state (resting ``new``, or filled/canceled/expired)."""

    __tablename__ = "paper_orders"
    __table_args__ = (
        UniqueConstraint("account", "client_order_id", name="uq_paper_orders_account_client_order_id"),
        CheckConstraint(_in("side", ("buy", "sell")), name="side"),
        CheckConstraint(_in("type", ("market", "limit")), name="type"),
        CheckConstraint(_in("time_in_force", ("day", "gtc", "ioc", "fok")), name="time_in_force"),
        CheckConstraint(_in("status", STATUSES), name="status"),
        CheckConstraint("qty > 0", name="qty"),
        CheckConstraint(
            "(type = 'limit') = (limit_price IS NOT NULL AND limit_price > 0)", name="limit_price"
        ),
        CheckConstraint("filled_qty >= 0 AND filled_qty <= qty", name="filled_qty"),
        CheckConstraint(
            f"status <> '{FILLED}' OR (filled_qty = qty AND filled_avg_price IS NOT NULL)", name="filled"
        ),
        # The matcher's working set: resting orders by symbol (oldest first within a symbol).
        Index("ix_paper_orders_open", "symbol", "created_at", postgresql_where=text(f"status = '{OPEN}'")),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    account: Mapped[str] = mapped_column(String(MAX_ACCOUNT_LENGTH))
    client_order_id: Mapped[str] = mapped_column(String(48))
    symbol: Mapped[str] = mapped_column(String(MAX_SYMBOL_LENGTH))
    side: Mapped[str] = mapped_column(String(4))
    type: Mapped[str] = mapped_column(String(6))
    time_in_force: Mapped[str] = mapped_column(String(3))
    qty: Mapped[Decimal] = mapped_column(Numeric)
    limit_price: Mapped[Decimal | None] = mapped_column(Numeric)
    status: Mapped[str] = mapped_column(String(16))
    filled_qty: Mapped[Decimal] = mapped_column(Numeric)
    filled_avg_price: Mapped[Decimal | None] = mapped_column(Numeric)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    filled_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    canceled_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # Day orders only: the end of the UTC day they were placed on; the matcher expires them from then.
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
