"""DiscordHTTP on the real outbound client, with Discord faked at the HTTP boundary (httpx.MockTransport):
the exact request, the rate-limit headers parsed, and the outcome every answer or failure falls into
(sent / rate limited / gone / rejected / transient / not sent) — one attempt, never a retry, and the
webhook token never in a result or a log record."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from app.core.http import Outbound
from app.providers.discord import (
    CLOUDFLARE_DEFAULT_PAUSE,
    MAX_CONTENT,
    PROVIDER,
    DeliveryOutcome,
    DiscordHTTP,
    DiscordResult,
    DiscordWebhooks,
    RateLimit,
    build_discord,
)
from tests.support.settings import make_settings

DATABASE_URL = "postgresql://u@127.0.0.1/d"  # never connected to: these tests need no database
BASE_URL = "https://discord.test/api"
WEBHOOK_ID = "1234567890123456789"
TOKEN = "Xy9_aBcDeFgHiJkLmNoPqRsTuVwXyZ-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGH"
PATH = f"/api/webhooks/{WEBHOOK_ID}/{TOKEN}"
MESSAGE_ID = "1199911199911199911"
BUCKET = "41f9cd5d28af77da04563bcb1d67fdfd"

RATE_HEADERS = {
    "X-RateLimit-Limit": "5",
    "X-RateLimit-Remaining": "4",
    "X-RateLimit-Reset": "1770000000.123",
    "X-RateLimit-Reset-After": "1.5",
    "X-RateLimit-Bucket": BUCKET,
}

Answer = httpx.Response | Exception | Callable[[httpx.Request], Any]


def message_json(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": MESSAGE_ID,
        "type": 0,
        "content": "hello",
        "channel_id": "1100000000000000001",
        "author": {"id": WEBHOOK_ID, "username": "Tradedesk", "bot": True},
        "webhook_id": WEBHOOK_ID,
        "timestamp": "2026-03-16T18:38:01.942000+00:00",
    }
    body.update(overrides)
    return body


def sent(headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
    return httpx.Response(
        200, json=message_json(**body), headers=RATE_HEADERS if headers is None else headers
    )


def limited(
    retry_after: float = 0.64, *, headers: dict[str, str] | None = None, **body: Any
) -> httpx.Response:
    payload = {"message": "You are being rate limited.", "retry_after": retry_after, "global": False}
    payload.update(body)
    default = {**RATE_HEADERS, "X-RateLimit-Remaining": "0", "X-RateLimit-Scope": "user", "Retry-After": "1"}
    return httpx.Response(429, json=payload, headers=default if headers is None else headers)


class FakeDiscordAPI:
    """A MockTransport handler: scripted answers, the last one repeating; records every request."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers) or [sent()]
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer) and not isinstance(answer, httpx.Response):
            answer = answer(request)
            if asyncio.iscoroutine(answer):
                answer = await answer
        assert isinstance(answer, httpx.Response)
        return answer


Factory = Callable[..., DiscordHTTP]


@pytest.fixture
async def make_discord() -> AsyncIterator[Factory]:
    """DiscordHTTP exactly as the app builds it (build_discord over Outbound), the fake as transport."""
    outbounds: list[Outbound] = []

    def factory(fake: FakeDiscordAPI, **overrides: Any) -> DiscordHTTP:
        values: dict[str, Any] = {
            "discord_api_base_url": BASE_URL,
            "http_timeout_seconds": 2.0,
            "breaker_fail_max": 5,
        }
        values.update(overrides)
        settings = make_settings(DATABASE_URL, **values)
        outbound = Outbound(settings, transports={PROVIDER: httpx.MockTransport(fake)})
        outbounds.append(outbound)
        discord = build_discord(settings, outbound)
        assert isinstance(discord, DiscordHTTP)
        return discord

    yield factory
    for outbound in outbounds:
        await outbound.aclose()


async def execute(discord: DiscordWebhooks, content: str = "hello", **kw: str) -> DiscordResult:
    return await discord.execute(
        webhook_id=kw.get("webhook_id", WEBHOOK_ID), token=kw.get("token", TOKEN), content=content
    )


