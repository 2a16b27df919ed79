"""Application factory: lifespan (pool, limiter, clients, providers), middleware, error handlers, routers.

``uvicorn app.main:app`` works (the module builds ``app`` on first access, validating the
configuration first); tests call ``create_app(settings)`` with their own settings.

Everything shared is built once in the lifespan and kept on ``app.state``; routes never read it
there but through the ``Annotated`` dependencies of ``app.core.deps`` and each feature's ``deps.py``,
which tests swap with ``app.dependency_overrides``.
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from app import __version__
from app.alerts.dispatch import Dispatcher
from app.api import api_router
from app.backtests.service import BacktestRunner
from app.core.config import Settings, load_settings_or_exit
from app.core.crypto import TokenCipher
from app.core.db import Database
from app.core.errors import install_error_handlers
from app.core.errortracking import init_error_tracking
from app.core.http import Outbound
from app.core.idempotency import install_idempotency
from app.core.middleware import (
    BodyLimitMiddleware,
    CORSMiddleware,
    HeadAsGetMiddleware,
    RequestContextMiddleware,
)
from app.core.observability import configure_logging, mark_worker_stopped, prune_dead_workers
from app.core.openapi import install_openapi
from app.core.ratelimit import RateLimiter
from app.core.redisconn import close_redis, connect_redis
from app.core.security import PasswordHashing
from app.ops.docs import router as docs_router
from app.ops.readiness import ReadinessProbe
from app.ops.router import router as ops_router
from app.orders.service import OrderPolicy, broker_accounts
from app.providers.broker import build_broker
from app.providers.discord import build_discord
from app.providers.market_data import build_market_data
from app.providers.oauth import build_broker_oauth
from app.providers.stripe import build_webhook_verifier
from app.tools.mcp import McpServer
from app.tools.router import mcp_router
from app.tools.sandbox import Sandbox
from app.tools.service import LazySandbox, allowed_functions
from app.workers.alerts import AlertWorker
from app.workers.backtests import BacktestWorker
from app.workers.cleanup import CleanupWorker
from app.workers.reconciler import ReconcilerWorker

log = logging.getLogger("tradedesk.app")

CORS_ALLOW_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID", "Stripe-Signature"]
CORS_EXPOSE_HEADERS = [
    "X-Request-ID",
    "Retry-After",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "X-Cache",
    "Idempotent-Replayed",
    "Location",
]


def create_app(settings: Settings | None = None, *, freeze_gc: bool = False) -> FastAPI:
    """The ASGI app. ``freeze_gc`` (the server entry point only): after startup, move every object
    built so far out of the collector's way, so later full collections scan only request-time objects
    and GC pauses stay out of the latency tail. Tests leave it off: a frozen test app's garbage would
    stay for the rest of the run."""
    settings = settings or load_settings_or_exit()
    configure_logging(settings.log_level)
    init_error_tracking(  # SENTRY_DSN unset: nothing is initialised (app/core/errortracking.py)
        settings.sentry_dsn.get_secret_value() if settings.sentry_dsn else None,
        environment=settings.app_env,
        release=__version__,
        traces_sample_rate=settings.sentry_traces_sample_rate,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        prune_dead_workers()  # several workers (PROMETHEUS_MULTIPROC_DIR): forget crashed workers' gauges
        database = Database.for_settings(settings)
        app.state.database = database
        app.state.readiness = ReadinessProbe(
            database
        )  # /readyz: one check per second, shared (app/ops/readiness.py)
        redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
        # One Redis client per process, shared by the limiter, the breakers and the cache.
        app.state.redis = connect_redis(redis_url)
        app.state.limiter = RateLimiter(
            app.state.redis,
            offender_threshold=settings.rate_limit_offender_threshold,
            offender_window=settings.rate_limit_offender_window_seconds,
        )
        # Outbound clients (one per provider, breaker state in Redis when set) and market data; tests may
        # set app.state.http_transports = {provider: httpx transport} before startup (app/core/http.py).
        app.state.outbound = Outbound(
            settings, redis=app.state.redis, transports=getattr(app.state, "http_transports", None)
        )
        app.state.market_data = build_market_data(settings, app.state.outbound, app.state.redis)
        app.state.passwords = PasswordHashing()  # Argon2id in its own thread pool (app/core/security.py)
        app.state.token_cipher = TokenCipher(settings.token_encryption_keys)
        app.state.stripe_verifier = build_webhook_verifier(settings)
        app.state.broker_oauth = build_broker_oauth(settings, app.state.outbound)
        # The broker (BROKER_PROVIDER): Alpaca through its own outbound client and breaker, or the paper
        # simulator over this database and the market-data provider (app/providers/broker/).
        app.state.broker = build_broker(
            settings, app.state.outbound, database=database, market_data=app.state.market_data
        )
        app.state.order_policy = OrderPolicy.from_settings(settings, provider=app.state.broker.name)
        app.state.broker_accounts = broker_accounts(
            provider=app.state.broker.name, database=database, cipher=app.state.token_cipher
        )
        if redis_url is None and settings.web_concurrency > 1:
            log.warning(
                "REDIS_URL is unset with WEB_CONCURRENCY > 1: rate limits, breaker state and cache are "
                "per process, so each worker enforces its own budget",
                extra={"web_concurrency": settings.web_concurrency},
            )
        log.info(
            "startup",
            extra={
                "env": settings.app_env,
                "version": __version__,
                "shared_state": "redis" if redis_url else "memory",
            },
        )
        # Background loop: purges expired idempotency keys every 5 minutes (app/workers/cleanup.py).
        app.state.cleanup = CleanupWorker(database)
        app.state.cleanup.start()
        # Background loop: settles unknown-outcome orders and refreshes open ones (app/workers/reconciler.py).
        app.state.reconciler = ReconcilerWorker(
            database, app.state.broker, app.state.order_policy, app.state.broker_accounts
        )
        app.state.reconciler.start()
        # Background loop: sends queued Discord alerts, throttled by Discord's answers (app/workers/alerts.py).
        app.state.discord = build_discord(settings, app.state.outbound)
        app.state.alerts = AlertWorker(
            Dispatcher(
                database,
                app.state.discord,
                app.state.token_cipher,
                app.state.limiter,
                dispatch_rate=settings.alert_dispatch_rate,
                retry_base_seconds=settings.alert_retry_base_seconds,
            )
        )
        app.state.alerts.start()
        # Tools run in a pool of worker processes under memory and CPU caps (app/tools/sandbox.py); the pool
        # starts in the background here (in tests: on the first tool call).
        app.state.tool_sandbox = LazySandbox(
            Sandbox(
                allowed_functions(),
                workers=settings.tool_workers,
                memory_mb=settings.tool_memory_mb,
                cpu_seconds=max(1, math.ceil(settings.tool_timeout_seconds)) + 1,
                max_waiting=settings.tool_max_waiting,
                preload=("app.tools.functions",),
            )
        )
        # Backtest jobs on uploaded CSV (app/backtests/): their own sandbox (long runs must not take the
        # tools' workers) and a loop that runs this host's queued jobs, resuming any a restart interrupted.
        app.state.backtests = BacktestRunner.from_settings(settings)
        app.state.backtest_worker = BacktestWorker(database, app.state.backtests)
        if settings.app_env != "test":
            app.state.tool_sandbox.warm()
            app.state.backtests.sandbox.warm()
        app.state.backtest_worker.start()
        # The MCP server at /mcp over the same tools (app/tools/mcp.py); its transport runs below.
        app.state.mcp = McpServer(max_body_bytes=settings.max_body_bytes)
        if freeze_gc:
            gc.collect()
            gc.freeze()
        try:
            async with app.state.mcp.run():  # the MCP transport's task group: stops before the sandbox
                yield
        finally:
            await app.state.backtest_worker.stop()  # running jobs go back to the queue
            await app.state.tool_sandbox.close()
            await app.state.alerts.stop()
            await app.state.reconciler.stop()
            await app.state.cleanup.stop()
            await app.state.market_data.aclose()
            await app.state.outbound.aclose()
            await close_redis(app.state.redis)
            app.state.passwords.close()
            await database.dispose()
            mark_worker_stopped()  # several workers: this worker's live gauges stop counting
            log.info("shutdown")

    app = FastAPI(
        title="Tradedesk",
        version=__version__,
        summary="Trading backend: accounts, orders, billing, broker linking, market data, alerts, quant tools.",
        lifespan=lifespan,
        # Served by app/ops/docs.py instead, behind the default rate limit.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # A path with a trailing slash is a 404 problem, never a redirect to another URL (a symbol ending
        # in an encoded '/' would otherwise be bounced to a different route).
        redirect_slashes=False,
    )
    app.state.settings = settings
    install_error_handlers(app)
    install_idempotency(app)  # replays of an Idempotency-Key answer with the stored response
    app.include_router(ops_router)
    app.include_router(docs_router)
    app.include_router(api_router)
    app.include_router(mcp_router)  # POST /mcp
    install_openapi(app)  # the document describes the shared error answers too (app/core/openapi.py)

    # add_middleware wraps: the last one added is the outermost.
    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        route_limits=[
            # The upload's own cap (the file part is checked exactly; this bounds the whole body).
            (r"/v1/backtests", settings.backtest_max_upload_bytes + 64 * 1024),
            (r"/v1/tools/[^/]+/execute", settings.tool_max_body_bytes),
        ],
    )
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.frontend_origins,
        allow_credentials=True,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        allow_headers=CORS_ALLOW_HEADERS,
        expose_headers=CORS_EXPOSE_HEADERS,
        max_age=600,
    )
    app.add_middleware(
        RequestContextMiddleware,
        trusted_proxies=settings.trusted_proxy_networks,
        production=settings.app_env == "production",
        blocked_networks=settings.blocked_network_list,
    )
    return app


def __getattr__(name: str) -> Any:
    # Lazily build the ASGI app for `uvicorn app.main:app`: a bad configuration exits non-zero
    # with one message naming every offending variable, before the server binds its port.
    if name == "app":
        application = create_app(freeze_gc=True)  # the server entry point: uvicorn app.main:app
        globals()["app"] = application
        return application
    raise AttributeError(name)
