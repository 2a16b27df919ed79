"""All alerts SQL.

Enqueueing is one statement (``_ENQUEUE``): if the user's webhook is enabled, it claims the (user,
content) dedup slot for 60 s and inserts the alert under it, or — when the slot is held — returns the
alert that holds it; otherwise it says whether the webhook is missing or disabled. Concurrent identical
posts therefore make one alert, in any number of processes. ``FILL_ALERT_SQL`` is the fragment the
orders feature embeds in the statement that records a fill, so the alert commits with the fill.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.alerts.models import Alert, DiscordWebhook
from app.core.db import Database

DEDUP_SECONDS = 60

_ENQUEUE = text(
    f"""
    WITH hook AS (
        SELECT disabled_at, disabled_reason FROM discord_webhooks WHERE user_id = :user_id
    ), slot AS (
        INSERT INTO alert_dedup (user_id, content_hash, alert_id, expires_at)
        SELECT CAST(:user_id AS uuid), CAST(:content_hash AS varchar), CAST(:alert_id AS uuid),
               now() + interval '{DEDUP_SECONDS} seconds'
        FROM hook WHERE hook.disabled_at IS NULL
        ON CONFLICT (user_id, content_hash) DO UPDATE
            SET alert_id = excluded.alert_id, expires_at = excluded.expires_at
            WHERE alert_dedup.expires_at <= now()
        RETURNING alert_id
    ), queued AS (
        INSERT INTO alerts (id, user_id, content, content_hash, source, status, next_attempt_at)
        SELECT alert_id, CAST(:user_id AS uuid), CAST(:content AS text), CAST(:content_hash AS varchar),
               'api', 'queued', now()
        FROM slot
        RETURNING id
    )
    SELECT id, true AS created, 'enabled' AS webhook, NULL AS reason FROM queued
    UNION ALL
    SELECT alert_id, false, 'enabled', NULL FROM alert_dedup
    WHERE user_id = :user_id AND content_hash = :content_hash AND expires_at > now()
      AND NOT EXISTS (SELECT 1 FROM slot) AND EXISTS (SELECT 1 FROM hook WHERE disabled_at IS NULL)
    UNION ALL
    SELECT NULL, false, CASE WHEN EXISTS (SELECT 1 FROM hook) THEN 'disabled' ELSE 'missing' END,
           (SELECT disabled_reason FROM hook)
    WHERE NOT EXISTS (SELECT 1 FROM hook WHERE disabled_at IS NULL)
    """  # nosec B608 # SQL from module constants; every value is a bound parameter
)

# For the orders feature: a fill alert for the order's user, if they have an enabled webhook. Embed as a
# data-modifying CTE over a CTE named ``o`` holding the changed order (columns user_id, id); bind
# ``fill_alert_id`` (a new uuid), ``fill_alert_content`` and ``fill_alert_hash``.
FILL_ALERT_SQL = """
    INSERT INTO alerts (id, user_id, content, content_hash, source, order_id, status, next_attempt_at)
    SELECT CAST(:fill_alert_id AS uuid), o.user_id, CAST(:fill_alert_content AS text),
           CAST(:fill_alert_hash AS varchar), 'order_fill', o.id, 'queued', now()
    FROM o JOIN discord_webhooks w ON w.user_id = o.user_id AND w.disabled_at IS NULL
"""


_SUMMARY = text(
    """
    SELECT
        count(*) FILTER (WHERE status = 'queued') AS queued,
        count(*) FILTER (WHERE status = 'sending') AS sending,
        count(*) FILTER (WHERE status = 'sent') AS sent,
        count(*) FILTER (WHERE status = 'failed') AS failed,
        coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE status IN ('queued', 'sending'))), 0)
            ::bigint AS oldest_waiting_seconds,
        (SELECT count(*) FROM alert_dispatch_pauses WHERE paused_until > now()) AS pauses,
        (SELECT count(*) FROM discord_webhooks WHERE disabled_at IS NOT NULL) AS disabled_webhooks
    FROM alerts
    """
)

_RETRY_FAILED = text(
    """
    UPDATE alerts a SET status = 'queued', attempts = 0, next_attempt_at = now(), locked_until = NULL,
        updated_at = now()
    FROM discord_webhooks w
    WHERE a.status = 'failed' AND w.user_id = a.user_id AND w.disabled_at IS NULL
    """
)


@dataclass(frozen=True, slots=True)
class Enqueued:
    id: uuid.UUID | None  # None when the webhook is missing or disabled
    created: bool
    webhook: str  # enabled | disabled | missing
    reason: str | None  # why a disabled webhook was disabled


class AlertRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def set_webhook(self, *, user_id: uuid.UUID, webhook_id: str, token_encrypted: str) -> None:
        """Create or replace the user's webhook, enabled again."""
        stmt = insert(DiscordWebhook).values(
            user_id=user_id, webhook_id=webhook_id, token_encrypted=token_encrypted
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[DiscordWebhook.user_id],
            set_={
                "webhook_id": stmt.excluded.webhook_id,
                "token_encrypted": stmt.excluded.token_encrypted,
                "disabled_at": None,
                "disabled_reason": None,
                "updated_at": text("now()"),
            },
        )
        await self.session.execute(stmt)

    async def get(self, *, user_id: uuid.UUID, alert_id: uuid.UUID) -> Alert | None:
        alert = await self.session.get(Alert, alert_id)
        return alert if alert is not None and alert.user_id == user_id else None

    async def queue_depth(self) -> int:
        result = await self.session.execute(
            text("SELECT count(*) FROM alerts WHERE status IN ('queued', 'sending')")
        )
        return int(result.scalar_one())

    async def summary(self) -> dict[str, int]:
        row = (await self.session.execute(_SUMMARY)).one()
        return {key: int(value or 0) for key, value in row._asdict().items()}

    async def retry_failed(self) -> int:
        result: Any = await self.session.execute(_RETRY_FAILED)
        return int(result.rowcount or 0)

    async def purge_dedup(self) -> int:
        result: Any = await self.session.execute(text("DELETE FROM alert_dedup WHERE expires_at <= now()"))
        return int(result.rowcount or 0)

    async def purge_error_counts(self) -> int:
        result: Any = await self.session.execute(
            text("DELETE FROM discord_error_counts WHERE minute < now() - interval '20 minutes'")
        )
        return int(result.rowcount or 0)


async def enqueue_alert(
    database: Database, *, user_id: uuid.UUID, content: str, content_hash: str, alert_id: uuid.UUID
) -> Enqueued | None:
    """The new alert, or the one holding the dedup slot, or (no id) why the user's webhook cannot take it;
    None when a concurrent enqueue committed after this statement's snapshot (run it again). One statement
    on the driver path (``Database.run_single``), committed as it runs: the hot path of
    ``POST /v1/alerts/discord``."""
    params = {"user_id": user_id, "content": content, "content_hash": content_hash, "alert_id": alert_id}
    rows = await database.run_single(_ENQUEUE, params)
    return Enqueued(**rows[0]) if rows else None
