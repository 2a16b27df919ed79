"""``Database.run_single``: one plain statement through the driver, on the engine's own pool (issue 15: the
webhook's hot path). It must behave as ``own_transaction(single_statement=True)`` does in everything but
its cost: committed as it runs, the pool's limits and gauges, the server-side timeouts, the same SQLAlchemy
exceptions (so the same problem+json answers), and no broken connection handed back to the pool."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import pytest
import sqlalchemy.exc
from fastapi import APIRouter
from sqlalchemy import bindparam, text
from sqlalchemy.types import Integer

from app.core.db import Database, create_engine
from app.core.deps import DatabaseDep
from app.core.errors import sqlstate_of
from tests.support import db as dbsupport
from tests.support.metrics import grew, scrape
from tests.support.settings import make_settings

_INSERT = text("INSERT INTO run_single_probe (id, note) VALUES (:id, :note) RETURNING id, note")
_SLEEP = text("SELECT pg_sleep(:seconds) AS slept")
_SUICIDE = text("SELECT pg_terminate_backend(pg_backend_pid())")
_PID = text("SELECT pg_backend_pid() AS pid")


@pytest.fixture
async def db(database_url: str):  # type: ignore[no-untyped-def]
    database = Database(
        create_engine(make_settings(database_url), pool_size=1, max_overflow=0, pool_timeout=0.5)
    )
    async with database.engine.begin() as conn:
        await conn.execute(
            text("CREATE TABLE IF NOT EXISTS run_single_probe (id uuid PRIMARY KEY, note text)")
        )
        await conn.execute(text("TRUNCATE run_single_probe"))
    try:
        yield database
    finally:
        await database.dispose()


def _checked_out(db: Database) -> int:
    return db.engine.sync_engine.pool.checkedout()  # type: ignore[attr-defined,no-any-return]


async def _pid(db: Database) -> int:
    """The backend pid of the connection the pool hands out now."""
    return int((await db.run_single(_PID, {}))[0]["pid"])


async def _assert_replaced(db: Database, pid: int) -> None:
    """The connection of ``pid`` did not go back to the pool: the slot is free at once (nothing waits for the
    statement behind it) and a new connection serves it."""
    assert _checked_out(db) == 0
    async with asyncio.timeout(5):
        assert await _pid(db) != pid


async def test_rows_by_name_committed_as_it_runs_and_the_connection_back_in_the_pool(
    db: Database, database_url: str
) -> None:
    row_id = uuid.uuid4()
    rows = await db.run_single(_INSERT, {"id": row_id, "note": "first"})
    assert [(r["id"], r["note"]) for r in rows] == [(row_id, "first")]
    assert _checked_out(db) == 0
    # committed: another connection sees it at once
    other = await asyncpg.connect(dbsupport.asyncpg_dsn(database_url))
    try:
        assert await other.fetchval("SELECT note FROM run_single_probe WHERE id = $1", row_id) == "first"
    finally:
        await other.close()
    assert await db.run_single(text("SELECT 1 AS one WHERE false"), {}) == []


async def test_a_constraint_violation_is_sqlalchemys_integrity_error_and_the_connection_stays_usable(
    db: Database,
) -> None:
    row_id = uuid.uuid4()
    await db.run_single(_INSERT, {"id": row_id, "note": "first"})
    pid = await _pid(db)
    with pytest.raises(sqlalchemy.exc.IntegrityError) as caught:
        await db.run_single(_INSERT, {"id": row_id, "note": "again"})
    assert sqlstate_of(caught.value) == "23505"
    assert not caught.value.connection_invalidated
    assert str(row_id) not in str(caught.value)  # bound values never reach a message
    assert _checked_out(db) == 0
    assert await _pid(db) == pid  # the same pooled connection, not replaced


async def test_a_connection_lost_mid_statement_is_invalidated_not_pooled(db: Database) -> None:
    pid = await _pid(db)
    with pytest.raises(sqlalchemy.exc.DBAPIError) as caught:
        await db.run_single(_SUICIDE, {})  # the server ends this very connection while it runs
    assert caught.value.connection_invalidated
    await _assert_replaced(db, pid)


async def test_a_cancelled_statement_does_not_return_its_connection_to_the_pool(
    db: Database, database_url: str
) -> None:
    pid = await _pid(db)
    task = asyncio.create_task(db.run_single(_SLEEP, {"seconds": 30}))
    other = await asyncpg.connect(dbsupport.asyncpg_dsn(database_url))
    try:
        deadline = time.monotonic() + 10  # wait until the statement is running on the server
        while not await other.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND query LIKE '%pg_sleep%'", pid
        ):
            assert time.monotonic() < deadline, "the statement never started"
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _assert_replaced(db, pid)  # at once, not after the 30 s sleep
    finally:
        await other.close()


async def test_the_drivers_own_timeout_is_raised_as_is_and_its_connection_dropped(database_url: str) -> None:
    # asyncpg's command_timeout is the backstop behind the server's statement_timeout (app/core/db.py)
    db = Database(
        create_engine(
            make_settings(database_url), pool_size=1, max_overflow=0, connect_args={"command_timeout": 0.2}
        )
    )
    try:
        pid = await _pid(db)
        with pytest.raises(TimeoutError):
            await db.run_single(_SLEEP, {"seconds": 5})
        await _assert_replaced(db, pid)
    finally:
        await db.dispose()


async def test_the_pool_bound_holds_a_full_pool_is_sqlalchemys_timeout(db: Database) -> None:
    async with db.engine.connect() as held:  # the pool's only connection
        await held.execute(text("SELECT 1"))
        with pytest.raises(sqlalchemy.exc.TimeoutError):
            await db.run_single(_PID, {})
    assert await _pid(db)


async def test_typed_binds_are_refused_before_anything_runs(db: Database) -> None:
    typed = text("SELECT :n AS n").bindparams(bindparam("n", type_=Integer))
    with pytest.raises(TypeError, match="untyped binds only; typed: n"):
        await db.run_single(typed, {"n": 1})
    assert _checked_out(db) == 0


async def test_behind_a_transaction_pooler_it_runs_in_a_session_with_the_same_answer(
    database_url: str,
) -> None:
    db = Database(create_engine(make_settings(database_url)), autocommit=False)
    try:
        rows = await db.run_single(
            text("SELECT current_setting('transaction_isolation') AS iso, 2 AS two"), {}
        )
        assert [dict(r) for r in rows] == [{"iso": "read committed", "two": 2}]
        in_block = await db.run_single(text("SELECT now() = statement_timestamp() AS same"), {})
        assert in_block[0]["same"] in (True, False)  # ran; BEGIN/COMMIT around it (test_db_statement_cache)
    finally:
        await db.dispose()


def _routes() -> APIRouter:
    router = APIRouter()

    @router.get("/_test/run-single-sleep")
    async def sleep(database: DatabaseDep) -> dict[str, bool]:
        await database.run_single(_SLEEP, {"seconds": 5})
        return {"finished": True}

    @router.get("/_test/run-single-quick")
    async def quick(database: DatabaseDep) -> dict[str, int]:
        return {"one": (await database.run_single(text("SELECT 1 AS one"), {}))[0]["one"]}

    return router


async def test_over_http_a_statement_past_the_limit_is_the_same_503_db_timeout(make_client) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(routers=[_routes()], db_statement_timeout_seconds=0.2)
    before = await scrape(client)
    resp = await client.get("/_test/run-single-sleep")
    assert resp.status_code == 503, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["type"].endswith("/problems/db-timeout")
    assert resp.headers["retry-after"] == "1"
    assert "pg_sleep" not in resp.text
    assert (await client.get("/_test/run-single-quick")).json() == {"one": 1}
    assert grew(before, await scrape(client), "db_statement_timeouts_total") == 1
