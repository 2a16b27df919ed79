"""Discord webhooks: execute one webhook (post one message), through the shared outbound layer.

The alerts dispatcher is written against ``DiscordWebhooks``; ``build_discord`` builds the live
``DiscordHTTP`` once, at startup, over the ``discord`` outbound client (deadline HTTP_TIMEOUT_SECONDS,
circuit breaker ``discord``, metrics).

**The request.** ``POST {DISCORD_API_BASE_URL}/webhooks/{webhook_id}/{webhook_token}?wait=true`` with
``{"content": …, "allowed_mentions": {"parse": []}}``. The path is composed here from an id and a token
that must match ``WEBHOOK_ID_PATTERN`` / ``WEBHOOK_TOKEN_PATTERN`` (``ValueError`` otherwise, before
anything is sent): no caller can make it fetch a URL. ``wait=true`` makes Discord answer with the
message it created (without it Discord answers 204 and may drop a message silently);
``allowed_mentions: {"parse": []}`` means no ``@everyone``, role or user ping, whatever the content.

**No blind retry.** The POST is sent with ``idempotent=False``: one attempt. Executing a webhook is not
idempotent (Discord has no idempotency key for it), so a second attempt after a lost answer would post
the message twice. The dispatcher retries, knowing what each answer meant.

**Outcome classification.** ``execute`` never raises for Discord's answers nor for outbound failures
(only programming errors raise): every call ends in one ``DiscordResult`` whose ``outcome`` is

* ``SENT`` — 2xx with the created message: ``message_id``;
* ``RATE_LIMITED`` — 429, nothing posted: ``retry_after`` (seconds, the body's float ``retry_after``
  exactly; else ``Retry-After`` / ``X-RateLimit-Reset-After``), ``global_`` (the body's ``global``,
  ``X-RateLimit-Global`` or scope ``global``) and ``cloudflare``: True when the 429 carries no
  ``X-RateLimit-*`` header at all — Cloudflare's answer, not Discord's: pause **all** sends
  (``retry_after`` is then ``Retry-After`` or ``CLOUDFLARE_DEFAULT_PAUSE``);
* ``GONE`` — 404 with Discord's ``Unknown Webhook`` (code 10015): the webhook was deleted; stop using it.
  A 404 without that body (a proxy, a wrong base URL) proves nothing about the webhook and is
  ``TRANSIENT`` instead: a misconfiguration must not disable every user's webhook;
* ``REJECTED`` — any other 4xx: ``status``, Discord's ``code`` and ``message`` (401 Invalid Webhook
  Token, 403 Missing Access, 400 Invalid Form Body …); nothing was posted;
* ``TRANSIENT`` — the outcome is unknown or the failure temporary: 5xx, timeout after sending,
  connection lost mid-call, an unreadable 2xx, an unexpected status. ``maybe_sent`` says whether
  Discord may have posted the message (True for all of these except a 404/1xx/3xx answer);
* ``NOT_SENT`` — certainly not posted, retry later: breaker open (``retry_after`` = time it stays open),
  connection refused / DNS / connect or pool timeout before a byte left.

Every result carries ``status`` (None when nothing answered), ``rate`` (the ``X-RateLimit-*`` headers of
whichever answer had them, 2xx and errors alike; the dispatcher learns its per-webhook buckets from
them) and ``error``, a short text. ``invalid_request`` tells whether the answer counts toward
Cloudflare's ban (10,000 responses 401/403/429 in 10 minutes; a 429 with scope ``shared`` does not).

**The token is a secret.** It never appears in a result, a log record or an exception raised here:
outbound errors and httpx exceptions may carry the URL, so their text is never passed on (only their
class becomes the ``error``), and any text taken from an answer has the token masked. httpx itself logs
request URLs at INFO: ``app.core.observability.configure_logging`` keeps the ``httpx`` logger at WARNING,
and ``DiscordHTTP`` adds a filter to it that masks the token wherever logging is configured otherwise.

**Units.** ``retry_after`` and ``X-RateLimit-Reset-After`` are seconds (floats) in Discord API v8 and
later; API v6/v7 reported ``retry_after`` in milliseconds. Point ``DISCORD_API_BASE_URL`` at a versioned
base (``https://discord.com/api/v10``): without a version Discord serves its default version.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import math
import re
import time
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote

import httpx

from app.core.config import Settings
from app.core.http import (
    CircuitOpenError,
    Outbound,
    OutboundClient,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamStatusError,
    parse_retry_after,
)

__all__ = [
    "CLOUDFLARE_DEFAULT_PAUSE",
    "MAX_CONTENT",
    "PROVIDER",
    "UNKNOWN_WEBHOOK_CODE",
    "WEBHOOK_ID_PATTERN",
    "WEBHOOK_TOKEN_PATTERN",
    "DeliveryOutcome",
    "DiscordHTTP",
    "DiscordResult",
    "DiscordWebhooks",
    "RateLimit",
    "build_discord",
    "webhook_path",
]

log = logging.getLogger("tradedesk.discord")

PROVIDER = "discord"
WEBHOOK_ID_PATTERN = r"^[0-9]{1,25}$"  # a snowflake: 17-20 digits today
WEBHOOK_TOKEN_PATTERN = r"^[A-Za-z0-9_-]{1,100}$"  # nosec B105 # a pattern for webhook tokens, not a secret
MAX_CONTENT = 2000  # Discord's limit on a message's content
UNKNOWN_WEBHOOK_CODE = 10015  # Discord's JSON error code for "Unknown Webhook"
# A Cloudflare 429 (no X-RateLimit headers) without Retry-After: how long to pause every send.
CLOUDFLARE_DEFAULT_PAUSE = 60.0
MAX_TEXT = 200  # cap on text taken from an answer (Discord's error message)
SCOPES = frozenset({"user", "global", "shared"})

_ID = re.compile(WEBHOOK_ID_PATTERN)
_TOKEN = re.compile(WEBHOOK_TOKEN_PATTERN)
_BUCKET = re.compile(r"[\x21-\x7e]{1,128}")  # opaque, printable ASCII
_SNOWFLAKE = re.compile(r"[0-9]{1,25}")
_MASK = "[redacted]"


class DeliveryOutcome(enum.StrEnum):
    SENT = "sent"
    RATE_LIMITED = "rate_limited"
    GONE = "gone"
    REJECTED = "rejected"
    TRANSIENT = "transient"
    NOT_SENT = "not_sent"


@dataclasses.dataclass(frozen=True, slots=True)
class RateLimit:
    """Discord's ``X-RateLimit-*`` headers of one answer; a missing or unreadable value is None."""

    limit: int | None = None
    remaining: int | None = None
    reset_after: float | None = None  # seconds until the bucket resets
    bucket: str | None = None  # opaque id: webhooks sharing a bucket share its limit
    scope: str | None = None  # user | global | shared (sent on 429s)
    global_: bool = False  # X-RateLimit-Global (sent on a global 429)

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], *, now: float | None = None) -> RateLimit | None:
        """The rate limit the headers describe, or None when they carry no ``X-RateLimit-*`` header."""
        lowered = {str(k).lower(): str(v).strip() for k, v in headers.items()}
        if not any(k.startswith("x-ratelimit-") for k in lowered):
            return None
        reset_after = _seconds(lowered.get("x-ratelimit-reset-after"))
        if reset_after is None:  # derive it from the epoch reset (clock skew permitting)
            reset_at = _seconds(lowered.get("x-ratelimit-reset"))
            if reset_at is not None:
                reset_after = max(0.0, reset_at - (time.time() if now is None else now))
        bucket = lowered.get("x-ratelimit-bucket")
        scope = (lowered.get("x-ratelimit-scope") or "").lower()
        return cls(
            limit=_count(lowered.get("x-ratelimit-limit")),
            remaining=_count(lowered.get("x-ratelimit-remaining")),
            reset_after=reset_after,
            bucket=bucket if bucket and _BUCKET.fullmatch(bucket) else None,
            scope=scope if scope in SCOPES else None,
            global_=(lowered.get("x-ratelimit-global") or "").lower() == "true",
        )


