"""The fake Discord itself (tests/support/fake_discord.py), driven by the real DiscordHTTP over real sockets:
it enforces 5 requests per 2 s per webhook with Discord's headers and 429 body, so later tests can trust it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from app.core.http import Outbound
from app.providers.discord import DeliveryOutcome, DiscordWebhooks, build_discord
from tests.support.fake_discord import FakeDiscord
from tests.support.settings import make_settings

DATABASE_URL = "postgresql://u@127.0.0.1/d"  # never connected to
HOOK_A = "1111111111111111111"
HOOK_B = "2222222222222222222"
TOKEN = "fake-token_0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWX"


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as server:
        yield server


@pytest.fixture
async def discord(fake: FakeDiscord) -> AsyncIterator[DiscordWebhooks]:
    settings = make_settings(
        DATABASE_URL, discord_api_base_url=fake.base_url, http_timeout_seconds=2.0, breaker_fail_max=50
    )
    outbound = Outbound(settings)
    yield build_discord(settings, outbound)
    await outbound.aclose()


async def test_the_fake_enforces_5_per_2_seconds_per_webhook_with_real_headers(
    fake: FakeDiscord, discord: DiscordWebhooks
) -> None:
    started = time.monotonic()
    results = [await discord.execute(webhook_id=HOOK_A, token=TOKEN, content=f"m{i}") for i in range(6)]
    elapsed = time.monotonic() - started
    assert elapsed < 1.0  # all six inside one window

    for i, result in enumerate(results[:5]):
        assert result.outcome is DeliveryOutcome.SENT and result.message_id
        assert result.rate is not None
        assert result.rate.limit == 5 and result.rate.remaining == 4 - i
        assert result.rate.bucket == fake.bucket_id(HOOK_A)
        assert result.rate.reset_after is not None and 0 < result.rate.reset_after <= 2.0
    sixth = results[5]
    assert sixth.outcome is DeliveryOutcome.RATE_LIMITED and sixth.status == 429
    assert sixth.retry_after is not None and 0 < sixth.retry_after <= 2.0
    assert not sixth.global_ and not sixth.cloudflare
    assert sixth.rate is not None and sixth.rate.remaining == 0 and sixth.rate.scope == "user"
    assert sixth.rate.bucket == fake.bucket_id(HOOK_A)

    assert fake.count_429(HOOK_A) == 1 and fake.count_429() == 1
    assert [m.content for m in fake.messages(HOOK_A)] == [f"m{i}" for i in range(5)]
    assert all(m.allowed_mentions == {"parse": []} for m in fake.messages(HOOK_A))
    assert [h.status for h in fake.hits(HOOK_A)] == [200] * 5 + [429]
    assert all(r.query == {"wait": "true"} for r in fake.requests)

    # another webhook has its own bucket
    other = await discord.execute(webhook_id=HOOK_B, token=TOKEN, content="b")
    assert other.outcome is DeliveryOutcome.SENT and other.rate is not None and other.rate.remaining == 4
    assert other.rate.bucket == fake.bucket_id(HOOK_B) != fake.bucket_id(HOOK_A)

    # honouring retry_after exactly is enough: the window has reset
    await asyncio.sleep(sixth.retry_after)
    again = await discord.execute(webhook_id=HOOK_A, token=TOKEN, content="after")
    assert again.outcome is DeliveryOutcome.SENT and again.rate is not None and again.rate.remaining == 4
    assert fake.count_429(HOOK_A) == 1 and len(fake.messages(HOOK_A)) == 6


async def test_the_fakes_knobs_gone_5xx_and_cloudflare(fake: FakeDiscord, discord: DiscordWebhooks) -> None:
    fake.gone(HOOK_A)
    gone = await discord.execute(webhook_id=HOOK_A, token=TOKEN, content="x")
    assert gone.outcome is DeliveryOutcome.GONE and gone.code == 10015 and gone.rate is not None
    assert fake.messages(HOOK_A) == []

    fake.fail(HOOK_B, 2, status=503)
    first, second, third = [
        await discord.execute(webhook_id=HOOK_B, token=TOKEN, content="y") for _ in range(3)
    ]
    assert [r.outcome for r in (first, second)] == [DeliveryOutcome.TRANSIENT] * 2
    assert first.status == 503 and first.maybe_sent
    assert third.outcome is DeliveryOutcome.SENT and len(fake.messages(HOOK_B)) == 1

    fake.fail(HOOK_B, 1, posted=True)  # Discord posted it but the answer was lost
    lost = await discord.execute(webhook_id=HOOK_B, token=TOKEN, content="lost")
    assert lost.outcome is DeliveryOutcome.TRANSIENT and lost.maybe_sent
    assert [m.content for m in fake.messages(HOOK_B)] == ["y", "lost"]

    fake.cloudflare(1, retry_after=12)
    blocked = await discord.execute(webhook_id=HOOK_B, token=TOKEN, content="z")
    assert blocked.outcome is DeliveryOutcome.RATE_LIMITED and blocked.cloudflare
    assert blocked.retry_after == 12 and blocked.rate is None
    assert fake.count_429(HOOK_B) == 1 and fake.throttled[-1].cloudflare
    assert (await discord.execute(webhook_id=HOOK_B, token=TOKEN, content="z")).sent
