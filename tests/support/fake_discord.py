"""A loopback fake Discord (webhook execute only) that enforces a per-webhook rate limit, on real sockets.

Built on ``tests.outbound.fake_provider.FakeProvider``. ``POST {base_url}/webhooks/{id}/{token}`` is
answered as Discord answers it:

* every webhook has its own bucket of ``limit`` requests per ``per`` seconds (5 per 2 s by default): the
  first request opens a window, later requests in it count down, the window ends ``per`` seconds after it
  opened. Accepted answers carry ``X-RateLimit-Limit``, ``-Remaining``, ``-Reset`` (epoch seconds),
  ``-Reset-After`` (seconds, 3 decimals, never early) and ``-Bucket`` (one opaque id per webhook);
* a request over the limit is answered 429 with the same headers (remaining 0), ``X-RateLimit-Scope:
  user``, ``Retry-After`` (whole seconds, rounded up) and Discord's body ``{"message": "You are being rate
  limited.", "retry_after": <seconds until the window ends, float>, "global": false}``; it does not count;
* an accepted request posts the message (recorded) and answers 200 with the message object when the query
  has ``wait=true``, else 204. An empty or over-long content answers 400 like Discord.

Knobs, per webhook: ``gone(id)`` (404 Unknown Webhook, code 10015, rate-limit headers included),
``fail(id, times, status)`` (that many 5xx before the bucket; ``posted=True`` records the message first, the
"posted but the answer was lost" case) and ``cloudflare(times, webhook_id=None)`` (Cloudflare's 429: an
HTML body and no ``X-RateLimit-*`` header; ``webhook_id=None`` means any webhook).

Times (``arrived``) are ``time.monotonic()`` of this process, so a test can compare them with its own clock.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from tests.outbound.fake_provider import FakeProvider, Recorded, Reply

WEBHOOK_PATH = r"/api/webhooks/([0-9]+)/([A-Za-z0-9_-]+)"
DISCORD_EPOCH_MS = 1_420_070_400_000
CLOUDFLARE_BODY = (
    b"<!DOCTYPE html><html><head><title>Access denied | discord.com used Cloudflare to restrict access"
    b"</title></head><body><h1>Error 1015</h1><p>You are being rate limited</p></body></html>"
)


@dataclass(frozen=True)
class PostedMessage:
    webhook_id: str
    message_id: str
    content: Any
    allowed_mentions: Any
    arrived: float  # time.monotonic()
    body: dict[str, Any]


@dataclass(frozen=True)
class Throttled:
    """One 429 the fake answered."""

    webhook_id: str
    arrived: float
    retry_after: float | None  # the body's retry_after (None for Cloudflare's)
    cloudflare: bool


@dataclass(frozen=True)
class Hit:
    """One request to a webhook and the status it got."""

    webhook_id: str
    arrived: float
    status: int


@dataclass
class _Bucket:
    opened: float | None = None
    used: int = 0


@dataclass
class _Failures:
    times: int
    status: int
    posted: bool


@dataclass
class _Cloudflare:
    times: int
    retry_after: float | None
    webhook_id: str | None


@dataclass
class FakeDiscord:
    limit: int = 5
    per: float = 2.0
    posted: list[PostedMessage] = field(default_factory=list)
    throttled: list[Throttled] = field(default_factory=list)
    log: list[Hit] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.provider = FakeProvider().on(WEBHOOK_PATH, self._handle)
        self._buckets: dict[str, _Bucket] = {}
        self._gone: set[str] = set()
        self._failures: dict[str, _Failures] = {}
        self._cloudflare: list[_Cloudflare] = []
        self._sequence = 0

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> FakeDiscord:
        await self.provider.start()
        return self

    async def stop(self) -> None:
        await self.provider.stop()

    async def __aenter__(self) -> FakeDiscord:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        """What DISCORD_API_BASE_URL should be."""
        return f"{self.provider.url}/api"

    # ------------------------------------------------------------------ knobs
    def gone(self, webhook_id: str) -> FakeDiscord:
        """Answer this webhook 404 Unknown Webhook from now on (it was deleted)."""
        self._gone.add(webhook_id)
        return self

    def fail(
        self, webhook_id: str, times: int = 1, *, status: int = 500, posted: bool = False
    ) -> FakeDiscord:
        """Answer this webhook's next ``times`` requests with ``status`` (5xx); ``posted`` records the message
        anyway (Discord posted it, the answer was lost)."""
        self._failures[webhook_id] = _Failures(times, status, posted)
        return self

    def cloudflare(
        self, times: int = 1, *, retry_after: float | None = None, webhook_id: str | None = None
    ) -> FakeDiscord:
        """Answer the next ``times`` requests (to ``webhook_id``, or to any webhook) with Cloudflare's 429:
        no X-RateLimit headers, an HTML body, ``Retry-After`` only when given."""
        self._cloudflare.append(_Cloudflare(times, retry_after, webhook_id))
        return self

    # ------------------------------------------------------------------ what happened
    def messages(self, webhook_id: str | None = None) -> list[PostedMessage]:
        """Messages posted (to one webhook, or all), in arrival order."""
        return [m for m in self.posted if webhook_id is None or m.webhook_id == webhook_id]

    def count_429(self, webhook_id: str | None = None) -> int:
        return sum(1 for t in self.throttled if webhook_id is None or t.webhook_id == webhook_id)

    def hits(self, webhook_id: str | None = None) -> list[Hit]:
        """Every request to a webhook (posted, refused or failed), in arrival order."""
        return [h for h in self.log if webhook_id is None or h.webhook_id == webhook_id]

    def bucket_id(self, webhook_id: str) -> str:
        return hashlib.sha256(f"webhook:{webhook_id}".encode()).hexdigest()[:32]

    @property
    def requests(self) -> list[Recorded]:
        return self.provider.requests

    # ------------------------------------------------------------------ the server side
    def _handle(self, request: Recorded) -> Reply:
        match = re.fullmatch(WEBHOOK_PATH, request.path)
        assert match is not None
        webhook_id = match.group(1)
        now = time.monotonic()
        reply = self._reply(request, webhook_id, now)
        self.log.append(Hit(webhook_id, now, reply.status))
        return reply

    def _reply(self, request: Recorded, webhook_id: str, now: float) -> Reply:
        if request.method != "POST":
            return Reply(405, {"message": "405: Method Not Allowed", "code": 0})
        for rule in self._cloudflare:
            if rule.times > 0 and rule.webhook_id in (None, webhook_id):
                rule.times -= 1
                self.throttled.append(Throttled(webhook_id, now, None, True))
                headers = {} if rule.retry_after is None else {"Retry-After": f"{rule.retry_after:g}"}
                return Reply(429, headers=headers, body=CLOUDFLARE_BODY)
        failures = self._failures.get(webhook_id)
        if failures is not None and failures.times > 0:
            failures.times -= 1
            if failures.posted:
                self._post(request, webhook_id, now)
            return Reply(failures.status, {"message": "Internal Server Error", "code": 0})

        bucket = self._buckets.setdefault(webhook_id, _Bucket())
        if bucket.opened is None or now >= bucket.opened + self.per:
            bucket.opened, bucket.used = now, 0
        reset_after = _ceil_ms(bucket.opened + self.per - now)
        if bucket.used >= self.limit:
            self.throttled.append(Throttled(webhook_id, now, reset_after, False))
            headers = self._rate_headers(webhook_id, 0, reset_after)
            headers["X-RateLimit-Scope"] = "user"
            headers["Retry-After"] = str(max(1, math.ceil(reset_after)))
            body = {"message": "You are being rate limited.", "retry_after": reset_after, "global": False}
            return Reply(429, body, headers)
        bucket.used += 1
        headers = self._rate_headers(webhook_id, self.limit - bucket.used, reset_after)
        if webhook_id in self._gone:
            return Reply(404, {"message": "Unknown Webhook", "code": 10015}, headers)
        try:
            payload = json.loads(request.body)
        except ValueError:
            return Reply(400, {"message": "Cannot send an empty message", "code": 50006}, headers)
        content = payload.get("content") if isinstance(payload, dict) else None
        if not isinstance(content, str) or not content:
            return Reply(400, {"message": "Cannot send an empty message", "code": 50006}, headers)
        if len(content) > 2000:
            return Reply(400, _too_long(), headers)
        message = self._post(request, webhook_id, now)
        if request.query.get("wait") != "true":
            return Reply(204, headers=headers, body=b"")
        return Reply(200, _message_object(message), headers)

    def _post(self, request: Recorded, webhook_id: str, now: float) -> PostedMessage:
        try:
            payload = json.loads(request.body)
        except ValueError:
            payload = {}
        payload = payload if isinstance(payload, dict) else {}
        self._sequence += 1
        snowflake = ((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22) | (self._sequence & 0xFFF)
        message = PostedMessage(
            webhook_id=webhook_id,
            message_id=str(snowflake),
            content=payload.get("content"),
            allowed_mentions=payload.get("allowed_mentions"),
            arrived=now,
            body=payload,
        )
        self.posted.append(message)
        return message

    def _rate_headers(self, webhook_id: str, remaining: int, reset_after: float) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": self.bucket_id(webhook_id),
        }


def _ceil_ms(seconds: float) -> float:
    """Seconds rounded up to the millisecond: a client that waits this long is never early."""
    return max(0.0, math.ceil(seconds * 1000) / 1000)


def _too_long() -> dict[str, Any]:
    return {
        "code": 50035,
        "errors": {
            "content": {
                "_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}]
            }
        },
        "message": "Invalid Form Body",
    }


def _message_object(message: PostedMessage) -> dict[str, Any]:
    """A subset of Discord's message object, as execute with ``wait=true`` answers it."""
    return {
        "id": message.message_id,
        "type": 0,
        "content": message.content,
        "channel_id": "1100000000000000001",
        "author": {"id": message.webhook_id, "username": "Tradedesk", "bot": True, "discriminator": "0000"},
        "webhook_id": message.webhook_id,
        "attachments": [],
        "embeds": [],
        "mentions": [],
        "mention_roles": [],
        "mention_everyone": False,
        "pinned": False,
        "tts": False,
        "flags": 0,
        "timestamp": dt.datetime.now(dt.UTC).isoformat(),
        "edited_timestamp": None,
    }