# --------------------------------------------------------------------------- construction and request
async def test_build_discord_uses_its_own_client_with_the_http_timeout() -> None:
    settings = make_settings(DATABASE_URL, discord_api_base_url=BASE_URL, http_timeout_seconds=3.5)
    fake = FakeDiscordAPI()
    outbound = Outbound(settings, transports={PROVIDER: httpx.MockTransport(fake)})
    try:
        discord = build_discord(settings, outbound)
        assert isinstance(discord, DiscordHTTP) and isinstance(discord, DiscordWebhooks)
        assert discord.name == "discord" and PROVIDER == "discord"
        assert discord.client is outbound[PROVIDER] and discord.client.deadline == 3.5
        await execute(discord)
        assert str(fake.requests[0].url) == f"{BASE_URL}/webhooks/{WEBHOOK_ID}/{TOKEN}?wait=true"
    finally:
        await outbound.aclose()


async def test_execute_sends_one_post_with_wait_true_no_mentions_and_the_content_unchanged(
    make_discord: Factory,
) -> None:
    fake = FakeDiscordAPI(sent())
    content = "@everyone <b>AAPL</b> filled 10 @ 101.25 — ünïcödé 🎉\n<@&123> line two"
    result = await execute(make_discord(fake), content)
    assert len(fake.requests) == 1
    request = fake.requests[0]
    assert request.method == "POST"
    assert request.url.host == "discord.test" and request.url.path == PATH
    assert dict(request.url.params) == {"wait": "true"}
    assert request.headers["content-type"] == "application/json"
    body = json.loads(request.content)
    assert body == {"content": content, "allowed_mentions": {"parse": []}}
    assert body["content"] == content and body["allowed_mentions"] == {"parse": []}

    assert result == DiscordResult(
        DeliveryOutcome.SENT,
        status=200,
        message_id=MESSAGE_ID,
        rate=RateLimit(limit=5, remaining=4, reset_after=1.5, bucket=BUCKET, scope=None, global_=False),
    )
    assert result.sent and not result.invalid_request and result.error == ""


async def test_a_sent_message_without_rate_limit_headers_has_no_rate(make_discord: Factory) -> None:
    result = await execute(make_discord(FakeDiscordAPI(sent(headers={}))))
    assert result.outcome is DeliveryOutcome.SENT and result.rate is None


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, text="<html>ok</html>"),
        httpx.Response(200, json={"content": "no id"}),
        httpx.Response(200, json=["not", "an", "object"]),
        httpx.Response(204),
    ],
    ids=["html", "no-id", "array", "204"],
)
async def test_an_unreadable_2xx_is_transient_and_maybe_sent(
    make_discord: Factory, answer: httpx.Response
) -> None:
    result = await execute(make_discord(FakeDiscordAPI(answer)))
    assert result.outcome is DeliveryOutcome.TRANSIENT and result.maybe_sent
    assert result.status == answer.status_code and result.message_id is None


# --------------------------------------------------------------------------- 429
async def test_a_429_is_rate_limited_with_the_bodys_exact_retry_after_and_the_bucket(
    make_discord: Factory,
) -> None:
    fake = FakeDiscordAPI(limited(0.64))
    result = await execute(make_discord(fake))
    assert len(fake.requests) == 1  # one attempt: the layer never retries a non-idempotent POST
    assert result.outcome is DeliveryOutcome.RATE_LIMITED and result.status == 429
    assert result.retry_after == 0.64  # the body's float, not the rounded Retry-After header
    assert not result.global_ and not result.cloudflare and not result.maybe_sent
    assert result.rate is not None
    assert result.rate.bucket == BUCKET and result.rate.remaining == 0 and result.rate.scope == "user"
    assert result.invalid_request


async def test_a_429_without_a_json_body_falls_back_to_the_headers(make_discord: Factory) -> None:
    headers = {**RATE_HEADERS, "X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": "1.25"}
    result = await execute(
        make_discord(FakeDiscordAPI(httpx.Response(429, text="slow down", headers=headers)))
    )
    assert result.outcome is DeliveryOutcome.RATE_LIMITED and result.retry_after == 1.25
    assert not result.cloudflare


async def test_a_shared_scope_429_does_not_count_toward_the_cloudflare_ban(make_discord: Factory) -> None:
    headers = {**RATE_HEADERS, "X-RateLimit-Remaining": "0", "X-RateLimit-Scope": "shared"}
    result = await execute(make_discord(FakeDiscordAPI(limited(3.5, headers=headers, code=20028))))
    assert result.outcome is DeliveryOutcome.RATE_LIMITED and result.retry_after == 3.5
    assert result.code == 20028 and result.rate is not None and result.rate.scope == "shared"
    assert not result.invalid_request


