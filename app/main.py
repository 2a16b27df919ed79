"""Application factory: lifespan (pool, limiter, clients), middleware, error handlers, routers.

``uvicorn app.main:app`` works (the module builds ``app`` on first access, validating the
configuration first); tests call ``create_app(settings)`` with their own settings.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from app import __version__
from app.api import api_router
from app.billing.repository import EventWriter
from app.core.config import Settings, load_settings_or_exit
from app.core.crypto import TokenCipher
from app.core.db import create_engine, create_sessionmaker
from app.core.errors import install_error_handlers
from app.core.http import Outbound
from app.core.middleware import BodyLimitMiddleware, CORSMiddleware, RequestContextMiddleware
from app.core.observability import configure_logging, mark_worker_stopped, prune_dead_workers
from app.core.ratelimit import RateLimiter
from app.core.redisconn import close_redis, connect_redis
from app.core.security import PasswordHashing
from app.ops.docs import router as docs_router
from app.ops.router import router as ops_router
from app.providers.market_data import build_market_data
from app.providers.oauth import build_broker_oauth

log = logging.getLogger("tradedesk.app")

CORS_ALLOW_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID", "Stripe-Signature"]
CORS_EXPOSE_HEADERS = [
    "X-Request-ID", "Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset",
    "X-Cache", "Idempotent-Replayed", "Location",
]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings_or_exit()
    configure_logging(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        prune_dead_workers()  # several workers (PROMETHEUS_MULTIPROC_DIR): forget crashed workers' gauges
        engine = create_engine(settings)
        app.state.engine = engine
        app.state.sessionmaker = create_sessionmaker(engine)
        redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
        app.state.limiter = RateLimiter(redis_url)
        # Outbound clients (one per provider, breaker state in Redis when set) and market data; tests may
        # set app.state.http_transports = {provider: httpx transport} before startup (app/core/http.py).
        app.state.redis = connect_redis(redis_url)
        app.state.outbound = Outbound(settings, redis=app.state.redis,
                                      transports=getattr(app.state, "http_transports", None))
        app.state.market_data = build_market_data(settings, app.state.outbound, app.state.redis)
        app.state.passwords = PasswordHashing()  # Argon2id in its own thread pool (app/core/security.py)
        app.state.token_cipher = TokenCipher(settings.token_encryption_keys)
        app.state.billing_writer = EventWriter(engine)
        app.state.broker_oauth = build_broker_oauth(settings, app.state.outbound)
        if redis_url is None and settings.web_concurrency > 1:
            log.warning(
                "REDIS_URL is unset with WEB_CONCURRENCY > 1: rate limits, breaker state and cache are "
                "per process, so each worker enforces its own budget",
                extra={"web_concurrency": settings.web_concurrency},
            )
        log.info("startup", extra={"env": settings.app_env, "version": __version__,
                                   "shared_state": "redis" if redis_url else "memory"})
        # Move everything built at startup out of the collector's way: later full collections then
        # scan only request-time objects, which keeps GC pauses out of the latency tail.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await app.state.limiter.close()
            await app.state.market_data.aclose()
            await app.state.outbound.aclose()
            await close_redis(app.state.redis)
            app.state.passwords.close()
            await engine.dispose()
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
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(ops_router)
    app.include_router(docs_router)
    app.include_router(api_router)

    # add_middleware wraps: the last one added is the outermost.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
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
    )
    return app


def __getattr__(name: str) -> Any:
    # Lazily build the ASGI app for `uvicorn app.main:app`: a bad configuration exits non-zero
    # with one message naming every offending variable, before the server binds its port.
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)
