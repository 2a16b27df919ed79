"""The table behind ``Idempotency-Key`` (``app/core/idempotency.py``): one row per (user, key).

Kept apart from the dependency so ``app.models`` (Alembic, the tests) can import the schema without
the web machinery. The foreign key names ``users.id`` by table name: core imports no feature.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import CheckConstraint, DateTime, ForeignKey, LargeBinary, SmallInteger, String, func
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base

IN_FLIGHT = "in_flight"
COMPLETED = "completed"


class IdempotencyKey(Base):
    """A claimed ``Idempotency-Key``: the request's fingerprint, whether its first request is still in
    flight (since ``locked_at``, held by ``claim_token``) or completed (with the response to replay), and
    when the key expires (``IDEMPOTENCY_TTL_SECONDS`` after it was claimed)."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        CheckConstraint(f"state IN ('{IN_FLIGHT}', '{COMPLETED}')", name="state"),
        # In flight: locked since locked_at by the claim claim_token. Completed: the response to replay.
        CheckConstraint(
            f"state <> '{IN_FLIGHT}' OR (locked_at IS NOT NULL AND claim_token IS NOT NULL)",
            name="in_flight_locked",
        ),
        CheckConstraint(
            f"state <> '{COMPLETED}' OR (response_status IS NOT NULL AND response_body IS NOT NULL)",
            name="completed_response",
        ),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    # SHA-256 (hex) of the canonical request: method, route template, path and query parameters, body.
    fingerprint: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    locked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # The in-flight claim's identity (random per claim): only its holder may complete or release it.
    claim_token: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    response_status: Mapped[int | None] = mapped_column(SmallInteger)
    # [[name, value], ...] in order: the headers the route chose to store (Content-Type, Location, ...).
    response_headers: Mapped[list[list[str]] | None] = mapped_column(JSONB)
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
