"""The one transaction idiom's second form, Database.own_transaction, on a real PostgreSQL; and the
shared pieces the lifespan builds once (no gc.freeze in test apps, one Redis pool, one URL normaliser)."""

from __future__ import annotations

import gc
import uuid

import pytest
from sqlalchemy import text

from app.core.config import normalize_database_url
from app.core.db import Database, create_engine
from tests.support.settings import make_settings

INSERT = text("INSERT INTO stripe_events (id, type, stripe_created_at) VALUES (:id, 'test', now())")
COUNT = text("SELECT count(*) FROM stripe_events WHERE id = :id")


class Boom(Exception):
    pass


@pytest.fixture
async def db(database_url: str):
    db = Database(create_engine(make_settings(database_url), pool_size=2, max_overflow=0))
    yield db
    await db.dispose()


async def _count(db: Database, event_id: str) -> int:
    async with db.own_transaction() as session:
        return (await session.execute(COUNT, {"id": event_id})).scalar_one()


async def test_own_transaction_commits_on_a_clean_exit(db: Database) -> None:
    event_id = f"evt_{uuid.uuid4().hex}"
    async with db.own_transaction() as session:
        await session.execute(INSERT, {"id": event_id})
    assert await _count(db, event_id) == 1


async def test_own_transaction_rolls_back_everything_on_an_error(db: Database) -> None:
    first, second = f"evt_{uuid.uuid4().hex}", f"evt_{uuid.uuid4().hex}"
    with pytest.raises(Boom):
        async with db.own_transaction() as session:
            await session.execute(INSERT, {"id": first})
            await session.execute(INSERT, {"id": second})
            raise Boom()
    assert await _count(db, first) == 0 and await _count(db, second) == 0


async def test_single_statement_commits_as_it_runs(db: Database) -> None:
    """Autocommit: the statement is committed by PostgreSQL itself — what makes it one round trip —
    so a failure after it does not undo it. Only for writes whose whole effect is that one statement."""
    event_id = f"evt_{uuid.uuid4().hex}"
    with pytest.raises(Boom):
        async with db.own_transaction(single_statement=True) as session:
            await session.execute(INSERT, {"id": event_id})
            raise Boom()
    assert await _count(db, event_id) == 1


async def test_a_test_app_does_not_freeze_the_garbage_collector(make_client) -> None:
    before = gc.get_freeze_count()
    client = await make_client()
    assert (await client.get("/healthz")).status_code == 200
    assert gc.get_freeze_count() == before  # frozen objects would stay for the rest of the test run


@pytest.mark.redis
async def test_limiter_breakers_and_cache_share_one_redis_pool(make_client) -> None:
    client = await make_client(use_redis=True)
    state = client.app.state  # type: ignore[attr-defined]
    limits_client = state.limiter.storage.bridge.storage  # the client limits' storage drives
    assert limits_client.connection_pool is state.redis.connection_pool
    assert state.market_data.cache.redis is state.redis


@pytest.mark.parametrize(
    ("given", "sqlalchemy", "libpq"),
    [
        ("postgres://u:p@h:5432/d", "postgresql+asyncpg://u:p@h:5432/d", "postgresql://u:p@h:5432/d"),
        ("postgresql://u@h/d", "postgresql+asyncpg://u@h/d", "postgresql://u@h/d"),
        (
            "postgresql+asyncpg://h/d?ssl=require",
            "postgresql+asyncpg://h/d?ssl=require",
            "postgresql://h/d?ssl=require",
        ),
    ],
)
def test_one_database_url_normaliser(given: str, sqlalchemy: str, libpq: str) -> None:
    assert normalize_database_url(given) == sqlalchemy
    assert normalize_database_url(given, driver=None) == libpq


@pytest.mark.parametrize("bad", ["mysql://h/d", "h/d", "postgresql+psycopg://h/d"])
def test_database_url_normaliser_refuses_other_schemes(bad: str) -> None:
    with pytest.raises(ValueError, match="PostgreSQL URL"):
        normalize_database_url(bad)
