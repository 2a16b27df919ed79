"""One async engine per process, a bounded pool, and the two ways a unit of work commits.

There is exactly one transaction idiom, in two forms:

* **Request work** goes through ``get_session`` (``SessionDep``): the session commits when the route
  and its dependencies finish without error — before the response is sent — and rolls back on any
  exception. Services and repositories never commit.
* **Work that must commit on its own** (an event recorded even if the request later fails, the
  phases of an OAuth link or an order, a CLI batch) goes through ``Database.own_transaction()``:
  a fresh session whose transaction commits when the block exits cleanly and rolls back otherwise.
  With ``single_statement=True`` the block runs one statement that PostgreSQL commits by itself
  (autocommit: one round trip instead of BEGIN/statement/COMMIT) — for writes whose whole effect fits
  in one atomic statement. Nothing else opens a sessionmaker or calls ``begin()``.
* **One plain-SQL statement on a hot path** (a Stripe delivery's claim, the profile read of
  ``GET /v1/auth/me``, the caller-exists check of the order routes) can skip the ORM altogether:
  ``await database.run_single(STATEMENT, params)`` runs a ``text()`` statement on a pooled connection
  through the driver itself, committed by PostgreSQL as it runs. Same pool, same checkout (pre-ping, gauges, pool timeout → 503), same server-side timeouts and
  the same SQLAlchemy exceptions, so the error handlers answer it as they answer a session's; about a
  third of the CPU of ``own_transaction(single_statement=True)`` (the Session and Connection machinery
  around one round trip: docs/performance.md). Behind a transaction-mode pooler (``autocommit`` off) it
  runs through a session in BEGIN/COMMIT instead, for the reason below.

Pool size, overflow and checkout timeout come from settings; a checkout that times out raises
``sqlalchemy.exc.TimeoutError``, which the error handlers answer with 503 + Retry-After. Pool gauges
are updated from pool events, so they are correct in multi-worker mode too.

The prepared-statement caches (asyncpg's own and SQLAlchemy's asyncpg adapter's) hold
``DB_STATEMENT_CACHE_SIZE`` statements per connection; with 0 both are off and every statement SQLAlchemy
prepares gets a unique name, so that a connection pooler in transaction mode (PgBouncer without
``max_prepared_statements``), which hands each transaction whichever server connection is free, never meets
a statement prepared on another client's connection under the same name (docs/scaling.md).

Every pooled connection also carries two server-side limits, from settings, so that a stuck unit of
work cannot hold a connection or its locks for ever (the pool-exhaustion emergency of the failure
analysis): ``statement_timeout`` (``DB_STATEMENT_TIMEOUT_SECONDS``: PostgreSQL cancels the statement,
SQLSTATE 57014, answered 503 ``db-timeout``) and ``idle_in_transaction_session_timeout``
(``DB_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS``: PostgreSQL ends a session that sits inside an open
transaction without sending anything, which rolls it back and frees its locks).
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

import sqlalchemy.exc
from fastapi import Request
from sqlalchemy import CursorResult, MetaData, Result, TextClause, event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import NullType
from sqlalchemy.util import await_, greenlet_spawn

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


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def create_engine(settings: Settings, **overrides: Any) -> AsyncEngine:
    """The process's engine: bounded pool, pre-ping, connect and statement timeouts (server-side)."""
    options: dict[str, Any] = {
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_max_overflow,
        "pool_timeout": settings.db_pool_timeout,
        # Pre-ping is done by _pre_ping (one bounded round trip) instead of SQLAlchemy's, which on
        # asyncpg costs three round trips (BEGIN; SELECT; ROLLBACK) on every checkout.
        "pool_pre_ping": False,
        # Bound values never appear in exception messages, so no password hash, email or token can
        # reach a log line through a database error.
        "hide_parameters": True,
        "pool_recycle": 1800,
        "connect_args": {
            "timeout": 5,  # TCP connect + auth, seconds
            # The server cancels first (statement_timeout, a clean SQLSTATE 57014 and the locks
            # released); the client-side limit is the backstop for a server that stops answering.
            "command_timeout": settings.db_statement_timeout_seconds + 5,
            "server_settings": {
                "application_name": "tradedesk",
                "statement_timeout": str(_ms(settings.db_statement_timeout_seconds)),
                "idle_in_transaction_session_timeout": str(
                    _ms(settings.db_idle_in_transaction_timeout_seconds)
                ),
            },
            **_statement_cache_args(settings.db_statement_cache_size),
        },
    }
    options.update(overrides)
    engine = create_async_engine(settings.sqlalchemy_database_url, **options)
    _instrument_pool(engine, settings)
    if not options["pool_pre_ping"]:
        _pre_ping(engine)
    return engine


def _unique_statement_name() -> str:
    return f"tradedesk_{uuid.uuid4().hex}"


