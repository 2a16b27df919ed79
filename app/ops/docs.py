"""Interactive API docs (/docs, /redoc, /openapi.json), served as ordinary routes so that
RATE_LIMIT_DEFAULT applies to them too (contract §3 exempts only /healthz, /readyz and /metrics)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from app.core.ratelimit import default_rate_limit

router = APIRouter(include_in_schema=False, dependencies=[Depends(default_rate_limit)])


@router.get("/openapi.json")
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{request.app.title} - API docs")


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(openapi_url="/openapi.json", title=f"{request.app.title} - API reference")
