"""Bench-only diagnostics for `bench_market.py --breakdown` (never imported by the app or the tests).

The real app (create_app, full middleware, lifespan) plus:
* ``GET /v1/_bench/quotes/{symbol}``: a constant quote behind the same /v1 dependencies (default rate
  limit) — the floor that routing, middleware and the limiter cost before any market-data code runs;
* ``BENCH_LIMITER=memory``: after startup the rate limiter's counters are kept in process memory
  instead of Redis (cache and breaker stay on Redis) — what the per-request limiter round trips cost.
"""

from __future__ import annotations

import os

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from app.core.ratelimit import RateLimiter, default_rate_limit
from app.main import create_app

_QUOTE = {
    "symbol": "AAPL",
    "bid": "189.95",
    "ask": "190.05",
    "last": "190.01",
    "timestamp": "2024-01-02T15:30:00Z",
}

inner = create_app()
router = APIRouter(prefix="/v1/_bench", dependencies=[Depends(default_rate_limit)])


@router.get("/quotes/{symbol}")
async def constant_quote(symbol: str) -> JSONResponse:
    return JSONResponse(_QUOTE, headers={"X-Cache": "HIT"})


inner.include_router(router)


class _MemoryLimiter:
    """Swaps app.state.limiter for an in-memory one on the first request (after the lifespan ran)."""

    def __init__(self, app) -> None:  # type: ignore[no-untyped-def]
        self.app = app
        self.swapped = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.swapped and scope["type"] == "http":
            self.swapped = True
            self.app.state.limiter = RateLimiter(None)
        await self.app(scope, receive, send)


app = _MemoryLimiter(inner) if os.environ.get("BENCH_LIMITER") == "memory" else inner
