"""Expired idempotency keys are purged: purge_expired in batches, the cleanup loop, the CLI command."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import REGISTRY

from app.core.db import Database, create_engine
from app.core.idempotency import purge_expired
from app.workers.cleanup import CleanupWorker
from tests.support import db as dbsupport
from tests.support.settings import (
    TEST_FERNET_KEY,
    TEST_JWT_SECRET,
    TEST_WEBHOOK_SECRET,
    make_settings,
)

ROOT = Path(__file__).resolve().parents[2]


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def sql(database_url: str):
    conn = await asyncpg.connect(dbsupport.asyncpg_dsn(database_url))
    yield conn
    await conn.close()


@pytest.fixture
async def db(database_url: str):
    database = Database(create_engine(make_settings(database_url), pool_size=2, max_overflow=0))
    yield database
    await database.dispose()


async def _user(sql: asyncpg.Connection) -> uuid.UUID:
    email = f"purge-{uuid.uuid4().hex}@x.io"
    return await sql.fetchval(
        "INSERT INTO users (email, email_normalized, password_hash) VALUES ($1, $1, 'h') RETURNING id", email
    )


async def _keys(sql: asyncpg.Connection, *, expired: int, live: int) -> uuid.UUID:
    """Insert completed and in-flight keys, ``expired`` of them past their expiry and ``live`` not."""
    user = await _user(sql)
    rows = []
    for i in range(expired + live):
        in_flight = i % 3 == 0
        rows.append(
            (
                user,
                f"{'old' if i < expired else 'new'}_{i:06d}",
                "f" * 64,
                "in_flight" if in_flight else "completed",
                "now" if in_flight else None,
                uuid.uuid4() if in_flight else None,
                None if in_flight else 201,
                None if in_flight else b"{}",
                "-1 second" if i < expired else "1 hour",
            )
        )
    await sql.executemany(
        "INSERT INTO idempotency_keys (user_id, key, fingerprint, state, locked_at, claim_token,"
        " response_status, response_body, expires_at)"
        " VALUES ($1, $2, $3, $4, $5::text::timestamptz, $6, $7, $8, now() + $9::text::interval)",
        rows,
    )
    return user


async def _remaining(sql: asyncpg.Connection) -> list[str]:
    return [r["key"] for r in await sql.fetch("SELECT key FROM idempotency_keys ORDER BY key")]


async def test_purge_deletes_expired_keys_and_keeps_live_ones(db: Database, sql) -> None:
    await _keys(sql, expired=5, live=4)
    before = counter("idempotency_keys_purged_total")
    assert await purge_expired(database=db) == 5
    remaining = await _remaining(sql)
    assert len(remaining) == 4 and all(k.startswith("new_") for k in remaining)
    assert counter("idempotency_keys_purged_total") - before == 5
    assert await purge_expired(database=db) == 0


async def test_purge_works_in_bounded_batches_until_done(db: Database, sql) -> None:
    await _keys(sql, expired=25, live=3)
    seen: list[int] = []

    def stop_never() -> bool:
        seen.append(1)
        return False

    assert await purge_expired(database=db, batch_size=10, should_stop=stop_never) == 25
    assert len(seen) == 2  # batches of 10, 10 and 5: the short one ends it without asking
    assert len(await _remaining(sql)) == 3


async def test_purge_stops_between_batches_when_asked(db: Database, sql) -> None:
    await _keys(sql, expired=25, live=0)
    assert await purge_expired(database=db, batch_size=10, should_stop=lambda: True) == 10
    assert len(await _remaining(sql)) == 15


async def test_the_cleanup_loop_purges_on_its_interval_and_stops_cleanly(db: Database, sql) -> None:
    await _keys(sql, expired=3, live=2)
    worker = CleanupWorker(db, interval_seconds=0.01)
    worker.start()
    task = worker._task
    try:
        async with asyncio.timeout(10):
            await worker.wait_for_runs(1)
    finally:
        async with asyncio.timeout(10):
            await worker.stop()
    assert len(await _remaining(sql)) == 2
    assert task is not None and task.done() and not task.cancelled()  # ended by itself, not cancelled
    assert worker._task is None


async def test_the_cleanup_loop_survives_database_errors(database_url: str) -> None:
    # A database nobody listens on: every run fails (connection refused) and is counted.
    unreachable = Database(
        create_engine(make_settings("postgresql://nobody@127.0.0.1:9/none"), pool_size=1, max_overflow=0)
    )
    before = counter("cleanup_runs_total", job="idempotency_keys", outcome="error")
    worker = CleanupWorker(unreachable, interval_seconds=0.01)
    worker.start()
    try:
        async with asyncio.timeout(20):
            await worker.wait_for_runs(3)
    finally:
        async with asyncio.timeout(10):
            await worker.stop()
        await unreachable.dispose()
    assert counter("cleanup_runs_total", job="idempotency_keys", outcome="error") - before >= 3


async def test_stop_cancels_a_run_that_overstays_the_stop_timeout(db: Database) -> None:
    worker = CleanupWorker(db, interval_seconds=0.01, stop_timeout=0.1)
    started, never = asyncio.Event(), asyncio.Event()

    async def stuck() -> int:
        started.set()
        await never.wait()
        return 0

    worker._jobs = {"stuck": stuck}
    worker.start()
    task = worker._task
    async with asyncio.timeout(10):
        await started.wait()
        await worker.stop()
    assert task is not None and task.cancelled()


async def test_the_app_lifespan_runs_the_cleanup_worker(make_client) -> None:
    client = await make_client()
    cleanup = client.app.state.cleanup
    assert isinstance(cleanup, CleanupWorker) and cleanup._task is not None and not cleanup._task.done()


async def test_the_cli_command_purges_expired_keys(database_url: str, sql) -> None:
    await _keys(sql, expired=2, live=1)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "FRONTEND_URL": "http://localhost:3000",
        "JWT_SECRET": TEST_JWT_SECRET,
        "STRIPE_WEBHOOK_SECRET": TEST_WEBHOOK_SECRET,
        "TOKEN_ENCRYPTION_KEY": TEST_FERNET_KEY,
        "PYTHONPATH": str(ROOT),
    }
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli", "purge-idempotency-keys"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"command": "purge-idempotency-keys", "deleted": 2}
    assert len(await _remaining(sql)) == 1
