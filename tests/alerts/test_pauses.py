"""Sending pauses shared by every dispatcher: Cloudflare's header-less 429 and the guard against Discord's
IP ban (10,000 401/403/429 in 10 minutes); and the operator command ``python -m app.cli alerts``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.alerts.test_dispatch import app_with, discord, settled, user_with_webhook  # noqa: F401
from tests.auth.helpers import fetch
from tests.support.settings import TEST_FERNET_KEY, TEST_JWT_SECRET, TEST_WEBHOOK_SECRET

pytestmark = pytest.mark.asyncio
ROOT = Path(__file__).resolve().parents[2]


async def wait_for(predicate, deadline: float = 15.0) -> None:
    ends = time.monotonic() + deadline
    while not predicate():
        assert time.monotonic() < ends, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_a_cloudflare_429_pauses_every_send_until_it_passes(make_client, database_url, discord) -> None:  # noqa: F811
    client = await app_with(make_client, discord)
    _, first = await user_with_webhook(client, "700000000000000001")
    _, second = await user_with_webhook(client, "700000000000000002")
    discord.cloudflare(times=1, retry_after=1.0)
    await client.post("/v1/alerts/discord", json={"content": "one"}, headers=first)
    await wait_for(lambda: discord.count_429() == 1)
    throttled_at = discord.throttled[0].arrived
    assert discord.throttled[0].cloudflare
    await client.post("/v1/alerts/discord", json={"content": "two"}, headers=second)
    rows = await settled(database_url, 2)
    assert [r["status"] for r in rows] == ["sent", "sent"]
    # Another webhook, never refused itself, waited for the pause too.
    (other,) = discord.messages("700000000000000002")
    assert other.arrived >= throttled_at + 1.0 - 0.01
    (pause,) = await fetch(database_url, "SELECT scope, reason FROM alert_dispatch_pauses")
    assert pause["scope"] == "cloudflare"


async def test_sends_pause_well_before_the_ip_ban_threshold(make_client, database_url, discord) -> None:  # noqa: F811
    client = await app_with(make_client, discord)
    webhook = "700000000000000003"
    _, auth = await user_with_webhook(client, webhook)
    # 1,999 refusals already counted this minute (by any process); the next one reaches the guard.
    await fetch(
        database_url,
        "INSERT INTO discord_error_counts (minute, count) VALUES (date_trunc('minute', now()), 1999)",
    )
    discord.fail(webhook, times=1, status=403)
    await client.post("/v1/alerts/discord", json={"content": "refused"}, headers=auth)
    (row,) = await settled(database_url, 1)
    assert row["status"] == "failed"
    (pause,) = await fetch(
        database_url,
        "SELECT scope, paused_until > now() + interval '9 minutes' AS long FROM alert_dispatch_pauses",
    )
    assert (pause["scope"], pause["long"]) == ("ban_guard", True)


async def test_the_cli_shows_the_queue_and_retries_failed_alerts(make_client, database_url, discord) -> None:  # noqa: F811
    # Five 5xx also open the Discord breaker (BREAKER_FAIL_MAX 5): a short reset lets the retry through.
    client = await app_with(make_client, discord, breaker_reset_seconds=1)
    webhook = "700000000000000004"
    _, auth = await user_with_webhook(client, webhook)
    discord.fail(webhook, times=5, status=500)
    await client.post("/v1/alerts/discord", json={"content": "retry me"}, headers=auth)
    (row,) = await settled(database_url, 1)
    assert row["status"] == "failed"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "FRONTEND_URL": "http://localhost:3000",
        "JWT_SECRET": TEST_JWT_SECRET,
        "STRIPE_WEBHOOK_SECRET": TEST_WEBHOOK_SECRET,
        "TOKEN_ENCRYPTION_KEY": TEST_FERNET_KEY,
        "PYTHONPATH": str(ROOT),
    }
    env.pop("REDIS_URL", None)

    def cli(*args: str) -> dict:
        proc = subprocess.run(
            [sys.executable, "-m", "app.cli", "alerts", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    shown = await asyncio.to_thread(cli)
    assert (shown["failed"], shown["queued"], shown["retried"]) == (1, 0, 0)
    retried = await asyncio.to_thread(cli, "--retry-failed")
    assert retried["retried"] == 1
    await wait_for(lambda: len(discord.messages(webhook)) == 1)
    (row,) = await settled(database_url, 1)
    assert row["status"] == "sent"