@pytest.mark.parametrize(
    "headers, body",
    [
        ({"X-RateLimit-Global": "true", "X-RateLimit-Scope": "global", "Retry-After": "2"}, {"global": True}),
        ({"X-RateLimit-Global": "True"}, {}),
        ({"X-RateLimit-Scope": "global"}, {}),
        (RATE_HEADERS, {"global": True}),
    ],
    ids=["all", "global-header", "scope", "body"],
)
async def test_a_global_429_says_global(
    make_discord: Factory, headers: dict[str, str], body: dict[str, Any]
) -> None:
    result = await execute(make_discord(FakeDiscordAPI(limited(1.5, headers=headers, **body))))
    assert result.outcome is DeliveryOutcome.RATE_LIMITED
    assert result.global_ and not result.cloudflare and result.retry_after == 1.5


async def test_a_429_without_rate_limit_headers_is_cloudflare(make_discord: Factory) -> None:
    html = "<html><title>Error 1015</title><body>You are being rate limited</body></html>"
    fake = FakeDiscordAPI(
        httpx.Response(429, text=html, headers={"Retry-After": "30", "Content-Type": "text/html"}),
        httpx.Response(429, text=html),
    )
    discord = make_discord(fake)
    first = await execute(discord)
    assert first.outcome is DeliveryOutcome.RATE_LIMITED and first.cloudflare
    assert first.retry_after == 30 and first.rate is None and first.invalid_request
    second = await execute(discord)
    assert second.cloudflare and second.retry_after == CLOUDFLARE_DEFAULT_PAUSE
    assert len(fake.requests) == 2


async def test_a_429_does_not_open_the_breaker(make_discord: Factory) -> None:
    fake = FakeDiscordAPI(limited(0.1))
    discord = make_discord(fake, breaker_fail_max=2)
    for _ in range(4):
        assert (await execute(discord)).outcome is DeliveryOutcome.RATE_LIMITED
    assert len(fake.requests) == 4


# --------------------------------------------------------------------------- 4xx
async def test_404_unknown_webhook_is_gone(make_discord: Factory) -> None:
    fake = FakeDiscordAPI(httpx.Response(404, json={"message": "Unknown Webhook", "code": 10015}))
    result = await execute(make_discord(fake))
    assert result.outcome is DeliveryOutcome.GONE and result.status == 404
    assert result.code == 10015 and result.message == "Unknown Webhook" and not result.maybe_sent


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(404, text="<html>Not Found</html>"),
        httpx.Response(404, json={"message": "404: Not Found", "code": 0}),
    ],
    ids=["proxy", "unknown-route"],
)
async def test_a_404_that_is_not_unknown_webhook_never_says_gone(
    make_discord: Factory, answer: httpx.Response
) -> None:
    result = await execute(make_discord(FakeDiscordAPI(answer)))
    assert result.outcome is DeliveryOutcome.TRANSIENT and result.status == 404 and not result.maybe_sent


@pytest.mark.parametrize(
    "status, code, message, invalid",
    [
        (401, 50027, "Invalid Webhook Token", True),
        (403, 50013, "Missing Permissions", True),
        (400, 50035, "Invalid Form Body", False),
        (413, 40005, "Request entity too large", False),
    ],
)
async def test_other_4xx_are_rejected_with_discords_reason(
    make_discord: Factory, status: int, code: int, message: str, invalid: bool
) -> None:
    fake = FakeDiscordAPI(httpx.Response(status, json={"message": message, "code": code}))
    result = await execute(make_discord(fake))
    assert len(fake.requests) == 1
    assert result.outcome is DeliveryOutcome.REJECTED
    assert (result.status, result.code, result.message) == (status, code, message)
    assert result.error == f"HTTP {status}: {message} (code {code})"
    assert result.invalid_request is invalid and not result.maybe_sent


async def test_a_4xx_without_a_json_body_is_rejected_with_its_status(make_discord: Factory) -> None:
    result = await execute(make_discord(FakeDiscordAPI(httpx.Response(403, text="<html>1020</html>"))))
    assert result.outcome is DeliveryOutcome.REJECTED and result.status == 403
    assert result.code is None and result.message == "" and result.error == "HTTP 403"


# --------------------------------------------------------------------------- 5xx and transport failures
@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_is_transient_maybe_sent_after_exactly_one_request(
    make_discord: Factory, status: int
) -> None:
    fake = FakeDiscordAPI(
        httpx.Response(status, json={"message": "Internal Server Error", "code": 0}), sent()
    )
    result = await execute(make_discord(fake))
    assert len(fake.requests) == 1  # no retry: a re-POST could post twice
    assert result.outcome is DeliveryOutcome.TRANSIENT and result.maybe_sent
    assert result.status == status and result.error == f"HTTP {status}" and result.retry_after is None


