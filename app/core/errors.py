"""Errors carry their own status; one renderer turns them into RFC 9457 problem+json.

Every error response in the app, including 404, 405, 413, 422 and unexpected exceptions,
goes through ``problem_response`` so clients see one shape. No stack trace or SQL text
ever reaches a client.
"""

from __future__ import annotations

import logging
import math
import traceback
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Match

from app.core.observability import DB_POOL_TIMEOUTS, DB_STATEMENT_TIMEOUTS, UNHANDLED_ERRORS, request_id_var

log = logging.getLogger("tradedesk.errors")

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_BASE = "/problems/"


class AppError(Exception):
    """Base of every error the app raises on purpose. Subclasses set status, title and slug."""

    status: int = 500
    title: str = "Internal Server Error"
    slug: str = "internal"

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        errors: list[dict[str, str]] | None = None,
        **extra: Any,
    ) -> None:
        self.detail = detail or self.title
        self.headers = dict(headers or {})
        self.errors = errors
        self.extra = extra
        super().__init__(self.detail)


class BadRequest(AppError):
    status, title, slug = 400, "Bad Request", "bad-request"


class Unauthorized(AppError):
    status, title, slug = 401, "Unauthorized", "unauthorized"

    def __init__(self, detail: str | None = None, **kw: Any) -> None:
        kw.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(
            detail or "Authentication required: send 'Authorization: Bearer <access_token>'.", **kw
        )


class NotFound(AppError):
    status, title, slug = 404, "Not Found", "not-found"


class Conflict(AppError):
    status, title, slug = 409, "Conflict", "conflict"


class Unprocessable(AppError):
    status, title, slug = 422, "Unprocessable Content", "validation"


class TooManyRequests(AppError):
    status, title, slug = 429, "Too Many Requests", "rate-limited"


class BadGateway(AppError):
    status, title, slug = 502, "Bad Gateway", "bad-gateway"


class ServiceUnavailable(AppError):
    status, title, slug = 503, "Service Unavailable", "unavailable"

    def __init__(self, detail: str | None = None, *, retry_after: float = 1, **kw: Any) -> None:
        headers = dict(kw.pop("headers", None) or {})
        headers.setdefault("Retry-After", str(max(1, math.ceil(retry_after))))
        super().__init__(detail, headers=headers, **kw)


class BodyTooLarge(StarletteHTTPException):
    """Raised from the body-limit receive wrapper; an HTTPException so FastAPI's body parsing re-raises it."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"Request body exceeds the {limit}-byte limit.")


# Title and slug per status: the AppError classes' own, plus the statuses only the framework raises
# (routing, content negotiation, the body cap).
_HTTP_TITLES: dict[int, tuple[str, str]] = {
    cls.status: (cls.title, cls.slug)
    for cls in (
        AppError,
        BadRequest,
        Unauthorized,
        NotFound,
        Conflict,
        Unprocessable,
        TooManyRequests,
        BadGateway,
        ServiceUnavailable,
    )
} | {
    403: ("Forbidden", "forbidden"),
    405: ("Method Not Allowed", "method-not-allowed"),
    406: ("Not Acceptable", "not-acceptable"),
    413: ("Payload Too Large", "payload-too-large"),
    415: ("Unsupported Media Type", "unsupported-media-type"),
}


def problem_body(
    status: int,
    *,
    title: str | None = None,
    detail: str | None = None,
    slug: str | None = None,
    instance: str | None = None,
    errors: Iterable[dict[str, str]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    default_title, default_slug = _HTTP_TITLES.get(status, ("Error", "error"))
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + (slug or default_slug),
        "title": title or default_title,
        "status": status,
        "detail": detail or title or default_title,
    }
    if instance:
        body["instance"] = instance
    if errors is not None:
        body["errors"] = list(errors)
    if extra:
        body.update({k: v for k, v in extra.items() if k not in body})
    rid = request_id_var.get()
    if rid:
        body["request_id"] = rid
    return body


def problem_response(status: int, *, headers: Mapping[str, str] | None = None, **kw: Any) -> JSONResponse:
    return JSONResponse(
        problem_body(status, **kw),
        status_code=status,
        headers=dict(headers or {}),
        media_type=PROBLEM_CONTENT_TYPE,
    )


def _field_path(loc: Iterable[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie", "form"):
        where, rest = parts[0], parts[1:]
        if where == "body":
            return ".".join(rest) or "body"
        return ".".join([where, *rest]) if rest else where
    return ".".join(parts)


def validation_errors(raw: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    out = []
    for err in raw:
        message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        out.append({"field": _field_path(err.get("loc", ())), "message": message})
    return out


async def _app_error_handler(request: Request, exc: AppError) -> JSONResponse:
    return problem_response(
        exc.status,
        title=exc.title,
        detail=exc.detail,
        slug=exc.slug,
        instance=request.url.path,
        errors=exc.errors,
        extra=exc.extra,
        headers=exc.headers,
    )


async def _http_exception_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, str) else None
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"No route matches {request.method} {request.url.path}."
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}."
        headers["Allow"] = ", ".join(allowed_methods(request))
    return problem_response(exc.status_code, detail=detail, instance=request.url.path, headers=headers)


def flat_routes(routes: Sequence[BaseRoute]) -> Iterator[Any]:
    """Every route of the table with its full path and its inherited dependencies. FastAPI below 0.137
    (pinned: pyproject.toml) copies an included router's routes, so the table is already flat; from 0.137
    on it holds included routers, expanded by ``iter_route_contexts`` (whose items answer the same
    ``matches``/``methods``/``path_format``/``dependant`` and add ``original_route``)."""
    try:
        from fastapi.routing import iter_route_contexts  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return iter(routes)
    return iter(iter_route_contexts(routes))


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path. Starlette's own ``Allow`` names only the first
    route whose path matches, and a path (``/v1/auth/me``) may have one route per method."""
    methods: set[str] = set()
    scope = {**request.scope, "method": "GET"}
    for route in flat_routes(request.app.router.routes):
        match, _ = route.matches(scope)
        route_methods = getattr(route, "methods", None)
        if match != Match.NONE and route_methods:
            methods.update(route_methods)
    if "GET" in methods:
        methods.add("HEAD")  # every GET route answers HEAD (app.core.middleware.HeadAsGetMiddleware)
    order = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return sorted(methods, key=lambda m: (order.index(m) if m in order else len(order), m))