@dataclasses.dataclass(frozen=True, slots=True)
class DiscordResult:
    """What one execute ended in (see the module docstring). Never holds the token or the URL."""

    outcome: DeliveryOutcome
    status: int | None = None
    rate: RateLimit | None = None
    error: str = ""
    message_id: str | None = None  # SENT
    retry_after: float | None = None  # RATE_LIMITED (exact), NOT_SENT by the breaker, a 5xx's Retry-After
    global_: bool = False  # RATE_LIMITED: the global limit, not the webhook's bucket
    cloudflare: bool = False  # RATE_LIMITED without X-RateLimit headers: pause every send
    maybe_sent: bool = False  # TRANSIENT: Discord may have posted the message
    code: int | None = None  # Discord's JSON error code, when the answer had one
    message: str = ""  # Discord's error message (token masked, capped)

    @property
    def sent(self) -> bool:
        return self.outcome is DeliveryOutcome.SENT

    @property
    def invalid_request(self) -> bool:
        """True when this answer counts toward Cloudflare's invalid-request ban (401, 403, 429 unless
        its scope is ``shared``)."""
        if self.status in (401, 403):
            return True
        return self.status == 429 and (self.rate is None or self.rate.scope != "shared")


@runtime_checkable
class DiscordWebhooks(Protocol):
    """Posts messages through Discord webhooks; one instance for every user."""

    name: str

    async def execute(self, *, webhook_id: str, token: str, content: str) -> DiscordResult:
        """Post ``content`` through the webhook, once; never raises for Discord's answers or outbound
        failures (``ValueError`` for a malformed id, token or content, before anything is sent)."""
        ...


