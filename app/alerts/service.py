"""Alert rules: the user's webhook (stored encrypted), enqueueing with the 60-second dedup, reading an
alert. Sending is the dispatcher's (``app/workers/alerts.py`` over ``dispatch.py``), never the request's:
a POST only writes a row, so Discord's limits and outages never slow or fail it."""

from __future__ import annotations

import hashlib
import logging
import uuid
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from app.alerts.models import DiscordWebhook
from app.alerts.repository import AlertRepository, Enqueued, enqueue_alert
from app.alerts.schemas import AlertOut, AlertQueued
from app.core.crypto import TokenCipher
from app.core.db import Database
from app.core.errors import Conflict, NotFound
from app.core.rotation import RotationCounts, rotate_column

log = logging.getLogger("tradedesk.alerts")


class WebhookMissing(Conflict):
    slug = "discord-webhook-missing"


def content_hash(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()


def fill_alert_content(
    *,
    side: str,
    symbol: str,
    filled_qty: Decimal,
    qty: Decimal,
    avg_price: Decimal | None,
    order_id: uuid.UUID,
) -> str:
    """The text of an order-fill alert (plain text; the orders feature queues it with the fill)."""
    price = f" at an average of {format(avg_price, 'f')}" if avg_price is not None else ""
    if filled_qty >= qty:
        head = f"Order filled: {side} {format(filled_qty, 'f')} {symbol}"
    else:
        head = f"Order partially filled: {side} {format(filled_qty, 'f')} of {format(qty, 'f')} {symbol}"
    return f"{head}{price} (order {order_id})."


async def set_webhook(
    *, session: AsyncSession, cipher: TokenCipher, user_id: uuid.UUID, webhook_id: str, webhook_token: str
) -> None:
    """Store (or replace) the user's webhook, its token encrypted; a disabled webhook is enabled again."""
    await AlertRepository(session).set_webhook(
        user_id=user_id, webhook_id=webhook_id, token_encrypted=cipher.encrypt(webhook_token)
    )
    log.info("discord webhook set", extra={"user_id": str(user_id)})


async def enqueue(*, database: Database, user_id: uuid.UUID, content: str) -> AlertQueued:
    """Queue ``content`` for the user's webhook; the same content within 60 s is the first alert."""
    digest = content_hash(content)
    result: Enqueued | None = None
    for _ in range(5):
        result = await enqueue_alert(
            database, user_id=user_id, content=content, content_hash=digest, alert_id=uuid.uuid4()
        )
        if result is not None:
            break
    if result is None:
        raise RuntimeError("alert enqueue found neither a slot nor its holder after 5 attempts")
    if result.webhook == "missing":
        raise WebhookMissing("Set a Discord webhook first: PUT /v1/alerts/discord/webhook.")
    if result.webhook == "disabled" or result.id is None:
        raise WebhookMissing(
            f"Your Discord webhook was disabled ({result.reason or 'refused by Discord'}); "
            "set it again with PUT /v1/alerts/discord/webhook."
        )
    status = "queued" if result.created else "deduplicated"
    log.info("alert " + status, extra={"user_id": str(user_id), "alert_id": str(result.id)})
    return AlertQueued(id=result.id, status=status)


async def get_alert(*, session: AsyncSession, user_id: uuid.UUID, alert_id: uuid.UUID) -> AlertOut:
    """The user's alert; 404 for an unknown id or another user's alert."""
    alert = await AlertRepository(session).get(user_id=user_id, alert_id=alert_id)
    if alert is None:
        raise NotFound("No such alert.")
    return AlertOut(id=alert.id, status=alert.status, attempts=alert.attempts, last_error=alert.last_error)


async def queue_summary(*, database: Database) -> dict[str, int]:
    """For operators: alerts by status, the oldest waiting alert's age, pauses, disabled webhooks."""
    async with database.own_transaction(single_statement=True) as session:
        return await AlertRepository(session).summary()


async def retry_failed(*, database: Database) -> int:
    """Queue the failed alerts of enabled webhooks again (attempts reset), oldest first."""
    async with database.own_transaction(single_statement=True) as session:
        count = await AlertRepository(session).retry_failed()
    log.info("failed alerts queued again", extra={"count": count})
    return count


async def purge_expired_state(*, database: Database) -> int:
    """Delete expired dedup slots and Discord error counts older than the ban window (cleanup loop)."""
    async with database.own_transaction(single_statement=True) as session:
        deleted = await AlertRepository(session).purge_dedup()
    async with database.own_transaction(single_statement=True) as session:
        deleted += await AlertRepository(session).purge_error_counts()
    return deleted


async def rotate_webhook_tokens(*, database: Database, cipher: TokenCipher) -> RotationCounts:
    """Re-encrypt every stored Discord webhook token with the cipher's first key."""
    return await rotate_column(
        database=database, cipher=cipher, key=DiscordWebhook.user_id, column=DiscordWebhook.token_encrypted
    )
