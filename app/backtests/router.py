"""POST /v1/backtests (a CSV upload, streamed to disk), GET /v1/backtests/{id} and its equity.png
(contract §4, Backtests on your own data)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response

from app.auth.deps import CurrentUserDetached
from app.backtests import service
from app.backtests.deps import BacktestRateLimit, RunnerDep
from app.backtests.schemas import BacktestAccepted, BacktestJobOut
from app.backtests.upload import boundary_of, receive_upload
from app.core.deps import DatabaseDep, SessionDep

router = APIRouter(tags=["backtests"])
_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}
UPLOAD_IDLE_SECONDS = 60.0

JobId = Annotated[uuid.UUID, Path(description="The backtest's id (from POST /v1/backtests)")]

_UPLOAD_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "additionalProperties": False,  # another field is a 422 (BacktestParams forbids extras)
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "CSV with header timestamp,open,high,low,close,volume; ascending "
                            "ISO 8601 timestamps (UTC without an offset). At most BACKTEST_MAX_UPLOAD_BYTES.",
                        },
                        "fast": {"type": "integer", "minimum": 1, "maximum": 9999, "default": 20},
                        "slow": {"type": "integer", "minimum": 2, "maximum": 10000, "default": 50},
                        "commission": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0},
                        "initial_cash": {
                            "type": "number",
                            "exclusiveMinimum": 0,
                            "maximum": 1e12,
                            "default": 100000,
                        },
                    },
                }
            }
        },
    }
}


@router.post(
    "/backtests",
    status_code=202,
    response_model=BacktestAccepted,
    openapi_extra=_UPLOAD_SCHEMA,
    responses={
        400: {"description": "A malformed multipart body.", **_PROBLEM},
        408: {"description": "The upload stopped sending for 60 s.", **_PROBLEM},
        413: {"description": "The file is over BACKTEST_MAX_UPLOAD_BYTES.", **_PROBLEM},
        415: {"description": "Not multipart/form-data.", **_PROBLEM},
        422: {
            "description": "A bad parameter (`errors[].field` names it) or a malformed CSV "
            "(`errors[].field` is `file`, the message and `line` give the line number).",
            **_PROBLEM,
        },
        429: {"description": "RATE_LIMIT_BACKTESTS, or too many unfinished backtests.", **_PROBLEM},
        503: {
            "description": "No disk space or no sandbox worker free now; retry after Retry-After.",
            **_PROBLEM,
        },
    },
    summary="Backtest your own bars: upload a CSV, get a job",
)
async def create_backtest(
    request: Request,
    response: Response,
    user: CurrentUserDetached,
    _limit: BacktestRateLimit,
    runner: RunnerDep,
    database: DatabaseDep,
) -> dict[str, Any]:
    boundary = boundary_of(request.headers.get("content-type"))
    declared = request.headers.get("content-length")
    await service.check_can_submit(
        database=database,
        runner=runner,
        user_id=user.id,
        declared_bytes=int(declared) if declared and declared.isdigit() else None,
    )
    job_id = uuid.uuid4()
    upload = await receive_upload(
        request.stream(),
        boundary=boundary,
        dest=runner.part_path(job_id),
        max_file_bytes=runner.max_upload_bytes,
        idle_timeout=UPLOAD_IDLE_SECONDS,
    )
    accepted = await service.submit(
        database=database, runner=runner, user_id=user.id, job_id=job_id, upload=upload
    )
    response.headers["Location"] = f"/v1/backtests/{job_id}"
    return accepted


@router.get(
    "/backtests/{job_id}",
    response_model=BacktestJobOut,
    responses={404: {"description": "No such backtest (or another user's).", **_PROBLEM}},
    summary="One of the caller's backtests: status, progress, result",
)
async def get_backtest(job_id: JobId, user: CurrentUserDetached, session: SessionDep) -> Any:
    return await service.get_job(session=session, user_id=user.id, job_id=job_id)


@router.get(
    "/backtests/{job_id}/equity.png",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "The equity curve."},
        404: {"description": "No such backtest (or another user's).", **_PROBLEM},
        409: {"description": "The backtest is not done (or failed).", **_PROBLEM},
    },
    summary="The equity curve of one of the caller's finished backtests, as a PNG",
)
async def get_equity_png(job_id: JobId, user: CurrentUserDetached, session: SessionDep) -> Response:
    png = await service.equity_png(session=session, user_id=user.id, job_id=job_id)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})
