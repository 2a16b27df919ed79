"""The whole route table: every feature router mounted under /v1."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.alerts.router import router as alerts_router
from app.auth.router import router as auth_router
from app.backtests.router import router as backtests_router
from app.billing.router import router as billing_router
from app.brokers.router import router as brokers_router
from app.core.ratelimit import default_rate_limit
from app.market.router import router as market_router
from app.orders.router import router as orders_router
from app.tools.router import router as tools_router

# RATE_LIMIT_DEFAULT applies per client IP to every /v1 route (contract §3).
api_router = APIRouter(prefix="/v1", dependencies=[Depends(default_rate_limit)])
api_router.include_router(auth_router)
api_router.include_router(billing_router)
api_router.include_router(brokers_router)
api_router.include_router(market_router)
api_router.include_router(orders_router)
api_router.include_router(alerts_router)
api_router.include_router(tools_router)
api_router.include_router(backtests_router)
