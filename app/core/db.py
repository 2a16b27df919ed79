"""One async engine per process, a bounded pool, and the session dependency that owns the transaction.

* Pool size, overflow and checkout timeout come from settings; a checkout that times out raises
  ``sqlalchemy.exc.TimeoutError``, which the error handlers answer with 503 + Retry-After.
* ``get_session`` commits when the route (and its dependencies) finish without error and rolls
  back on any exception; services never commit.
* Pool gauges are updated from pool events, so they are correct in multi-worker mode too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from sqlalchemy import MetaData, event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Session

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
        "pool_pre_ping": True,
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
    return engine


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


def after_commit(session: AsyncSession, callback: Callable[[], None]) -> None:
    """Run ``callback`` once the current transaction has committed (never if it rolls back).

    For side effects that must only happen for durable changes: metrics, log lines, wake-ups.
    """
    session.sync_session.info.setdefault("after_commit", []).append(callback)


def on_rollback(session: AsyncSession, callback: Callable[[], None]) -> None:
    """Run ``callback`` if the current transaction rolls back instead (an error in the request, or a
    failed commit): the counterpart of ``after_commit`` for failure metrics and log lines."""
    session.sync_session.info.setdefault("on_rollback", []).append(callback)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    session.info.pop("on_rollback", None)
    for callback in session.info.pop("after_commit", []):
        callback()


@event.listens_for(Session, "after_rollback")
def _run_on_rollback(session: Session) -> None:
    session.info.pop("after_commit", None)
    for callback in session.info.pop("on_rollback", []):
        callback()


def _commit_failed(session: AsyncSession) -> None:
    # A COMMIT that fails (e.g. a deferred constraint) ends the transaction without a rollback event.
    _run_on_rollback(session.sync_session)


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
            try:
                await session.commit()
            except BaseException:
                _commit_failed(session)
                raise


async def ping(engine: AsyncEngine, timeout: float) -> None:
    """One round trip to the database, bounded by ``timeout`` seconds (pool wait included)."""
    async with asyncio.timeout(timeout):
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
