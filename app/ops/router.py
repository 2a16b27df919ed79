"""Liveness, readiness and metrics. Exempt from rate limits (contract §3)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from app.core.errors import problem_response
from app.core.observability import metrics_payload
from app.ops.deps import ReadinessDep

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: the process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz", summary="Readiness: the database answers", responses={503: {"description": "Not ready"}}
)
async def readyz(readiness: ReadinessDep) -> Response:
    """200 while the database answers; checked at most once a second per process (app/ops/readiness.py)."""
    if not await readiness.ready():
        return problem_response(
            503,
            detail="The database did not answer within the readiness timeout.",
            slug="not-ready",
            headers={"Retry-After": "5"},
            extra={"checks": {"database": "unavailable"}},
        )
    return JSONResponse({"status": "ready", "checks": {"database": "ok"}})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics() -> Response:
    payload, content_type = metrics_payload()
    return Response(payload, media_type=content_type)
