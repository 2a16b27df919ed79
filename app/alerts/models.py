"""The alerts tables: a user's Discord webhook, the queue of alerts, and the 60-second dedup window."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import BigInteger, DateTime, ForeignKey, Identity, Index, Integer, String, Text, func, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base


class DiscordWebhook(Base):
    """A user's Discord webhook. Only its id and (encrypted) token are stored: the URL is always composed
    as ``{DISCORD_API_BASE_URL}/webhooks/{id}/{token}``. ``disabled_at`` is set when Discord said the
    webhook is gone (404) or refused it (4xx): nothing is sent until the user sets it again."""

    __tablename__ = "discord_webhooks"

    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    webhook_id: Mapped[str] = mapped_column(String(32))
    token_encrypted: Mapped[str] = mapped_column(Text)
    disabled_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    # What Discord last said about this webhook's bucket (X-RateLimit-*), and until when nothing may be
    # sent to it (the bucket is empty, or a 429's retry_after).
    rate_bucket: Mapped[str | None] = mapped_column(String(64))
    rate_limit: Mapped[int | None] = mapped_column(Integer)
    rate_remaining: Mapped[int | None] = mapped_column(Integer)
    blocked_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class DispatchPause(Base):
    """A pause of every send, shared by all dispatchers: a global 429, Cloudflare's header-less 429, or
    too many 401/403/429 answers in 10 minutes (Discord bans the IP at 10,000)."""

    __tablename__ = "alert_dispatch_pauses"

    scope: Mapped[str] = mapped_column(String(16), primary_key=True)
    paused_until: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    reason: Mapped[str] = mapped_column(Text)


class DiscordErrorCount(Base):
    """401/403/429 answers per minute, across every process (the Cloudflare ban counter)."""

    __tablename__ = "discord_error_counts"

    minute: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)


class Alert(Base):
    """One message to one user's webhook. ``seq`` orders a user's alerts (sent in that order)."""

    __tablename__ = "alerts"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, Identity(always=False), unique=True)
    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"))
    content: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))
    order_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("orders.id", ondelete="SET NULL")
    )
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    locked_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    discord_message_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        # Each user's pending alerts in order: the dispatcher sends only the head of each.
        Index(
            "ix_alerts_user_pending",
            "user_id",
            "seq",
            postgresql_where=text("status IN ('queued', 'sending')"),
        ),
        Index(
            "ix_alerts_pending",
            "next_attempt_at",
            postgresql_where=text("status IN ('queued', 'sending')"),
        ),
    )


class AlertDedup(Base):
    """The last alert per (user, content) for 60 s: an identical alert within it is answered with it."""

    __tablename__ = "alert_dedup"

    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    content_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    alert_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