async def test_a_5xx_keeps_its_retry_after_and_rate_headers(make_discord: Factory) -> None:
    answer = httpx.Response(503, text="busy", headers={**RATE_HEADERS, "Retry-After": "7"})
    result = await execute(make_discord(FakeDiscordAPI(answer)))
    assert result.outcome is DeliveryOutcome.TRANSIENT and result.retry_after == 7
    assert result.rate is not None and result.rate.bucket == BUCKET


@pytest.mark.parametrize(
    "error",
    [
        httpx.ReadTimeout("read timed out"),
        httpx.WriteTimeout("write timed out"),
        httpx.ReadError("connection reset by peer"),
        httpx.RemoteProtocolError("server disconnected without sending a response"),
    ],
    ids=["read-timeout", "write-timeout", "reset", "disconnected"],
)
async def test_a_failure_after_sending_is_transient_maybe_sent(
    make_discord: Factory, error: Exception
) -> None:
    fake = FakeDiscordAPI(error, sent())
    result = await execute(make_discord(fake))
    assert len(fake.requests) == 1
    assert result.outcome is DeliveryOutcome.TRANSIENT and result.maybe_sent and result.status is None


async def test_the_deadline_after_sending_is_transient_maybe_sent(make_discord: Factory) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return sent()

    result = await execute(make_discord(FakeDiscordAPI(slow), http_timeout_seconds=0.2))
    assert (
        result.outcome is DeliveryOutcome.TRANSIENT
        and result.maybe_sent
        and result.error == "timeout after sending"
    )


@pytest.mark.parametrize(
    "error",
    [httpx.ConnectError("connection refused"), httpx.ConnectTimeout("connect timed out")],
    ids=["refused", "connect-timeout"],
)
async def test_a_failure_before_sending_is_not_sent(make_discord: Factory, error: Exception) -> None:
    fake = FakeDiscordAPI(error, sent())
    result = await execute(make_discord(fake))
    assert len(fake.requests) == 1
    assert result.outcome is DeliveryOutcome.NOT_SENT and not result.maybe_sent and result.status is None


async def test_an_open_breaker_is_not_sent_without_a_request(make_discord: Factory) -> None:
    fake = FakeDiscordAPI(httpx.Response(500, text="down"))
    discord = make_discord(fake, breaker_fail_max=3, breaker_reset_seconds=30)
    for _ in range(3):
        assert (await execute(discord)).outcome is DeliveryOutcome.TRANSIENT
    result = await execute(discord)
    assert len(fake.requests) == 3  # the 4th call never reached the network
    assert result.outcome is DeliveryOutcome.NOT_SENT and not result.maybe_sent
    assert result.retry_after is not None and 0 < result.retry_after <= 30
    assert result.error == "circuit breaker open"


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "webhook_id, token, content",
    [
        ("12ab", TOKEN, "hi"),
        ("", TOKEN, "hi"),
        ("1" * 26, TOKEN, "hi"),
        ("123\n", TOKEN, "hi"),
        ("١٢٣", TOKEN, "hi"),  # non-ASCII digits
        ("../../users/@me", TOKEN, "hi"),
        (WEBHOOK_ID, "", "hi"),
        (WEBHOOK_ID, "tok/../../x", "hi"),
        (WEBHOOK_ID, "tok?wait=false", "hi"),
        (WEBHOOK_ID, "tok%2F", "hi"),
        (WEBHOOK_ID, "t" * 101, "hi"),
        (WEBHOOK_ID, f"{TOKEN}\n", "hi"),
        (WEBHOOK_ID, TOKEN, ""),
        (WEBHOOK_ID, TOKEN, "x" * (MAX_CONTENT + 1)),
    ],
)
async def test_a_bad_id_token_or_content_raises_before_any_request(
    make_discord: Factory, webhook_id: str, token: str, content: str
) -> None:
    fake = FakeDiscordAPI()
    with pytest.raises(ValueError) as raised:
        await make_discord(fake).execute(webhook_id=webhook_id, token=token, content=content)
    assert fake.requests == []
    if token:
        assert token not in str(raised.value)


async def test_the_longest_id_token_and_content_are_accepted(make_discord: Factory) -> None:
    fake = FakeDiscordAPI()
    token = "A-_z9" * 20
    result = await make_discord(fake).execute(webhook_id="9" * 25, token=token, content="x" * MAX_CONTENT)
    assert result.sent and fake.requests[0].url.path == f"/api/webhooks/{'9' * 25}/{token}"