async def _validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = validation_errors(exc.errors())
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
    return problem_response(
        422, detail=f"The request is invalid: {summary}", instance=request.url.path, errors=errors
    )


def _db_retry_later(request: Request, slug: str, detail: str) -> JSONResponse:
    """The database could not serve this request now; a retry in a second may succeed."""
    return problem_response(
        503, detail=detail, slug=slug, instance=request.url.path, headers={"Retry-After": "1"}
    )


async def _pool_timeout_handler(request: Request, exc: sqlalchemy.exc.TimeoutError) -> JSONResponse:
    DB_POOL_TIMEOUTS.inc()
    log.warning("database pool exhausted", extra={"path": request.url.path})
    return _db_retry_later(request, "db-busy", "The database is busy; retry shortly.")


QUERY_CANCELED = "57014"  # statement_timeout (or an operator's pg_cancel_backend)
CONNECTION_EXCEPTION = (
    "08"  # SQLSTATE class 08: the connection failed or was ended (08003, 08006, 08P01, ...)
)


def sqlstate_of(exc: sqlalchemy.exc.DBAPIError) -> str | None:
    """The PostgreSQL SQLSTATE behind a SQLAlchemy error (asyncpg's, through the adapter), if any."""
    orig = exc.orig
    state = getattr(orig, "sqlstate", None) or getattr(getattr(orig, "__cause__", None), "sqlstate", None)
    return state if isinstance(state, str) else None


async def _dbapi_error_handler(request: Request, exc: sqlalchemy.exc.DBAPIError) -> JSONResponse:
    if sqlstate_of(exc) == QUERY_CANCELED:
        DB_STATEMENT_TIMEOUTS.inc()
        log.warning(
            "database statement cancelled", extra={"path": request.url.path, "sqlstate": QUERY_CANCELED}
        )
        return _db_retry_later(
            request,
            "db-timeout",
            "A database statement ran past the server's time limit and was cancelled; retry shortly.",
        )
    if exc.connection_invalidated or (sqlstate_of(exc) or "").startswith(CONNECTION_EXCEPTION):
        # The connection died under the request (database restart, failover, network cut), or the server
        # side ended it with a connection-class error before the driver saw it close (PgBouncer past its
        # query_wait_timeout). The pool has been invalidated, or the pre-ping of the next checkout finds
        # the connection closed and replaces it, so a retry gets a fresh connection.
        log_exception(log, "database connection lost", exc, path=request.url.path)
        return _db_retry_later(request, "db-unavailable", "The database connection was lost; retry shortly.")
    log_exception(log, "unhandled exception", exc)
    return unhandled_problem()


def log_exception(logger: logging.Logger, message: str, exc: BaseException, **extra: Any) -> None:
    """Log an unexpected exception without leaking data: a database error's message carries the
    offending values (PostgreSQL quotes them), so for those only the type, SQLSTATE and stack are kept."""
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        orig = exc.orig
        sqlstate = sqlstate_of(exc)
        logger.error(
            message,
            extra={
                **extra,
                "exc_type": type(exc).__name__,
                "db_error": type(orig).__name__,
                "sqlstate": sqlstate,
                "stack": "".join(traceback.format_tb(exc.__traceback__)),
            },
        )
    else:
        logger.error(message, exc_info=exc, extra=extra)


def unhandled_problem() -> JSONResponse:
    UNHANDLED_ERRORS.inc()
    return problem_response(
        500, detail="An unexpected error occurred; it has been logged with this request id."
    )


async def _unhandled_handler(request: Request, exc: Exception) -> JSONResponse:
    log_exception(log, "unhandled exception", exc)
    return unhandled_problem()


def install_error_handlers(app: FastAPI) -> None:
    # Starlette types a handler as taking any Exception; each of these takes the class it is registered for.
    app.add_exception_handler(AppError, _app_error_handler)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_handler)  # type: ignore[arg-type]
    app.add_exception_handler(sqlalchemy.exc.TimeoutError, _pool_timeout_handler)  # type: ignore[arg-type]
    app.add_exception_handler(sqlalchemy.exc.DBAPIError, _dbapi_error_handler)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unhandled_handler)
