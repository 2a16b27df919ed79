"""The whole route table: every feature router mounted under /v1."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.core.ratelimit import default_rate_limit

# RATE_LIMIT_DEFAULT applies per client IP to every /v1 route (contract §3).
api_router = APIRouter(prefix="/v1", dependencies=[Depends(default_rate_limit)])
