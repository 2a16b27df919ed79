"""Interactive API docs (/docs, /redoc, /openapi.json), served as ordinary routes so that
RATE_LIMIT_DEFAULT applies to them too (contract §3 exempts only /healthz, /readyz and /metrics).

The pages work offline: their JavaScript and CSS come from the app itself, not from a CDN. Swagger UI
and ReDoc are the files the ``fastapi-offline`` package ships (MIT; Swagger UI Apache-2.0, ReDoc MIT),
read from the installed package; the one script of our own (starting Swagger UI) is a file too, so no
page has an inline script and each carries a Content-Security-Policy that allows only this origin
(plus inline styles, which both UIs set at run time, and ``blob:`` workers, which ReDoc's search uses).
ReDoc's bundle shows a logo loaded from Redocly's CDN; it is served with that one URL replaced by an
empty ``data:`` image, which ReDoc's own error handler then hides, so the page makes no outside request.
"""

from __future__ import annotations

import functools
import hashlib
import html
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from app.core.errors import NotFound
from app.core.ratelimit import default_rate_limit

router = APIRouter(include_in_schema=False, dependencies=[Depends(default_rate_limit)])

_VENDOR = Path(str(resources.files("fastapi_offline") / "static"))
_OWN = Path(__file__).resolve().parent / "docs_assets"
# name -> (file, media type); nothing else is served from /docs/static
ASSETS: dict[str, tuple[Path, str]] = {
    "swagger-ui-bundle.js": (_VENDOR / "swagger-ui-bundle.js", "text/javascript"),
    "swagger-ui.css": (_VENDOR / "swagger-ui.css", "text/css"),
    "redoc.standalone.js": (_VENDOR / "redoc.standalone.js", "text/javascript"),
    "favicon.png": (_VENDOR / "favicon.png", "image/png"),
    "swagger-init.js": (_OWN / "swagger-init.js", "text/javascript"),
}
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; worker-src blob:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_HEADERS = {"Content-Security-Policy": DOCS_CSP, "Cache-Control": "no-cache"}

_SWAGGER = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css">
<link rel="icon" href="/docs/static/favicon.png">
</head>
<body>
<div id="swagger-ui" data-openapi-url="/openapi.json"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/static/swagger-init.js"></script>
</body>
</html>
"""
_REDOC = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="/docs/static/favicon.png">
</head>
<body>
<noscript>ReDoc needs JavaScript; the raw description is at /openapi.json.</noscript>
<redoc spec-url="/openapi.json"></redoc>
<script src="/docs/static/redoc.standalone.js"></script>
</body>
</html>
"""


@router.get("/openapi.json")
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    title = html.escape(f"{request.app.title} - API docs")
    return HTMLResponse(_SWAGGER.format(title=title), headers=_HEADERS)


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    title = html.escape(f"{request.app.title} - API reference")
    return HTMLResponse(_REDOC.format(title=title), headers=_HEADERS)


_REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
_ASSET_CACHE = "public, max-age=86400"


@functools.cache
def _redoc_bundle() -> tuple[bytes, str]:
    body = ASSETS["redoc.standalone.js"][0].read_bytes().replace(_REDOC_LOGO, b"data:,")
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


@router.get("/docs/static/{name}", response_model=None)
async def docs_asset(name: str, request: Request) -> Response:
    if name == "redoc.standalone.js":
        body, etag = _redoc_bundle()
        headers = {"Cache-Control": _ASSET_CACHE, "ETag": etag}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(body, media_type="text/javascript", headers=headers)
    asset = ASSETS.get(name)
    if asset is None:
        raise NotFound(f"No docs asset named {name!r}.")
    path, media_type = asset
    # The files change only with the installed package: a day in caches, revalidated by ETag after.
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": _ASSET_CACHE})