class DiscordHTTP:
    """``DiscordWebhooks`` over the ``discord`` outbound client."""

    name = "discord"

    def __init__(self, client: OutboundClient) -> None:
        self.client = client
        _redact_httpx_log()

    async def execute(self, *, webhook_id: str, token: str, content: str) -> DiscordResult:
        path = webhook_path(webhook_id, token)
        if not isinstance(content, str) or not 0 < len(content) <= MAX_CONTENT:
            raise ValueError(f"content must be 1-{MAX_CONTENT} characters")
        try:
            response = await self.client.request(
                "POST",
                path,
                params={"wait": "true"},
                json={"content": content, "allowed_mentions": {"parse": []}},
                idempotent=False,
            )
        except UpstreamRateLimited as exc:
            result = _rate_limited(exc, token)
        except UpstreamStatusError as exc:
            result = _server_error(exc.response)
        except CircuitOpenError as exc:
            result = DiscordResult(
                DeliveryOutcome.NOT_SENT, retry_after=exc.retry_after, error="circuit breaker open"
            )
        except UpstreamError as exc:
            # Timeout, connection failure or an oversize answer. Only the class is used: the text of an
            # outbound or httpx error may name the URL, which holds the token.
            reason = exc.outcome.replace("_", " ")
            if exc.maybe_sent:
                result = DiscordResult(
                    DeliveryOutcome.TRANSIENT, maybe_sent=True, error=f"{reason} after sending"
                )
            else:
                result = DiscordResult(DeliveryOutcome.NOT_SENT, error=f"{reason} before sending")
        else:
            result = _answer(response, token)
        result = _without_token(result, token)
        _log(result, webhook_id)
        return result


def webhook_path(webhook_id: str, token: str) -> str:
    """The execute path for a valid id and token (relative to DISCORD_API_BASE_URL); ``ValueError``
    otherwise. The message never repeats the values: a malformed token may still be a secret."""
    if not isinstance(webhook_id, str) or not _ID.fullmatch(webhook_id):
        raise ValueError("webhook_id must be 1-25 digits")
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise ValueError("webhook token must be 1-100 characters of [A-Za-z0-9_-]")
    return f"/webhooks/{quote(webhook_id, safe='')}/{quote(token, safe='')}"


def build_discord(settings: Settings, outbound: Outbound) -> DiscordWebhooks:
    """The live provider over its own outbound client (``discord``: deadline HTTP_TIMEOUT_SECONDS,
    breaker BREAKER_FAIL_MAX / BREAKER_RESET_SECONDS)."""
    client = outbound.create(
        PROVIDER, base_url=settings.discord_api_base_url, timeout=settings.http_timeout_seconds
    )
    return DiscordHTTP(client)


