"""Shared fixtures: a real PostgreSQL database per run (migrated once), real Redis when reachable,
and apps built by the real factory, served in-process over ASGI with the full middleware stack."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from asgi_lifespan import LifespanManager
from fastapi import APIRouter, FastAPI

from app.main import create_app
from app.models import metadata
from tests.support import db as dbsupport
from tests.support.settings import make_settings

ClientFactory = Callable[..., Awaitable[httpx.AsyncClient]]


def _test_redis_url() -> str | None:
    if os.environ.get("TEST_REDIS_URL"):
        return os.environ["TEST_REDIS_URL"]  # used as given (pick a database number no one else uses)
    base = os.environ.get("REDIS_URL")
    if not base:
        return None
    parts = urlsplit(base)
    # A dedicated logical database, flushed between tests, so a developer's data is never touched;
    # one per xdist worker (gw0 -> 15, gw1 -> 14, ...) so parallel workers never flush each other.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = 15 - int(worker[2:]) if worker[2:].isdigit() else 15
    return urlunsplit((parts.scheme, parts.netloc, f"/{max(index, 1)}", "", ""))


@pytest.fixture(scope="session")
async def database() -> AsyncIterator[tuple[str, str]]:
    name, url = await dbsupport.create_database()
    await asyncio.to_thread(dbsupport.migrate, url)
    yield name, url
    await dbsupport.drop_database(name)


@pytest.fixture(scope="session")
def database_url(database: tuple[str, str]) -> str:
    return database[1]


@pytest.fixture(scope="session")
async def redis_url() -> str | None:
    url = _test_redis_url()
    if url is None:
        return None
    client = aioredis.from_url(url, socket_connect_timeout=1)
    try:
        await client.ping()
    except Exception:
        if os.environ.get("CI"):
            raise RuntimeError(
                f"REDIS_URL is set but Redis is not reachable in CI: {urlsplit(url).netloc}"
            ) from None
        return None
    finally:
        await client.aclose()
    return url


@pytest.fixture
def require_redis(redis_url: str | None) -> str:
    if redis_url is None:
        pytest.skip("needs Redis: set REDIS_URL (CI does)")
    return redis_url


def _empty_tables_sql() -> str:
    """Every table emptied, children first, and every identity restarted, in one transaction: what
    ``TRUNCATE … RESTART IDENTITY CASCADE`` does, at about a fifteenth of its cost on these small tables
    (TRUNCATE makes new files for each of them: ~80 ms a test, against ~5 ms)."""
    tables = list(reversed(metadata.sorted_tables))
    deletes = [f'DELETE FROM "{t.name}";' for t in tables]
    restarts = [
        f"SELECT setval(pg_get_serial_sequence('\"{t.name}\"', '{c.name}'), 1, false);"
        for t in tables
        for c in t.columns
        if c.identity is not None
    ]
    return "\n".join(["BEGIN;", *deletes, *restarts, "COMMIT;"])


_EMPTY_TABLES = _empty_tables_sql()


@pytest.fixture(autouse=True)
async def _clean_state(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Every test starts from empty tables and an empty Redis test database."""
    yield
    if "database" in request.fixturenames:
        _, url = request.getfixturevalue("database")
        conn = await asyncpg.connect(dbsupport.asyncpg_dsn(url))
        try:
            await conn.execute(_EMPTY_TABLES)
        finally:
            await conn.close()
    url = request.getfixturevalue("redis_url") if "redis_url" in request.fixturenames else None
    if url:  # the test could use Redis (None: not configured, or skipped as unreachable outside CI)
        client = aioredis.from_url(url, socket_connect_timeout=1)
        try:
            await client.flushdb()
        except Exception as exc:
            # Loudly: a test database left dirty would hand this test's keys (limits, breaker state,
            # cached quotes) to the next test and make its result depend on the order.
            where = urlsplit(url)
            raise RuntimeError(
                f"could not flush the Redis test database {where.hostname}:{where.port}{where.path} "
                f"after the test: {exc!r}"
            ) from exc
        finally:
            await client.aclose()


@pytest.fixture
async def make_client(database_url: str, redis_url: str | None) -> AsyncIterator[ClientFactory]:
    """Build an app with settings overrides, start its lifespan and return an httpx client on it."""
    async with AsyncExitStack() as stack:

        async def factory(
            *,
            routers: Iterable[APIRouter] = (),
            client_ip: str = "127.0.0.1",
            use_redis: bool = False,
            app_hook: Callable[[FastAPI], None] | None = None,
            **overrides: Any,
        ) -> httpx.AsyncClient:
            if use_redis and redis_url is None:
                pytest.skip("needs Redis: set REDIS_URL (CI does)")
            overrides.setdefault("database_url", database_url)
            overrides.setdefault("redis_url", redis_url if use_redis else None)
            settings = make_settings(**overrides)
            app = create_app(settings)
            for router in routers:
                app.include_router(router)
            if app_hook:
                app_hook(app)
            manager = await stack.enter_async_context(
                LifespanManager(app, startup_timeout=30, shutdown_timeout=30)
            )
            transport = httpx.ASGITransport(app=manager.app, client=(client_ip, 51234))
            client = await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url="https://testserver", timeout=30)
            )
            client.app = app  # type: ignore[attr-defined]
            return client

        yield factory


@pytest.fixture
async def client(make_client: ClientFactory) -> httpx.AsyncClient:
    return await make_client()
