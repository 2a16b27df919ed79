"""Alembic: upgrade head -> downgrade base -> upgrade head on a fresh database; models match migrations."""

from __future__ import annotations

import asyncio

import asyncpg
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from app.models import metadata
from tests.support import db as dbsupport


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(dbsupport.asyncpg_dsn(url))
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {r["tablename"] for r in rows}


async def test_upgrade_downgrade_upgrade_round_trip() -> None:
    name, url = await dbsupport.create_database("tradedesk_migr")
    try:
        await asyncio.to_thread(dbsupport.migrate, url)
        expected = {t.name for t in metadata.sorted_tables} | {"alembic_version"}
        assert expected <= await _tables(url)
        await asyncio.to_thread(dbsupport.downgrade, url, "base")
        assert await _tables(url) <= {"alembic_version"}
        await asyncio.to_thread(dbsupport.migrate, url)
        assert expected <= await _tables(url)

        engine = create_async_engine(url)
        async with engine.connect() as conn:
            diff = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), metadata))
        await engine.dispose()
        assert diff == [], f"models and migrations disagree: {diff}"
    finally:
        await dbsupport.drop_database(name)
