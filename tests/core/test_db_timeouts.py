"""Server-side limits on every pooled connection (issue 14: prevention before "kill long-running
queries"): PostgreSQL cancels a statement past DB_STATEMENT_TIMEOUT_SECONDS and ends a session left
idle inside a transaction past DB_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS, releasing its locks.

Before the change only asyncpg's client-side ``command_timeout`` (30 s) existed: the server kept
running a cancelled statement's locks until the client noticed, and nothing at all ended a
transaction left open between statements."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest
from fastapi import APIRouter
from sqlalchemy import text

from app.core.config import ConfigurationError
from app.core.db import Database, create_engine
from app.core.deps import SessionDep
from tests.support import db as dbsupport
from tests.support.metrics import grew, scrape
from tests.support.settings import make_settings

LOCK_KEY = 914_202_612


class Probe:
    """What the test-only routes report back, and the gate that keeps one idle in its transaction."""

    def __init__(self) -> None:
        self.locked = asyncio.Event()
        self.release = asyncio.Event()
        self.pid = 0


def _routes(probe: Probe) -> APIRouter:
    router = APIRouter()

    @router.get("/_test/slow-statement")
    async def slow_statement(session: SessionDep) -> dict[str, bool]:
        await session.execute(text("SELECT pg_sleep(5)"))
        return {"finished": True}

    @router.get("/_test/idle-in-transaction")
    async def idle_in_transaction(session: SessionDep) -> dict[str, bool]:
        probe.pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
        probe.locked.set()
        await probe.release.wait()  # the transaction stays open, sending nothing: idle in transaction
        await session.execute(text("SELECT 1"))
        return {"finished": True}

    @router.get("/_test/quick")
    async def quick(session: SessionDep) -> dict[str, int]:
        return {"one": (await session.execute(text("SELECT 1"))).scalar_one()}

    return router


async def test_every_pooled_connection_carries_both_limits_from_settings(database_url: str) -> None:
    settings = make_settings(
        database_url, db_statement_timeout_seconds=2.5, db_idle_in_transaction_timeout_seconds=7
    )
    db = Database(create_engine(settings, pool_size=2, max_overflow=0))
    try:
        async with db.own_transaction() as a, db.own_transaction() as b:  # two distinct connections
            for session in (a, b):
                assert (await session.execute(text("SHOW statement_timeout"))).scalar_one() == "2500ms"
                assert (
                    await session.execute(text("SHOW idle_in_transaction_session_timeout"))
                ).scalar_one() == "7s"
    finally:
        await db.dispose()


def test_the_defaults_and_the_bounds() -> None:
    settings = make_settings("postgresql://u@127.0.0.1/db")
    assert settings.db_statement_timeout_seconds == 30
    assert settings.db_idle_in_transaction_timeout_seconds == 60
    with pytest.raises(ConfigurationError, match="DB_STATEMENT_TIMEOUT_SECONDS"):
        make_settings("postgresql://u@127.0.0.1/db", db_statement_timeout_seconds=0)


async def test_a_statement_past_the_limit_is_cancelled_by_the_server_and_answered_503(make_client) -> None:
    client = await make_client(routers=[_routes(Probe())], db_statement_timeout_seconds=0.2)
    before = await scrape(client)
    started = time.monotonic()
    resp = await client.get("/_test/slow-statement")
    elapsed = time.monotonic() - started
    assert resp.status_code == 503, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["type"].endswith("/problems/db-timeout")
    assert resp.headers["retry-after"] == "1"
    assert "pg_sleep" not in resp.text  # no SQL text in the answer
    assert elapsed < 3, elapsed  # the server cancelled at 0.2 s, not the client at 5 s or 30 s
    # the connection went back to the pool usable, and the counter moved
    assert (await client.get("/_test/quick")).json() == {"one": 1}
    assert grew(before, await scrape(client), "db_statement_timeouts_total") == 1


async def test_a_transaction_left_idle_is_ended_by_the_server_and_its_locks_freed(
    make_client, database_url: str
) -> None:
    probe = Probe()
    client = await make_client(routers=[_routes(probe)], db_idle_in_transaction_timeout_seconds=1.0)
    request = asyncio.create_task(client.get("/_test/idle-in-transaction"))
    other = await asyncpg.connect(dbsupport.asyncpg_dsn(database_url))
    try:
        await asyncio.wait_for(probe.locked.wait(), 10)
        # held by the request's open transaction (checked well inside the 1 s idle limit)
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY) is False
        # PostgreSQL ends the idle session by itself: wait for that (bounded), nothing signals it
        deadline = time.monotonic() + 10
        while await other.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", probe.pid):
            assert time.monotonic() < deadline, "the idle-in-transaction session was not ended"
            await asyncio.sleep(0.05)
        # its advisory lock went with it: another session takes it while the request is still waiting
        assert not request.done()
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY) is True
        await other.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    finally:
        probe.release.set()
        await other.close()
    resp = await asyncio.wait_for(request, 10)
    # the request's transaction was rolled back by the server: a clear, retryable 503, not a 500
    assert resp.status_code == 503, resp.text
    assert resp.json()["type"].endswith("/problems/db-unavailable")
    assert (await client.get("/_test/quick")).json() == {"one": 1}
