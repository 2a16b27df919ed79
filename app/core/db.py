"""One async engine per process, a bounded pool, and the session dependency that owns the transaction.

* Pool size, overflow and checkout timeout come from settings; a checkout that times out raises
  ``sqlalchemy.exc.TimeoutError``, which the error handlers answer with 503 + Retry-After.
* ``get_session`` commits when the route (and its dependencies) finish without error and rolls
  back on any exception; services never commit.
* Pool gauges are updated from pool events, so they are correct in multi-worker mode too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import sqlalchemy.exc
from fastapi import Request
from sqlalchemy import MetaData, event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

from app.core.config import Settings
from app.core.observability import DB_POOL_CHECKED_OUT, DB_POOL_OVERFLOW, DB_POOL_SIZE

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def create_engine(settings: Settings, **overrides: Any) -> AsyncEngine:
    """The process's engine: bounded pool, pre-ping, connect and statement timeouts."""
    options: dict[str, Any] = {
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_max_overflow,
        "pool_timeout": settings.db_pool_timeout,
        # Liveness is checked by _validate_idle_connections instead of pool_pre_ping: the asyncpg
        # dialect's ping costs three round trips (BEGIN; SELECT; ROLLBACK) on *every* checkout.
        "pool_pre_ping": False,
        # Bound values never appear in exception messages, so no password hash, email or token can
        # reach a log line through a database error.
        "hide_parameters": True,
        "pool_recycle": 1800,
        "connect_args": {
            "timeout": 5,  # TCP connect + auth, seconds
            "command_timeout": 30,  # no query may hang a request for ever
            "server_settings": {"application_name": "tradedesk"},
        },
    }
    options.update(overrides)
    engine = create_async_engine(settings.sqlalchemy_database_url, **options)
    _instrument_pool(engine, settings)
    if not options["pool_pre_ping"]:
        _validate_idle_connections(engine)
    return engine


# A connection returned to the pool less than this long ago is handed out without a check
# (HikariCP's "alive bypass window"); an older one is pinged first and replaced if it is dead.
VALIDATE_IF_IDLE_SECONDS = 1.0


def _validate_idle_connections(engine: AsyncEngine) -> None:
    """Check connections that sat idle before handing them out; under load nothing is added.

    A dead connection found here is discarded and the pool connects again (DisconnectionError);
    one that dies while busy raises a disconnect error, which invalidates the whole pool, so the
    requests that follow get fresh connections.
    """
    pool = engine.sync_engine.pool

    def checkin(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is not None and time.monotonic() - idle_since < VALIDATE_IF_IDLE_SECONDS:
            return
        try:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("SELECT 1")
            finally:
                cursor.close()
            dbapi_connection.rollback()
        except Exception as exc:
            raise sqlalchemy.exc.DisconnectionError("idle connection failed its liveness check") from exc

    event.listen(pool, "checkin", checkin)
    event.listen(pool, "checkout", checkout)


def _instrument_pool(engine: AsyncEngine, settings: Settings) -> None:
    pool = engine.sync_engine.pool
    DB_POOL_SIZE.set(settings.db_pool_size)

    def _update(*_: Any) -> None:
        DB_POOL_CHECKED_OUT.set(pool.checkedout())  # type: ignore[attr-defined]
        DB_POOL_OVERFLOW.set(pool.overflow())  # type: ignore[attr-defined]

    event.listen(pool, "checkout", _update)
    event.listen(pool, "checkin", _update)
    event.listen(pool, "close", _update)


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """Request-scoped session: commit on success, roll back on any exception (then re-raise)."""
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    async with sessionmaker() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        else:
            await session.commit()


async def ping(engine: AsyncEngine, timeout: float) -> None:  # noqa: ASYNC109 - the bound is the point
    """One round trip to the database, bounded by ``timeout`` seconds (pool wait included)."""
    async with asyncio.timeout(timeout):
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