class _RedactWebhookTokens(logging.Filter):
    """Masks the token in httpx's own ``HTTP Request: POST …/webhooks/{id}/{token}`` records."""

    _path = re.compile(r"(/webhooks/[0-9]+/)[^/?#\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "/webhooks/" in text:
            record.msg, record.args = self._path.sub(rf"\g<1>{_MASK}", text), None
        return True


_REDACT = _RedactWebhookTokens()


def _redact_httpx_log() -> None:
    """httpx logs every request URL at INFO. ``configure_logging`` keeps that logger at WARNING; this
    filter makes the token safe even where it does not run (a CLI, a script, a test at DEBUG)."""
    logger = logging.getLogger("httpx")
    if _REDACT not in logger.filters:
        logger.addFilter(_REDACT)


# ---------------------------------------------------------------------- classifying answers
def _answer(response: httpx.Response, token: str) -> DiscordResult:
    """An answer below 500 other than 429 (the outbound layer raises for those)."""
    status = response.status_code
    rate = RateLimit.from_headers(response.headers)
    body = _json_object(response)
    if 200 <= status < 300:
        message_id = body.get("id") if body is not None else None
        if isinstance(message_id, int) and not isinstance(message_id, bool):
            message_id = str(message_id)
        if isinstance(message_id, str) and _SNOWFLAKE.fullmatch(message_id):
            return DiscordResult(DeliveryOutcome.SENT, status=status, rate=rate, message_id=message_id)
        return DiscordResult(
            DeliveryOutcome.TRANSIENT,
            status=status,
            rate=rate,
            maybe_sent=True,
            error=f"HTTP {status} without the created message",
        )
    code, message = _error_fields(body, token)
    if status == 404:
        if code == UNKNOWN_WEBHOOK_CODE or (code is None and message.lower() == "unknown webhook"):
            return DiscordResult(
                DeliveryOutcome.GONE,
                status=status,
                rate=rate,
                code=code,
                message=message,
                error="HTTP 404: Unknown Webhook",
            )
        return DiscordResult(
            DeliveryOutcome.TRANSIENT,
            status=status,
            rate=rate,
            code=code,
            message=message,
            error="HTTP 404 without Discord's Unknown Webhook error",
        )
    if 400 <= status < 500:
        return DiscordResult(
            DeliveryOutcome.REJECTED,
            status=status,
            rate=rate,
            code=code,
            message=message,
            error=_status_text(status, code, message),
        )
    # 1xx/3xx (redirects are not followed): not an execute Discord answered.
    return DiscordResult(
        DeliveryOutcome.TRANSIENT, status=status, rate=rate, error=f"unexpected HTTP {status}"
    )


def _rate_limited(exc: UpstreamRateLimited, token: str) -> DiscordResult:
    response = exc.response
    headers: Mapping[str, str] = response.headers if response is not None else {}
    rate = RateLimit.from_headers(headers)
    body = _json_object(response) if response is not None else None
    cloudflare = rate is None
    retry_after = _seconds(body.get("retry_after")) if body is not None else None
    if retry_after is None:
        retry_after = parse_retry_after(headers)  # Retry-After, then X-RateLimit-Reset-After / Reset
    if retry_after is None:
        retry_after = CLOUDFLARE_DEFAULT_PAUSE if cloudflare else exc.retry_after
    global_ = (body is not None and body.get("global") is True) or (
        rate is not None and (rate.global_ or rate.scope == "global")
    )
    code, message = _error_fields(body, token)
    if cloudflare:
        error = f"HTTP 429 without rate-limit headers (Cloudflare): pause all sends {retry_after:g} s"
    else:
        where = "global limit" if global_ else f"bucket {rate.bucket}" if rate and rate.bucket else "bucket"
        error = f"HTTP 429: rate limited ({where}), retry after {retry_after:g} s"
    return DiscordResult(
        DeliveryOutcome.RATE_LIMITED,
        status=429,
        rate=rate,
        retry_after=retry_after,
        global_=global_,
        cloudflare=cloudflare,
        code=code,
        message=message,
        error=error,
    )


def _server_error(response: httpx.Response) -> DiscordResult:
    return DiscordResult(
        DeliveryOutcome.TRANSIENT,
        status=response.status_code,
        rate=RateLimit.from_headers(response.headers),
        retry_after=parse_retry_after(response.headers) if "retry-after" in response.headers else None,
        maybe_sent=True,
        error=f"HTTP {response.status_code}",
    )


def _without_token(result: DiscordResult, token: str) -> DiscordResult:
    """Last guard: no text of a result may contain the token, whatever an answer echoed."""
    changes: dict[str, Any] = {}
    if token in result.error:
        changes["error"] = result.error.replace(token, _MASK)
    if token in result.message:
        changes["message"] = result.message.replace(token, _MASK)
    if result.rate is not None and result.rate.bucket and token in result.rate.bucket:
        changes["rate"] = dataclasses.replace(result.rate, bucket=None)
    return dataclasses.replace(result, **changes) if changes else result


def _log(result: DiscordResult, webhook_id: str) -> None:
    extra = {
        "provider": PROVIDER,
        "webhook_id": webhook_id,
        "outcome": result.outcome.value,
        "status": result.status,
        "error": result.error,
    }
    if result.outcome in (DeliveryOutcome.GONE, DeliveryOutcome.REJECTED) or result.cloudflare:
        log.warning("discord webhook not executed", extra=extra)
    elif result.outcome is not DeliveryOutcome.SENT:
        log.info("discord webhook not executed", extra=extra)


# ---------------------------------------------------------------------- parsing helpers
def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def _error_fields(body: dict[str, Any] | None, token: str) -> tuple[int | None, str]:
    if body is None:
        return None, ""
    code = body.get("code")
    message = body.get("message")
    return (
        code if isinstance(code, int) and not isinstance(code, bool) else None,
        _clean(message, token) if isinstance(message, str) else "",
    )


def _clean(text: str, token: str) -> str:
    """Text from an answer, safe to store and log: the token masked, control characters dropped, capped."""
    text = text.replace(token, _MASK)
    text = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return text[:MAX_TEXT]


def _status_text(status: int, code: int | None, message: str) -> str:
    text = f"HTTP {status}"
    if message:
        text += f": {message}"
    if code is not None:
        text += f" (code {code})"
    return text


def _seconds(value: Any) -> float | None:
    """A finite, non-negative number of seconds, or None."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _count(value: str | None) -> int | None:
    number = _seconds(value)
    if number is None or number != int(number):
        return None
    return int(number)
