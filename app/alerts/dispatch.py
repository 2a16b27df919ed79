"""Sending queued alerts to Discord: claim, send, record — throttled by what Discord says.

**Claim** (one statement, ``_CLAIM``): among pending alerts, only the *head* of each user's queue (lowest
``seq``) may go, so a user's alerts arrive in order; and only when nothing pauses all sends
(``alert_dispatch_pauses``), the user's webhook is enabled and not blocked (``blocked_until``), the
alert is due (``next_attempt_at``) and not leased by another dispatcher. Claimed rows are locked with
``FOR UPDATE SKIP LOCKED`` and leased (``status = 'sending'``, ``locked_until``), so any number of
processes dispatch side by side and each alert goes to one of them.

**Send**: one POST per alert through the provider (``app/providers/discord.py``: the shared outbound
layer and its breaker, ``?wait=true``, ``allowed_mentions: {"parse": []}``, never retried blindly),
after taking a token from the dispatcher-wide rate cap (``ALERT_DISPATCH_RATE``, default 40/s: an exact
moving window in the shared limiter's storage, so every process together stays below Discord's global
50/s).

**Record** (one statement per outcome, right after the answer):

* sent → ``sent``; the webhook's bucket state is learnt from ``X-RateLimit-*``: when ``Remaining`` is 0
  the webhook is blocked for ``Reset-After`` — the limits are never hard-coded, and a webhook that has
  not answered yet is sent one alert at a time (the per-user head rule) until its headers are known;
* 429 → back to ``queued``, due after ``retry_after`` exactly, the webhook blocked as long; a global 429,
  or Cloudflare's (no rate-limit headers), pauses every send (``Retry-After``, else 60 s);
* 401/403/429 answers are counted per minute across processes (``discord_error_counts``); at
  ``BAN_GUARD`` in 10 minutes (a fifth of the 10,000 at which Discord bans the IP) all sends pause
  for 10 minutes;
* 404 "Unknown Webhook" → ``failed`` at once and the webhook disabled (it was deleted); any other 4xx
  with Discord's error body the same; a 4xx without it (a proxy's or Cloudflare's page) is retried and
  disables nothing;
* a 2xx without a readable message is recorded ``sent`` (Discord posted it; sending again would repeat it);
* timeout after sending, 5xx → retried with exponential backoff and jitter
  (``ALERT_RETRY_BASE_SECONDS`` × 2^(n-1), capped at 5 min, times a random 0.5–1); the 5th failed attempt → ``failed``;
* nothing sent (breaker open, connection refused) → due again after the breaker's retry-after, no
  attempt counted.

**The unavoidable window.** Discord has no idempotency key for webhooks: if this process dies after
Discord accepted a message and before the "sent" statement commits, the lease runs out (``LEASE``) and
another dispatcher sends it again. The window is the time between Discord's answer and one autocommit
statement (a millisecond or so); nothing is done in between. Every other crash point loses nothing and
repeats nothing: an alert is only ever ``sending`` under a lease.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from limits import parse
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import Interval, bindparam, text

from app.core.crypto import InvalidToken, TokenCipher
from app.core.db import Database
from app.core.errors import log_exception
from app.core.ratelimit import RateLimiter
from app.providers.discord import DeliveryOutcome, DiscordResult, DiscordWebhooks

log = logging.getLogger("tradedesk.alerts.dispatch")

MAX_ATTEMPTS = 5
LEASE = dt.timedelta(seconds=60)
MAX_BACKOFF_SECONDS = 300.0
CLOUDFLARE_PAUSE_SECONDS = 60.0
BAN_GUARD = 2000  # 401/403/429 answers in 10 minutes before every send pauses (Discord bans at 10,000)
BAN_WINDOW = dt.timedelta(minutes=10)
MAX_ERROR_TEXT = 300

ALERTS_QUEUE_DEPTH = Gauge(
    "alerts_queue_depth",
    "Alerts queued or being sent, as of the dispatcher's last look.",
    multiprocess_mode="livemax",
)
ALERTS_SENT = Counter("alerts_sent_total", "Alerts Discord accepted.")
ALERTS_FAILED = Counter(
    "alerts_failed_total",
    "Alerts given up: gone (404: webhook deleted), rejected (another 4xx), exhausted (5 failed attempts).",
    ["reason"],
)
for _reason in ("gone", "rejected", "exhausted", "unreadable_token"):
    ALERTS_FAILED.labels(_reason)
DISCORD_RATE_LIMITED = Counter(
    "discord_rate_limited_total",
    "429 answers from Discord, by scope: webhook (its bucket), global, cloudflare (no rate-limit headers).",
    ["scope"],
)
for _scope in ("webhook", "global", "cloudflare"):
    DISCORD_RATE_LIMITED.labels(_scope)
ALERT_SEND_DURATION = Histogram(
    "alert_send_duration_seconds",
    "Wall time of one Discord webhook call.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ALERT_DISPATCH_PAUSES = Counter(
    "alert_dispatch_pauses_total",
    "Pauses of every send, by reason (global, cloudflare, ban_guard).",
    ["reason"],
)

# The users with pending alerts, found by a skip scan of the pending index (one probe per user, not a
# scan of every pending alert: a backlog of 50,000 alerts from 60 users costs 60 index probes), each
# with the head of their queue.
_HEADS = """
    WITH RECURSIVE pending_users AS (
        (SELECT user_id FROM alerts WHERE status IN ('queued', 'sending') ORDER BY user_id LIMIT 1)
        UNION ALL
        SELECT (SELECT a.user_id FROM alerts a
                WHERE a.status IN ('queued', 'sending') AND a.user_id > p.user_id
                ORDER BY a.user_id LIMIT 1)
        FROM pending_users p WHERE p.user_id IS NOT NULL
    ), heads AS MATERIALIZED (
        SELECT h.id, h.user_id, h.status, h.next_attempt_at, h.locked_until, h.seq
        FROM pending_users p
        CROSS JOIN LATERAL (
            SELECT id, user_id, status, next_attempt_at, locked_until, seq FROM alerts
            WHERE user_id = p.user_id AND status IN ('queued', 'sending')
            ORDER BY seq LIMIT 1
        ) h
        WHERE p.user_id IS NOT NULL
    )
