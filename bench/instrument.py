"""The in-process round-trip diagnostics' counters (``bench_orders``, ``bench_alerts``): what one request costs
in SQL statements, transactions, pool checkouts and Redis commands, and where its time goes.

``instrument(app, counters, label=…, timed=…)`` hooks an app built by ``create_app`` after its lifespan
started: SQLAlchemy's engine and pool events (statements through a session or a connection, BEGIN/COMMIT,
checkouts with their pre-ping), ``Database.run_single`` (the driver path, which sends no cursor events),
the Redis client's commands and pipelines (the limiter's scripts go as pipelines), and the coroutine
methods named in ``timed``. Only for benchmarks: nothing here is imported by the app or the tests.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.bench_orders import PgWireCounter


class Counters:
    def __init__(self) -> None:
        self.statements: collections.Counter[str] = collections.Counter()
        self.statement_time: collections.Counter[str] = collections.Counter()
        self.checkouts = 0
        self.ping_time = 0.0
        self.begins: collections.Counter[str] = collections.Counter()
        self.commits: collections.Counter[str] = collections.Counter()
        self.rollbacks = 0
        self.redis: collections.Counter[str] = collections.Counter()
        self.timers: collections.Counter[str] = collections.Counter()

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


def labeller(labels: Iterable[tuple[str, str]]) -> Callable[[str], str]:
    """A statement's label: the first (needle, label) whose needle it contains, else its first 60 characters."""
    pairs = tuple(labels)

    def label(statement: str) -> str:
        for needle, name in pairs:
            if needle in statement:
                return name
        return " ".join(statement.split())[:60]

    return label


def instrument(
    app: Any,
    counters: Counters,
    *,
    label: Callable[[str], str],
    timed: Iterable[tuple[Any, str, str]] = (),
) -> None:
    """Count into ``counters`` what ``app`` sends to PostgreSQL and Redis; time each ``(object, method name,
    timer label)`` of ``timed``."""
    from sqlalchemy import event

    engine = app.state.database.engine.sync_engine
    pool = engine.pool
    starts: dict[int, float] = {}

    def kind(conn: Any) -> str:
        level = conn.get_execution_options().get("isolation_level")
        return "autocommit" if level == "AUTOCOMMIT" else "transaction"

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        conn.info["bench_t0"] = time.perf_counter()

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        name = label(statement)
        counters.statements[name] += 1
        counters.statement_time[name] += time.perf_counter() - conn.info.pop("bench_t0", time.perf_counter())

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        counters.begins[kind(conn)] += 1

    @event.listens_for(engine, "commit")
    def _commit(conn: Any) -> None:
        counters.commits[kind(conn)] += 1

    @event.listens_for(engine, "rollback")
    def _rollback(conn: Any) -> None:
        counters.rollbacks += 1

    def checkout_start(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        starts[id(dbapi_connection)] = time.perf_counter()

    def checkout_end(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        counters.checkouts += 1
        counters.ping_time += time.perf_counter() - starts.pop(id(dbapi_connection), time.perf_counter())

    event.listen(pool, "checkout", checkout_start, insert=True)  # before the app's pre-ping
    event.listen(pool, "checkout", checkout_end)  # after it

    # The driver path (Database.run_single) sends no cursor events: counted here, one autocommit unit each.
    database = app.state.database
    run_single = database.run_single

    async def counted_single(statement: Any, params: Any) -> Any:
        name = label(statement.text)
        t0 = time.perf_counter()
        try:
            return await run_single(statement, params)
        finally:
            counters.statements[name] += 1
            counters.statement_time[name] += time.perf_counter() - t0
            counters.begins["autocommit"] += 1

    database.run_single = counted_single

    redis = app.state.redis
    if redis is not None:
        original = redis.execute_command
        pipeline = redis.pipeline

        async def counted(*args: Any, **kwargs: Any) -> Any:
            counters.redis[str(args[0]).upper()] += 1
            return await original(*args, **kwargs)

        def counted_pipeline(*args: Any, **kwargs: Any) -> Any:
            # The limiter's scripts go as pipelines (ScriptPipeline): its commands are counted by name.
            pipe = pipeline(*args, **kwargs)
            execute = pipe.execute

            async def counted_execute(*a: Any, **kw: Any) -> Any:
                for command_args, _options in pipe.command_stack:
                    counters.redis[str(command_args[0]).upper()] += 1
                counters.redis["(pipelined round trips)"] += 1
                return await execute(*a, **kw)

            pipe.execute = counted_execute
            return pipe

        redis.execute_command = counted
        redis.pipeline = counted_pipeline

    for obj, name, timer in timed:
        inner = getattr(obj, name)

        def wrapped(inner: Any = inner, timer: str = timer) -> Any:
            async def call(*args: Any, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return await inner(*args, **kwargs)
                finally:
                    counters.timers[timer] += time.perf_counter() - t0

            return call

        setattr(obj, name, wrapped())


def per_request(counters: Counters, proxy: PgWireCounter | None, n: int, elapsed: float) -> dict[str, Any]:
    """The counters divided by ``n`` requests (times in ms), with the wire messages when proxied."""
    per: dict[str, Any] = {
        "statements": {k: v / n for k, v in sorted(counters.statements.items(), key=lambda kv: -kv[1])},
        "statement_ms": {k: v * 1000 / n for k, v in counters.statement_time.items()},
        "statements_total": sum(counters.statements.values()) / n,
        "pool_checkouts_pre_pings": counters.checkouts / n,
        "pre_ping_ms": counters.ping_time * 1000 / n,
        "begin": {k: v / n for k, v in counters.begins.items()},
        "commit": {k: v / n for k, v in counters.commits.items()},
        "rollback": counters.rollbacks / n,
        "redis_commands": {k: v / n for k, v in counters.redis.items()},
        "timers_ms": {k: v * 1000 / n for k, v in counters.timers.items()},
        "request_ms": elapsed * 1000 / n,
    }
    if proxy is not None:
        wire = {k: v / n for k, v in sorted(proxy.counts.items())}
        per["wire_messages"] = wire
        per["wire_round_trips"] = wire.get("S", 0) + wire.get("Q", 0)
    return per
