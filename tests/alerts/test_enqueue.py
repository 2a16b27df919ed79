"""Alerts over HTTP into PostgreSQL: the webhook (validated, token stored encrypted, never a URL), the
queue's rows, the 60-second per-user dedup (also under concurrency), plain-text content, reads, and the
per-user limit. Sending is the dispatcher's and is tested with it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, InvalidToken

from app.core.crypto import TokenCipher
from tests.auth.helpers import fetch
from tests.orders.helpers import trader
from tests.support.problems import assert_problem
from tests.support.settings import TEST_FERNET_KEY, TEST_JWT_SECRET, TEST_WEBHOOK_SECRET

pytestmark = pytest.mark.asyncio
ROOT = Path(__file__).resolve().parents[2]

WEBHOOK = {"webhook_id": "123456789012345678", "webhook_token": "tok_EN-secret-abcdef0123456789"}


async def with_webhook(client):
    user, auth = await trader(client)
    r = await client.put("/v1/alerts/discord/webhook", json=WEBHOOK, headers=auth)
    assert r.status_code == 204, r.text
    return user, auth


async def alert(client, auth, content: str):
    return await client.post("/v1/alerts/discord", json={"content": content}, headers=auth)


async def test_the_webhook_is_stored_with_its_token_encrypted(make_client, database_url) -> None:
    client = await make_client()
    user, _ = await with_webhook(client)
    (row,) = await fetch(database_url, "SELECT * FROM discord_webhooks")
    assert str(row["user_id"]) == user["id"] and row["webhook_id"] == WEBHOOK["webhook_id"]
    assert WEBHOOK["webhook_token"] not in row["token_encrypted"]
    assert TokenCipher([TEST_FERNET_KEY]).decrypt(row["token_encrypted"]) == WEBHOOK["webhook_token"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**WEBHOOK, "webhook_id": "12ab"}, "webhook_id"),
        ({**WEBHOOK, "webhook_id": "https://evil.example/x"}, "webhook_id"),
        ({**WEBHOOK, "webhook_token": "tok/../../users"}, "webhook_token"),
        ({**WEBHOOK, "webhook_token": "tok?x=1"}, "webhook_token"),
        ({**WEBHOOK, "url": "https://evil.example"}, "url"),
    ],
)
async def test_a_bad_webhook_id_or_token_is_422_naming_it(make_client, database_url, body, field) -> None:
    client = await make_client()
    _, auth = await trader(client)
    r = await client.put("/v1/alerts/discord/webhook", json=body, headers=auth)
    assert field in [e["field"] for e in assert_problem(r, 422)["errors"]]
    assert await fetch(database_url, "SELECT 1 FROM discord_webhooks") == []


async def test_an_alert_is_queued_as_a_row(make_client, database_url) -> None:
    client = await make_client()
    await client.app.state.alerts.stop()  # no dispatcher: the row must stay as the enqueue wrote it
    user, auth = await with_webhook(client)
    r = await alert(client, auth, "AAPL crossed 200")
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "queued"
    (row,) = await fetch(database_url, "SELECT * FROM alerts")
    assert str(row["id"]) == body["id"] and str(row["user_id"]) == user["id"]
    assert (row["content"], row["status"], row["attempts"], row["source"]) == (
        "AAPL crossed 200",
        "queued",
        0,
        "api",
    )
    got = await client.get(f"/v1/alerts/{body['id']}", headers=auth)
    assert got.json() == {"id": body["id"], "status": "queued", "attempts": 0, "last_error": None}


async def test_markup_is_stripped_and_empty_or_long_content_is_422(make_client, database_url) -> None:
    client = await make_client()
    _, auth = await with_webhook(client)
    r = await alert(client, auth, "<b>fill</b> <script>alert(1)</script>@everyone")
    assert r.status_code == 202, r.text
    (row,) = await fetch(database_url, "SELECT content FROM alerts")
    assert "<" not in row["content"] and "fill" in row["content"]
    for bad in ["", "<i></i>", "x" * 2001]:
        assert "content" in [
            e["field"] for e in assert_problem(await alert(client, auth, bad), 422)["errors"]
        ]


async def test_identical_content_within_60_s_is_deduplicated_per_user(make_client, database_url) -> None:
    client = await make_client()
    _, auth = await with_webhook(client)
    _, other = await with_webhook(client)
    first = (await alert(client, auth, "same words")).json()
    again = await alert(client, auth, "same words")
    assert again.status_code == 202 and again.json() == {"id": first["id"], "status": "deduplicated"}
    assert (await alert(client, auth, "other words")).json()["status"] == "queued"
    assert (await alert(client, other, "same words")).json()["status"] == "queued"  # per user
    assert len(await fetch(database_url, "SELECT 1 FROM alerts")) == 3
    # The window passes: the same content is a new alert.
    await fetch(database_url, "UPDATE alert_dedup SET expires_at = now() - interval '1 second'")
    later = (await alert(client, auth, "same words")).json()
    assert later["status"] == "queued" and later["id"] != first["id"]


async def test_concurrent_identical_alerts_make_one(make_client, database_url) -> None:
    client = await make_client()
    _, auth = await with_webhook(client)
    answers = await asyncio.gather(*(alert(client, auth, "burst") for _ in range(15)))
    bodies = [r.json() for r in answers]
    assert {b["id"] for b in bodies} == {bodies[0]["id"]}
    assert sorted(b["status"] for b in bodies) == ["deduplicated"] * 14 + ["queued"]
    assert len(await fetch(database_url, "SELECT 1 FROM alerts")) == 1


async def test_no_webhook_is_409_and_nothing_queued(make_client, database_url) -> None:
    client = await make_client()
    _, auth = await trader(client)
    assert_problem(await alert(client, auth, "hello"), 409)
    assert await fetch(database_url, "SELECT 1 FROM alerts") == []


async def test_another_users_alert_is_404(make_client) -> None:
    client = await make_client()
    _, auth = await with_webhook(client)
    _, other = await trader(client)
    queued = (await alert(client, auth, "mine")).json()
    assert_problem(await client.get(f"/v1/alerts/{queued['id']}", headers=other), 404)
    assert_problem(await client.get(f"/v1/alerts/{uuid.uuid4()}", headers=auth), 404)


async def test_alerts_are_limited_per_user(make_client) -> None:
    client = await make_client(rate_limit_alerts="3/50 years")
    _, auth = await with_webhook(client)
    _, other = await with_webhook(client)
    for i in range(3):
        assert (await alert(client, auth, f"n{i}")).status_code == 202
    r = await alert(client, auth, "n3")
    assert_problem(r, 429)
    assert int(r.headers["retry-after"]) >= 1
    assert (await alert(client, other, "n0")).status_code == 202


async def test_rotate_token_keys_re_encrypts_webhook_tokens(make_client, database_url) -> None:
    client = await make_client()
    await with_webhook(client)
    (before,) = await fetch(database_url, "SELECT token_encrypted FROM discord_webhooks")
    new_key = Fernet.generate_key().decode()
    root = ROOT
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "FRONTEND_URL": "http://localhost:3000",
        "JWT_SECRET": TEST_JWT_SECRET,
        "STRIPE_WEBHOOK_SECRET": TEST_WEBHOOK_SECRET,
        "TOKEN_ENCRYPTION_KEY": f"{new_key},{TEST_FERNET_KEY}",
        "PYTHONPATH": str(root),
    }
    env.pop("REDIS_URL", None)
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli", "rotate-token-keys"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr
    assert '"discord_webhook_tokens": 1' in proc.stdout
    (after,) = await fetch(database_url, "SELECT token_encrypted FROM discord_webhooks")
    assert after["token_encrypted"] != before["token_encrypted"]
    assert TokenCipher([new_key]).decrypt(after["token_encrypted"]) == WEBHOOK["webhook_token"]
    with pytest.raises(InvalidToken):
        TokenCipher([TEST_FERNET_KEY]).decrypt(after["token_encrypted"])
