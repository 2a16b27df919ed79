"""DB_STATEMENT_CACHE_SIZE reaches the engine's connections (issue 15, running behind PgBouncer): with the
default both prepared-statement caches keep a statement prepared on the connection under asyncpg's
per-connection numbering; with 0 neither keeps anything, and every statement SQLAlchemy prepares has a
unique name, which a pooler in transaction mode cannot confuse with another client's.

Read from PostgreSQL itself: ``pg_prepared_statements`` lists the protocol-level statements of the
session that asks, so what the server holds for the connection is what the test sees."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import ConfigurationError
from app.core.db import Database, create_engine
from tests.support.settings import make_settings

# A statement that finds itself: its own text contains the marker it looks for.
OWN = text("SELECT name FROM pg_prepared_statements WHERE statement LIKE '%statement-cache-probe%'")
DRIVER_PROBE = "SELECT 1 AS driver_cache_probe"  # run on asyncpg directly, as the pre-ping does
ASYNCPG_NAME = re.compile(r"__asyncpg_stmt_[0-9a-f]+__")
UNIQUE_NAME = re.compile(r"tradedesk_[0-9a-f]{32}")


@pytest.fixture
async def make_database(database_url: str) -> AsyncIterator[Any]:
    made: list[Database] = []

    def factory(**overrides: Any) -> Database:
        made.append(
            Database(create_engine(make_settings(database_url, **overrides), pool_size=1, max_overflow=0))
        )
        return made[-1]

    yield factory
    for db in made:
        await db.dispose()


async def own_names(session: AsyncSession) -> list[str]:
    return list((await session.execute(OWN)).scalars())


async def driver_statements(session: AsyncSession) -> int:
    """Run DRIVER_PROBE on the session's asyncpg connection, then count what the server keeps of it."""
    raw = await (await session.connection()).get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    assert await driver.fetchval(DRIVER_PROBE) == 1
    return int(
        await driver.fetchval(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement = $1", DRIVER_PROBE
        )
    )


async def test_by_default_statements_stay_prepared_and_are_reused(make_database) -> None:
    db = make_database()
    async with db.own_transaction() as session:
        first, second = await own_names(session), await own_names(session)
        assert len(first) == 1 and ASYNCPG_NAME.fullmatch(first[0]), first
        assert second == first  # prepared once, found in the cache the second time
        assert await driver_statements(session) == 1  # asyncpg's own cache keeps its statement too


async def test_zero_turns_both_caches_off_and_names_statements_uniquely(make_database) -> None:
    db = make_database(db_statement_cache_size=0)
    async with db.own_transaction() as session:
        first, second = await own_names(session), await own_names(session)
        for names in (first, second):
            assert names and all(UNIQUE_NAME.fullmatch(n) for n in names), names
        # Prepared again for the second run, under a new name: nothing was taken from a cache.
        assert set(second) - set(first), (first, second)
        assert await driver_statements(session) == 0  # asyncpg used its unnamed statement


async def test_the_setting_comes_from_the_environment_with_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    assert make_settings("postgresql://u@127.0.0.1/db").db_statement_cache_size == 100
    monkeypatch.setenv("DB_STATEMENT_CACHE_SIZE", "0")
    assert make_settings("postgresql://u@127.0.0.1/db").db_statement_cache_size == 0
    monkeypatch.setenv("DB_STATEMENT_CACHE_SIZE", "-1")
    with pytest.raises(ConfigurationError, match="DB_STATEMENT_CACHE_SIZE"):
        make_settings("postgresql://u@127.0.0.1/db")


@pytest.mark.parametrize(("size", "in_a_block"), [(100, False), (0, True)])
async def test_with_the_caches_off_single_statements_run_inside_begin_commit(
    database_url: str, size: int, in_a_block: bool
) -> None:
    """Autocommitted, the adapter's prepare and execute of a statement are two exchanges, which a pooler in
    transaction mode may send to two server connections; with the caches off (the setting for such a
    pooler) single-statement units run in BEGIN/COMMIT, where it keeps the client on one. Whether the
    statement ran inside a transaction block is the server's word (the status of its ReadyForQuery)."""
    db = Database.for_settings(
        make_settings(database_url, db_statement_cache_size=size), pool_size=1, max_overflow=0
    )
    try:
        assert db.autocommit is not in_a_block
        async with db.own_transaction(single_statement=True) as session:
            assert (await session.execute(text("SELECT 1"))).scalar_one() == 1
            raw = await (await session.connection()).get_raw_connection()
            assert raw.driver_connection is not None
            assert raw.driver_connection.is_in_transaction() is in_a_block
    finally:
        await db.dispose()


async def test_the_app_builds_its_database_from_the_setting(make_client) -> None:
    for size, autocommit in ((100, True), (0, False)):
        client = await make_client(db_statement_cache_size=size)
        assert client.app.state.database.autocommit is autocommit  # type: ignore[attr-defined]