def _statement_cache_args(size: int) -> dict[str, Any]:
    """asyncpg's ``statement_cache_size`` (its own statements: the pre-ping, type introspection) and the
    adapter's ``prepared_statement_cache_size`` (every statement SQLAlchemy runs), both ``size``; with 0,
    unique statement names (SQLAlchemy's recipe for PgBouncer: asyncpg would number them per connection,
    ``__asyncpg_stmt_1__`` on every one)."""
    args: dict[str, Any] = {"statement_cache_size": size, "prepared_statement_cache_size": size}
    if size == 0:
        args["prepared_statement_name_func"] = _unique_statement_name
    return args


def _instrument_pool(engine: AsyncEngine, settings: Settings) -> None:
    pool = engine.sync_engine.pool
    DB_POOL_SIZE.set(settings.db_pool_size)

    def _update(*_: Any) -> None:
        # The engine's pool is a QueuePool (bounded): these exist there, not on the Pool base class.
        DB_POOL_CHECKED_OUT.set(pool.checkedout())  # type: ignore[attr-defined]
        DB_POOL_OVERFLOW.set(pool.overflow())  # type: ignore[attr-defined]

    event.listen(pool, "checkout", _update)
    event.listen(pool, "checkin", _update)
    event.listen(pool, "close", _update)


PING_TIMEOUT_SECONDS = 1.0
# A connection back in the pool for less than this is not pinged again: it just answered.
PING_AFTER_IDLE_SECONDS = 1.0


def _pre_ping(engine: AsyncEngine) -> None:
    """Pre-ping a checkout with ONE bounded round trip (``SELECT 1``, 1 s timeout), unless the
    connection was checked in less than ``PING_AFTER_IDLE_SECONDS`` ago.

    SQLAlchemy's own ``pool_pre_ping`` on asyncpg costs three round trips (BEGIN; SELECT; ROLLBACK)
    and is bounded only by the statement timeout. A dead or silent connection found here is
    discarded and the pool connects again (DisconnectionError); one that dies while busy raises a
    disconnect error, answered 503, and invalidates the pool so the requests after it reconnect.

    Why not every checkout: under load a request checks a connection out several times (an order
    does five times), each a moment after the previous user returned it, and a ping per checkout
    was a third of an order's round trips. A connection that finished a statement within the last
    second, and whose socket the driver has not seen closed (``is_closed()``: a restarting server
    closes its connections, and asyncpg notices without a round trip), is as good as a ping's answer;
    one idle longer (where idle timeouts, silent partitions and dropped NAT entries bite) is still
    pinged. What the skip gives up: a connection that died silently within that second is found by
    the request's own statement (the 503 above) instead of by the ping.

    A failed ping of an older connection replaces it (SQLAlchemy connects again and pings the new one); a
    failed ping of a connection just made for this checkout ends the checkout as a lost connection (503):
    behind PgBouncer a ping waits in its queue when every server connection is busy, and a new client
    connection would wait there just the same.
    """

    def checkin(dbapi_connection: Any, record: Any) -> None:
        record.info["checked_in_at"] = time.monotonic()

    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        recent = time.monotonic() - record.info.get("checked_in_at", -math.inf) < PING_AFTER_IDLE_SECONDS
        if recent and not proxy.driver_connection.is_closed():  # is_closed: local state, no I/O
            return
        try:
            await_(proxy.driver_connection.fetchval("SELECT 1", timeout=PING_TIMEOUT_SECONDS))
        except Exception as exc:
            if "checked_in_at" not in record.info:
                # A connection made for this checkout (never checked in) that does not answer: another
                # one would not either (the server, or a pooler's queue in front of it, is not answering).
                # Answered like a connection lost under the request (503 db-unavailable), not by
                # SQLAlchemy's "This connection is closed" once its retries are spent.
                raise sqlalchemy.exc.OperationalError(
                    "SELECT 1", None, exc, connection_invalidated=True
                ) from exc
            raise sqlalchemy.exc.DisconnectionError("pooled connection failed its pre-ping") from exc

    event.listen(engine.sync_engine.pool, "checkout", checkout)
    event.listen(engine.sync_engine.pool, "checkin", checkin)


def rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE/DELETE touched. Its result is a CursorResult; ``Session.execute`` is typed as Result."""
    return cast(CursorResult[Any], result).rowcount or 0


class Database:
    """The process's engine and its session factories; built once in the lifespan (or by a CLI command).

    ``autocommit=False`` runs ``single_statement`` units inside BEGIN/COMMIT as well. That is for a pooler in
    transaction mode that does not track prepared statements (``DB_STATEMENT_CACHE_SIZE=0``): outside a
    transaction, the SQLAlchemy adapter's prepare of a statement and its execution are two exchanges, and
    such a pooler may send them to two different server connections ("prepared statement … does not
    exist"); inside one, the pooler keeps the client on one server connection until COMMIT."""

    def __init__(self, engine: AsyncEngine, *, autocommit: bool = True) -> None:
        self.engine = engine
        self.autocommit = autocommit
        self._compiled_statements: dict[TextClause, tuple[str, tuple[str, ...]]] = {}
        self._sessions = async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
        self._autocommit = (
            async_sessionmaker(
                engine.execution_options(isolation_level="AUTOCOMMIT"),
                expire_on_commit=False,
                autoflush=False,
            )
            if autocommit
            else self._sessions
        )

    @classmethod
    def for_settings(cls, settings: Settings, **engine_overrides: Any) -> Database:
        """The engine from ``settings`` (``create_engine``), with single statements autocommitted unless the
        statement caches are off (``DB_STATEMENT_CACHE_SIZE=0``: behind a transaction-mode pooler)."""
        return cls(
            create_engine(settings, **engine_overrides), autocommit=settings.db_statement_cache_size > 0
        )

    def request_session(self) -> AsyncSession:
        """A session for ``get_session``, which owns its commit; use nowhere else."""
        return self._sessions()

    @asynccontextmanager
    async def own_transaction(self, *, single_statement: bool = False) -> AsyncIterator[AsyncSession]:
        """A unit of work that commits on its own, apart from any request's session.

        Commits when the block exits without error, rolls back (and re-raises) otherwise. With
        ``single_statement`` the block must run exactly one statement, committed by PostgreSQL as it
        runs (autocommit): atomic on its own, one round trip (in BEGIN/COMMIT when ``autocommit`` is off).
        """
        factory = self._autocommit if single_statement else self._sessions
        async with factory() as session, session.begin():
            yield session

    async def run_single(
        self, statement: TextClause, params: Mapping[str, Any]
    ) -> Sequence[Mapping[Any, Any]]:
        """Run one plain-SQL ``text()`` statement, committed as it runs; its rows (by column name).

        The statement is compiled once (``$n`` placeholders) and executed through the driver on a connection
        checked out of the engine's pool, so the pool's limits, pre-ping and gauges, the connection's
        server-side timeouts and asyncpg's prepared-statement cache all apply. A driver error is raised as
        the ``sqlalchemy.exc.DBAPIError`` a session would raise (its ``orig`` the adapter's error, its
        cause asyncpg's, ``sqlstate`` included); a lost connection, a statement interrupted (the task
        cancelled) or an error that is not the driver's (asyncpg's own command timeout) invalidates the
        connection instead of returning it to the pool. Binds must be untyped
        (``text()`` with plain ``:name`` parameters): typed ones would need SQLAlchemy's bind processing.
        With ``autocommit`` off (behind a transaction-mode pooler) it runs in a session's BEGIN/COMMIT."""
        if not self.autocommit:
            async with self.own_transaction(single_statement=True) as session:
                return [row._mapping for row in await session.execute(statement, params)]
        sql, names = self._compiled(statement)
        args = [params[name] for name in names]
        connection = await self.engine.raw_connection()
        try:
            try:
                return await connection.driver_connection.fetch(sql, *args)  # type: ignore[union-attr,no-any-return]
            except Exception as error:
                raise self._translated(connection, sql, error) from error
            except BaseException:
                connection.invalidate()  # cancelled mid-statement: the protocol's state is unknown
                raise
        finally:
            # Back to the pool; in a greenlet, as SQLAlchemy checks in, since a checkin may close the connection
            # (overflow, an invalidated or disposed pool), which awaits the driver.
            await greenlet_spawn(connection.close)

    def _compiled(self, statement: TextClause) -> tuple[str, tuple[str, ...]]:
        compiled = self._compiled_statements.get(statement)
        if compiled is None:
            result = statement.compile(dialect=self.engine.dialect)
            typed = [name for name, bind in result.binds.items() if not isinstance(bind.type, NullType)]
            if typed:
                raise TypeError(f"run_single takes untyped binds only; typed: {', '.join(sorted(typed))}")
            compiled = (result.string, tuple(result.positiontup or ()))
            self._compiled_statements[statement] = compiled
        return compiled

    def _translated(self, connection: Any, sql: str, error: Exception) -> Exception:
        """The exception SQLAlchemy would raise for the driver's ``error`` (a ``DBAPIError`` for asyncpg's
        errors, ``error`` itself for any other), invalidating the connection if it is lost (or if the error is not
        the driver's: asyncpg's own timeout leaves a statement behind it)."""
        dialect = self.engine.dialect
        try:
            connection.dbapi_connection._handle_exception(error)  # raises the adapter's translation
        except dialect.loaded_dbapi.Error as translated:
            invalidated = dialect.is_disconnect(translated, connection.dbapi_connection, None)
            if invalidated:
                connection.invalidate(translated)
            return sqlalchemy.exc.DBAPIError.instance(
                sql,
                None,
                translated,
                dialect.loaded_dbapi.Error,
                hide_parameters=True,
                connection_invalidated=invalidated,
                dialect=dialect,
            )
        except Exception as untranslated:
            # Not one of the driver's errors (asyncpg's client-side command timeout): raised as it is, and the
            # connection, in an unknown state, dropped.
            connection.invalidate(untranslated)
            return untranslated
        return error  # unreachable: the adapter always raises

    async def ping(self, timeout: float) -> None:  # noqa: ASYNC109 - the bound is the point
        """One round trip to the database, bounded by ``timeout`` seconds (pool wait included)."""
        async with asyncio.timeout(timeout):
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """Request-scoped session: commit on success, roll back on any exception (then re-raise)."""
    database: Database = request.app.state.database
    async with database.request_session() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        else:
            await session.commit()