# --------------------------------------------------------------------------- the token stays secret
def _leaky(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError(f"cannot connect to {request.url}", request=request)


def _echo(status: int) -> Callable[[httpx.Request], httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            status,
            json={"message": f"bad request to {request.url}", "code": 50035, "retry_after": 0.5},
            headers={**RATE_HEADERS, "X-RateLimit-Bucket": TOKEN},
        )

    return answer


@pytest.mark.parametrize(
    "answer",
    [
        _leaky,
        httpx.ReadError(f"reset while talking to {BASE_URL}/webhooks/{WEBHOOK_ID}/{TOKEN}"),
        httpx.ReadTimeout(f"timed out: {PATH}"),
        httpx.RemoteProtocolError(f"peer closed: {TOKEN}"),
        _echo(400),
        _echo(401),
        _echo(404),
        _echo(429),
        _echo(500),
        _echo(200),
        sent(),
    ],
    ids=["connect", "reset", "timeout", "protocol", "400", "401", "404", "429", "500", "2xx-garbage", "sent"],
)
async def test_the_token_never_appears_in_a_result_or_a_log_record(
    make_discord: Factory, caplog: pytest.LogCaptureFixture, answer: Answer
) -> None:
    caplog.set_level(logging.DEBUG)  # every record of every logger,
    caplog.set_level(logging.DEBUG, logger="httpx")  # httpx's request lines included (an app sets WARNING)
    result = await execute(make_discord(FakeDiscordAPI(answer)))
    assert TOKEN not in repr(result)
    assert TOKEN not in result.error and TOKEN not in result.message
    for record in caplog.records:
        text = record.getMessage() + repr(record.__dict__)
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        assert TOKEN not in text, record


async def test_httpxs_own_request_log_line_has_the_token_masked(
    make_discord: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    # configure_logging keeps httpx at WARNING; the provider's filter also covers a logger left at DEBUG.
    caplog.set_level(logging.DEBUG, logger="httpx")
    await execute(make_discord(FakeDiscordAPI(sent())))
    lines = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert lines == [
        f'HTTP Request: POST {BASE_URL}/webhooks/{WEBHOOK_ID}/[redacted]?wait=true "HTTP/1.1 200 OK"'
    ]


async def test_failures_are_logged_with_the_webhook_id_and_never_the_token(
    make_discord: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tradedesk")
    await execute(
        make_discord(FakeDiscordAPI(httpx.Response(404, json={"message": "Unknown Webhook", "code": 10015})))
    )
    records = [r for r in caplog.records if r.name == "tradedesk.discord"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    assert records[0].__dict__["webhook_id"] == WEBHOOK_ID and records[0].__dict__["outcome"] == "gone"


# --------------------------------------------------------------------------- headers
def test_rate_limit_headers_parse_and_garbage_becomes_none() -> None:
    assert RateLimit.from_headers({}) is None
    assert RateLimit.from_headers({"Retry-After": "3", "Content-Type": "text/html"}) is None
    assert RateLimit.from_headers(
        {
            "x-ratelimit-limit": "5",
            "X-RATELIMIT-REMAINING": " 0 ",
            "X-RateLimit-Reset-After": "0.640",
            "X-RateLimit-Bucket": BUCKET,
            "X-RateLimit-Scope": "Shared",
            "X-RateLimit-Global": "false",
        }
    ) == RateLimit(limit=5, remaining=0, reset_after=0.64, bucket=BUCKET, scope="shared", global_=False)
    garbage = RateLimit.from_headers(
        {
            "X-RateLimit-Limit": "five",
            "X-RateLimit-Remaining": "-1",
            "X-RateLimit-Reset-After": "nan",
            "X-RateLimit-Reset": "inf",
            "X-RateLimit-Bucket": "has spaces in it",
            "X-RateLimit-Scope": "everyone",
            "X-RateLimit-Global": "yes",
        }
    )
    assert garbage == RateLimit()
    assert (
        RateLimit.from_headers({"X-RateLimit-Limit": "2.5", "X-RateLimit-Reset-After": "-3"}) == RateLimit()
    )
    # Reset-After missing: derived from the epoch Reset
    derived = RateLimit.from_headers({"X-RateLimit-Reset": "1000.75"}, now=1000.0)
    assert derived is not None and derived.reset_after == 0.75
