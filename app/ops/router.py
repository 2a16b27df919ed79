"""Liveness, readiness and metrics. Exempt from rate limits (contract §3)."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from app.core.deps import DatabaseDep
from app.core.errors import problem_response
from app.core.observability import metrics_payload

router = APIRouter(tags=["operations"])
log = logging.getLogger("tradedesk.ops")

READINESS_TIMEOUT_SECONDS = 2.0


@router.get("/healthz", summary="Liveness: the process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: the database answers", responses={503: {"description": "Not ready"}})
async def readyz(database: DatabaseDep) -> Response:
    try:
        await database.ping(READINESS_TIMEOUT_SECONDS)
    except Exception as exc:
        log.warning("readiness check failed", extra={"error": type(exc).__name__})
        return problem_response(
            503, detail="The database did not answer within the readiness timeout.", slug="not-ready",
            headers={"Retry-After": "5"}, extra={"checks": {"database": "unavailable"}},
        )
    return JSONResponse({"status": "ready", "checks": {"database": "ok"}})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics() -> Response:
    payload, content_type = metrics_payload()
    return Response(payload, media_type=content_type)