"""

_CLAIM = text(
    _HEADS
    + """
    , due AS (
        SELECT a.id FROM alerts a
        WHERE a.id IN (
            SELECT h.id FROM heads h JOIN discord_webhooks w ON w.user_id = h.user_id
            WHERE w.disabled_at IS NULL
              AND (w.blocked_until IS NULL OR w.blocked_until <= now())
              AND h.next_attempt_at <= now()
              AND (h.status = 'queued' OR h.locked_until <= now())
        )
          AND NOT EXISTS (SELECT 1 FROM alert_dispatch_pauses p WHERE p.paused_until > now())
          -- Re-checked on the row itself: FOR UPDATE re-reads a row another dispatcher changed after this
          -- statement's snapshot (the heads above are that snapshot), and only these conditions decide.
          AND a.next_attempt_at <= now()
          AND (a.status = 'queued' OR (a.status = 'sending' AND a.locked_until <= now()))
        ORDER BY a.next_attempt_at, a.seq
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE alerts a SET status = 'sending', locked_until = now() + :lease, updated_at = now()
    FROM due, discord_webhooks w
    WHERE a.id = due.id AND w.user_id = a.user_id
    RETURNING a.id, a.user_id, a.content, a.attempts, a.seq, w.webhook_id, w.token_encrypted
    """  # nosec B608 # SQL from module constants; every value is a bound parameter
).bindparams(bindparam("lease", type_=Interval()))

# The webhook's bucket as Discord last described it; blocked while the bucket is empty or after a 429.
_LEARN = """
    UPDATE discord_webhooks SET
        rate_bucket = coalesce(CAST(:bucket AS varchar), rate_bucket),
        rate_limit = coalesce(CAST(:rate_limit AS integer), rate_limit),
        rate_remaining = coalesce(CAST(:remaining AS integer), rate_remaining),
        blocked_until = CASE WHEN CAST(:block_seconds AS double precision) IS NULL THEN blocked_until
                             ELSE greatest(coalesce(blocked_until, now()),
                                           now() + make_interval(secs => CAST(:block_seconds AS double precision)))
                        END
    WHERE user_id = CAST(:user_id AS uuid)
"""

_SENT = text(
    f"""
    WITH a AS (
        UPDATE alerts SET status = 'sent', sent_at = now(), attempts = attempts + 1, last_error = NULL,
            discord_message_id = CAST(:message_id AS varchar), locked_until = NULL, updated_at = now()
        WHERE id = :id AND status = 'sending'
        RETURNING id
    ), w AS ({_LEARN})
    SELECT count(*) FROM a
    """  # nosec B608 # SQL from module constants; every value is a bound parameter
)

_RETRY = text(
    f"""
    WITH a AS (
        UPDATE alerts SET
            status = CASE WHEN CAST(:count_attempt AS boolean) AND attempts + 1 >= :max_attempts
                          THEN 'failed' ELSE 'queued' END,
            attempts = attempts + CASE WHEN CAST(:count_attempt AS boolean) THEN 1 ELSE 0 END,
            last_error = CAST(:error AS text),
            next_attempt_at = now() + make_interval(secs => CAST(:delay AS double precision)),
            locked_until = NULL, updated_at = now()
        WHERE id = :id AND status = 'sending'
        RETURNING status
    ), w AS ({_LEARN})
    SELECT status FROM a
    """  # nosec B608 # SQL from module constants; every value is a bound parameter
)

_FAIL_AND_DISABLE = text(
    """
    WITH a AS (
        UPDATE alerts SET status = 'failed', attempts = attempts + 1, last_error = CAST(:error AS text),
            locked_until = NULL, updated_at = now()
        WHERE id = :id AND status = 'sending'
        RETURNING user_id
    ), d AS (
        UPDATE discord_webhooks SET disabled_at = now(), disabled_reason = CAST(:error AS text), updated_at = now()
        WHERE user_id = CAST(:user_id AS uuid) AND CAST(:disable AS boolean)
    )
    SELECT count(*) FROM a
    """
)

_PAUSE = text(
    """
    INSERT INTO alert_dispatch_pauses (scope, paused_until, reason)
    VALUES (:scope, now() + make_interval(secs => CAST(:seconds AS double precision)), :reason)
    ON CONFLICT (scope) DO UPDATE SET
        paused_until = greatest(alert_dispatch_pauses.paused_until, excluded.paused_until),
        reason = excluded.reason
    """
)

_COUNT_ERROR = text(
    """
    WITH bump AS (
        INSERT INTO discord_error_counts (minute, count) VALUES (date_trunc('minute', now()), 1)
        ON CONFLICT (minute) DO UPDATE SET count = discord_error_counts.count + 1
        RETURNING count
    )
    SELECT coalesce((SELECT sum(count) FROM discord_error_counts
                     WHERE minute > date_trunc('minute', now()) - :window), 0)
           + (SELECT count FROM bump)
    """
).bindparams(bindparam("window", type_=Interval()))

_DEPTH = text("SELECT count(*) FROM alerts WHERE status IN ('queued', 'sending')")
# When the next claim could find something: the earliest moment a queue head is due, its webhook unblocked
# and its lease (if another dispatcher holds it) over — but not before a pause ends.
_NEXT_DUE = text(
    _HEADS
    + """
    SELECT greatest(
        (SELECT min(greatest(h.next_attempt_at,
                             coalesce(w.blocked_until, '-infinity'),
                             CASE WHEN h.status = 'sending' THEN h.locked_until ELSE '-infinity' END))
         FROM heads h JOIN discord_webhooks w ON w.user_id = h.user_id
         WHERE w.disabled_at IS NULL),
        (SELECT max(paused_until) FROM alert_dispatch_pauses)
    )
    """  # nosec B608 # SQL from module constants; every value is a bound parameter
)


@dataclass(frozen=True, slots=True)
class Claimed:
    id: uuid.UUID
    user_id: uuid.UUID
    content: str
    attempts: int
    seq: int
    webhook_id: str
    token_encrypted: str


@dataclass(slots=True)
class DispatchReport:
    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    rate_limited: int = 0
    results: list[tuple[uuid.UUID, str]] = field(default_factory=list)


class Dispatcher:
    """Claims and sends alerts; one per process (``app/workers/alerts.py`` runs it in a loop)."""

    def __init__(
        self,
        database: Database,
        discord: DiscordWebhooks,
        cipher: TokenCipher,
        limiter: RateLimiter,
        *,
        dispatch_rate: str = "40/second",
        retry_base_seconds: float = 2.0,
        batch: int = 10,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.database = database
        self.discord = discord
        self.cipher = cipher
        self.limiter = limiter
        self.rate = parse(dispatch_rate)
        self.retry_base_seconds = retry_base_seconds
        self.batch = batch
        self.rng = rng
        self._depth_checked = 0.0

    def backoff(self, attempt: int) -> float:
        """Seconds before retry number ``attempt`` (1-based): base × 2^(attempt-1), capped, times a random
        factor in [0.5, 1) (jitter: retries of many alerts spread out instead of arriving together)."""
        ceiling = min(MAX_BACKOFF_SECONDS, self.retry_base_seconds * 2.0 ** max(attempt - 1, 0))
        return float(ceiling * (0.5 + 0.5 * self.rng()))

    async def run_once(self) -> DispatchReport:
        """Claim up to ``batch`` alerts (heads of distinct users' queues) and send them side by side."""
        report = DispatchReport()
        async with self.database.own_transaction(single_statement=True) as session:
            rows = (await session.execute(_CLAIM, {"limit": self.batch, "lease": LEASE})).all()
        claimed = [Claimed(**row._asdict()) for row in rows]
        report.claimed = len(claimed)
        if claimed:
            await asyncio.gather(*(self._deliver(alert, report) for alert in claimed))
        await self._update_depth()
        return report

    async def seconds_until_due(self, ceiling: float) -> float:
        """How long nothing can be due (``_NEXT_DUE``), at most ``ceiling`` (new alerts may come)."""
        async with self.database.own_transaction(single_statement=True) as session:
            when = (await session.execute(_NEXT_DUE)).scalar_one_or_none()
        if when is None or when == dt.datetime.min.replace(tzinfo=dt.UTC):
            return ceiling
        return max(0.0, min(ceiling, (when - dt.datetime.now(dt.UTC)).total_seconds()))

    async def _update_depth(self) -> None:
        now = time.monotonic()
        if now - self._depth_checked < 1.0:
            return
        self._depth_checked = now
        async with self.database.own_transaction(single_statement=True) as session:
            ALERTS_QUEUE_DEPTH.set((await session.execute(_DEPTH)).scalar_one())

    async def _take_send_token(self) -> None:
        """Wait for a slot under the dispatcher-wide cap: an exact moving window shared through the
        limiter's storage (Redis), so all processes together stay under it."""
        while True:
            wait = await self.limiter.acquire_exact(self.rate, "discord-dispatch", "all")
            if wait <= 0:
                return
            await asyncio.sleep(min(wait, 1.0))  # the window's own clock: no event to wait for

    async def _deliver(self, alert: Claimed, report: DispatchReport) -> None:
        try:
            token = self.cipher.decrypt(alert.token_encrypted)
        except InvalidToken:
            await self._fail(
                alert, "the stored webhook token cannot be decrypted; set the webhook again", True
            )
            ALERTS_FAILED.labels("unreadable_token").inc()
            report.failed += 1
            return
        await self._take_send_token()
        started = time.perf_counter()
        try:
            result = await self.discord.execute(
                webhook_id=alert.webhook_id, token=token, content=alert.content
            )
        except Exception as exc:  # a bug in the provider: never lose the alert, retry it later
            log_exception(log, "discord provider failed", exc, alert_id=str(alert.id))
            result = None
        ALERT_SEND_DURATION.observe(time.perf_counter() - started)
        try:
            outcome = await self._record(alert, result, report)
        except Exception as exc:  # the lease runs out and the alert is claimed again
            log_exception(log, "recording an alert's outcome failed", exc, alert_id=str(alert.id))
            return
        report.results.append((alert.id, outcome))

    async def _record(self, alert: Claimed, result: DiscordResult | None, report: DispatchReport) -> str:
        learn = _learn_params(alert, result)
        if result is None:
            return await self._retry(alert, "internal error while sending", learn, report, count_attempt=True)
        outcome = result.outcome
        accepted = (
            outcome is DeliveryOutcome.TRANSIENT and result.status is not None and 200 <= result.status < 300
        )
        if outcome is DeliveryOutcome.SENT or accepted:
            # A 2xx without a readable message still means Discord posted it: sending again would repeat it.
            async with self.database.own_transaction(single_statement=True) as session:
                await session.execute(_SENT, {"id": alert.id, "message_id": result.message_id, **learn})
            ALERTS_SENT.inc()
            report.sent += 1
            log.info("alert sent", extra={"alert_id": str(alert.id), "user_id": str(alert.user_id)})
            return "sent"
        if outcome is DeliveryOutcome.RATE_LIMITED:
            return await self._rate_limited(alert, result, learn, report)
        if outcome is DeliveryOutcome.REJECTED and result.code is None:
            # A 4xx that is not Discord's JSON (a proxy's or Cloudflare's page): nothing says the webhook is
            # wrong, so it is not disabled; a 401/403 of that kind smells of an IP block and is counted.
            if result.invalid_request:
                await self._count_error()
            return await self._retry(alert, _error(result, "refused"), learn, report, count_attempt=True)
        if outcome in (DeliveryOutcome.GONE, DeliveryOutcome.REJECTED):
            if result.invalid_request:
                await self._count_error()
            reason = "gone" if outcome is DeliveryOutcome.GONE else "rejected"
            error = _error(result, "Discord says the webhook does not exist (404); set it again")
            await self._fail(alert, error, True)
            ALERTS_FAILED.labels(reason).inc()
            report.failed += 1
            log.warning(
                "alert failed; webhook disabled",
                extra={"alert_id": str(alert.id), "user_id": str(alert.user_id), "status": result.status},
            )
            return "failed"
        if outcome is DeliveryOutcome.NOT_SENT:
            delay = max(result.retry_after or 0.0, 1.0)
            return await self._retry(
                alert, _error(result, "not sent"), learn, report, count_attempt=False, delay=delay
            )
        # TRANSIENT: 5xx, timeout after sending, unreadable answer.
        return await self._retry(alert, _error(result, "Discord failed"), learn, report, count_attempt=True)

    async def _retry(
        self,
        alert: Claimed,
        error: str,
        learn: dict[str, Any],
        report: DispatchReport,
        *,
        count_attempt: bool,
        delay: float | None = None,
    ) -> str:
        attempt = alert.attempts + (1 if count_attempt else 0)
        params = {
            "id": alert.id,
            "count_attempt": count_attempt,
            "max_attempts": MAX_ATTEMPTS,
            "error": error[:MAX_ERROR_TEXT],
            "delay": self.backoff(attempt) if delay is None else delay,
            **learn,
        }
        async with self.database.own_transaction(single_statement=True) as session:
            status = (await session.execute(_RETRY, params)).scalar_one_or_none()
        if status == "failed":
            ALERTS_FAILED.labels("exhausted").inc()
            report.failed += 1
            log.warning("alert failed after %d attempts", MAX_ATTEMPTS, extra={"alert_id": str(alert.id)})
            return "failed"
        report.retried += 1
        return "retry"

    async def _rate_limited(
        self, alert: Claimed, result: DiscordResult, learn: dict[str, Any], report: DispatchReport
    ) -> str:
        report.rate_limited += 1
        retry_after = max(result.retry_after or 0.0, 0.0)
        if result.cloudflare:
            scope = "cloudflare"
            retry_after = retry_after or CLOUDFLARE_PAUSE_SECONDS
        else:
            scope = "global" if result.global_ else "webhook"
        DISCORD_RATE_LIMITED.labels(scope).inc()
        log.warning(
            "discord rate limited",
            extra={"alert_id": str(alert.id), "scope": scope, "retry_after": retry_after},
        )
        if scope != "webhook":
            await self._pause(scope, retry_after, f"{scope} 429 from Discord")
        learn = {**learn, "block_seconds": retry_after}
        if result.invalid_request:  # Discord does not count a shared-scope 429 towards the IP ban
            await self._count_error()
        return await self._retry(
            alert,
            f"rate limited ({scope}), retry after {retry_after:g} s",
            learn,
            report,
            count_attempt=False,
            delay=retry_after,
        )

    async def _fail(self, alert: Claimed, error: str, disable: bool) -> None:
        async with self.database.own_transaction(single_statement=True) as session:
            await session.execute(
                _FAIL_AND_DISABLE,
                {
                    "id": alert.id,
                    "user_id": alert.user_id,
                    "error": error[:MAX_ERROR_TEXT],
                    "disable": disable,
                },
            )

    async def _pause(self, scope: str, seconds: float, reason: str) -> None:
        ALERT_DISPATCH_PAUSES.labels(scope).inc()
        async with self.database.own_transaction(single_statement=True) as session:
            await session.execute(_PAUSE, {"scope": scope, "seconds": seconds, "reason": reason})

    async def _count_error(self) -> None:
        """Count a 401/403/429 across processes; pause everything well before Discord's IP ban."""
        async with self.database.own_transaction(single_statement=True) as session:
            total = int((await session.execute(_COUNT_ERROR, {"window": BAN_WINDOW})).scalar_one())
        if total >= BAN_GUARD:
            log.error("too many 401/403/429 from Discord: pausing every send", extra={"count": total})
            await self._pause("ban_guard", BAN_WINDOW.total_seconds(), f"{total} 401/403/429 in 10 minutes")


def _error(result: DiscordResult, default: str) -> str:
    return (result.error or default)[:MAX_ERROR_TEXT]


def _learn_params(alert: Claimed, result: DiscordResult | None) -> dict[str, Any]:
    rate = result.rate if result is not None else None
    block = None
    if rate is not None and rate.remaining == 0 and rate.reset_after is not None:
        block = rate.reset_after
    return {
        "user_id": alert.user_id,
        "bucket": rate.bucket[:64] if rate is not None and rate.bucket else None,
        "rate_limit": rate.limit if rate is not None else None,
        "remaining": rate.remaining if rate is not None else None,
        "block_seconds": block,
    }
