"""The OpenAPI document, told truthfully: every error a route can answer, in the shape it has.

FastAPI documents what a route declares; the error answers that come from shared code (the one
problem+json renderer, the rate limiter, the database pool, the bearer-token check, the body cap) it
does not know about, and its default 422 has a JSON shape this app never sends. ``install_openapi``
wraps ``app.openapi()`` so the document it builds (once, then cached) is post-processed:

* one ``Problem`` schema component (RFC 9457, as ``app.core.errors`` renders it) and every 4xx/5xx
  response of every operation as ``application/problem+json`` with that schema; FastAPI's own
  ``HTTPValidationError`` shape is removed;
* the answers every operation of a kind can give, added where the route did not document them:
  401 (``WWW-Authenticate``) where a bearer token is required (the operation has ``security``),
  400 (not JSON, not UTF-8) and 422 where FastAPI parses the body, 413 where there is one, 422 where
  it takes parameters, 404 where its path names a
  resource, 429 (``Retry-After``) where a rate limit applies (a ``RateLimit`` dependency), 503
  (``Retry-After``) where it uses the database, 403 (``BLOCKED_NETWORKS``) and 500 everywhere;
* parameters declared with ``required_header(...)`` / ``required_query(...)``: ones a route (or its
  dependency) checks itself so that a missing or malformed one gets the contract's status (400)
  instead of FastAPI's 422, documented as required, with the constraints that check enforces.

A route keeps its own description of a status; only a missing or empty body schema is filled in.
A response documented with another media type (the JSON-RPC errors of ``/mcp``) keeps it.
This module knows no feature: it reads only what the routes and their dependencies declare.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI, Header, Query
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from app.core.db import get_session
from app.core.deps import get_database, get_limiter
from app.core.errors import PROBLEM_CONTENT_TYPE, flat_routes
from app.core.ratelimit import RATE_LIMIT_PREFIX

PROBLEM_REF = "#/components/schemas/Problem"
REQUIRED_PARAMETER = "x-tradedesk-required"  # marker, removed from the published document

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "description": "An RFC 9457 problem: every error answer of this API has this shape.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": "A relative URI /problems/<slug>, stable per kind."},
        "title": {"type": "string", "description": "Stable per type."},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string", "description": "What went wrong for this request."},
        "instance": {"type": "string", "description": "The request path."},
        "errors": {
            "type": "array",
            "description": "One entry per problem (422, and the 400s that name a field).",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {
                    "field": {
                        "type": "string",
                        "description": "Dotted path into the body, or query.<name> / path.<name> / header.<name>.",
                    },
                    "message": {"type": "string"},
                },
            },
        },
        "request_id": {"type": "string", "description": "Equals the X-Request-ID response header."},
    },
    "additionalProperties": True,
}

_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
_WWW_AUTHENTICATE = {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}}

# status -> (description, headers) of the answers shared code gives
_COMMON: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("The body is not well-formed (not JSON, or not UTF-8).", {}),
    401: ("No valid bearer token: missing, malformed, expired, or for a deleted user.", _WWW_AUTHENTICATE),
    403: ("The client's address is in BLOCKED_NETWORKS.", {}),
    404: ("No such resource (also: another user's).", {}),
    413: ("The body exceeds MAX_BODY_BYTES (or this route's own cap).", {}),
    422: ("The request failed validation (`errors[]` names each field).", {}),
    429: ("A rate limit is exhausted.", _RETRY_AFTER),
    500: ("An unexpected failure, logged under the request id; no details are given.", {}),
    503: (
        "The database is busy, timed out or lost the connection (db-busy, db-timeout, db-unavailable).",
        _RETRY_AFTER,
    ),
}


def required_header(*, alias: str, description: str, **constraints: Any) -> Any:
    """A ``Header()`` default for ``Annotated[str | None, required_header(...)] = None``: the route (or
    its dependency) reads the header and answers a missing or malformed one itself (the contract's
    400, not FastAPI's 422), and the document shows it as required with ``constraints`` (JSON Schema
    keywords: ``pattern``, ``minLength``, ``maxLength``) — exactly the rules that check enforces."""
    return Header(alias=alias, description=description, json_schema_extra={REQUIRED_PARAMETER: constraints})


def required_query(*, description: str, max_length: int, **constraints: Any) -> Any:
    """The same for a query parameter the route checks itself (``max_length`` is enforced by FastAPI:
    422 past it)."""
    documented = {"maxLength": max_length, **constraints}
    return Query(
        max_length=max_length, description=description, json_schema_extra={REQUIRED_PARAMETER: documented}
    )


def _calls(dependant: Dependant) -> Iterator[Any]:
    for dep in dependant.dependencies:
        if dep.call is not None:
            yield dep.call
        yield from _calls(dep)


def _operation_traits(app: FastAPI) -> dict[tuple[str, str], set[str]]:
    """(path, method) -> what its dependencies do: "rate-limited" (a ``RateLimit(...)`` dependency, or
    one that takes the limiter), "database" (the request session or the database)."""
    traits: dict[tuple[str, str], set[str]] = {}
    for route in flat_routes(app.routes):
        if not isinstance(getattr(route, "original_route", route), APIRoute) or not route.include_in_schema:
            continue
        found: set[str] = set()
        if route.body_field is not None:
            found.add("parsed-body")  # FastAPI reads and validates it: 400 (not JSON/UTF-8) and 422
        for call in _calls(route.dependant):
            if call is get_limiter or getattr(call, "__name__", "").startswith(RATE_LIMIT_PREFIX):
                found.add("rate-limited")
            if call is get_session or call is get_database:
                found.add("database")
        for method in route.methods or ():
            traits[(str(route.path_format), method.lower())] = found
    return traits


def _problem_content() -> dict[str, Any]:
    return {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": PROBLEM_REF}}}


def _is_fastapi_validation(content: dict[str, Any]) -> bool:
    schema = content.get("application/json", {}).get("schema", {})
    return bool(schema.get("$ref", "").endswith("/HTTPValidationError"))


def _errors_as_problems(responses: dict[str, Any], shared: set[int]) -> None:
    """Every error response as a problem. One the route documented with a shape of its own (the JSON-RPC
    errors of /mcp) keeps it, and also lists the problem only when shared code answers that status too."""
    for status, response in responses.items():
        if not status.isdigit() or int(status) < 400:
            continue
        content = response.get("content") or {}
        if _is_fastapi_validation(content):
            content.pop("application/json")
        own = {k: v for k, v in content.items() if k != PROBLEM_CONTENT_TYPE and v.get("schema")}
        if own and int(status) not in shared:
            response["content"] = own
        else:
            response["content"] = {**_problem_content(), **own}


def _add(responses: dict[str, Any], status: int) -> None:
    key = str(status)
    description, headers = _COMMON[status]
    response = responses.setdefault(key, {"description": description})
    if headers:
        response.setdefault("headers", {}).update(
            {name: value for name, value in headers.items() if name not in response.get("headers", {})}
        )


def _required_parameters(operation: dict[str, Any]) -> None:
    for parameter in operation.get("parameters", []):
        schema = parameter.get("schema") or {}
        if REQUIRED_PARAMETER not in schema:
            continue
        constraints = schema[REQUIRED_PARAMETER]
        parameter["required"] = True
        parameter["schema"] = {"type": "string", **constraints}


def _uses_body(operation: dict[str, Any]) -> bool:
    return "requestBody" in operation


def process(schema: dict[str, Any], traits: dict[tuple[str, str], set[str]]) -> dict[str, Any]:
    """The document, with the problems and shared answers described (see the module docstring)."""
    schema = copy.deepcopy(schema)
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            _required_parameters(operation)
            responses: dict[str, Any] = operation["responses"]
            found = traits.get((path, method), set())
            statuses = [403, 500]
            if operation.get("security"):
                statuses.append(401)
            if "parsed-body" in found:
                statuses.append(400)
            if _uses_body(operation):
                statuses.append(413)
            if "parsed-body" in found or operation.get("parameters"):
                statuses.append(422)
            if any(p.get("in") == "path" for p in operation.get("parameters", [])):
                statuses.append(404)
            if "rate-limited" in found:
                statuses.append(429)
            if "database" in found:
                statuses.append(503)
            for status in sorted(statuses):
                _add(responses, status)
            _errors_as_problems(responses, set(statuses))
    for name in ("HTTPValidationError", "ValidationError"):
        if name in schemas and f'"#/components/schemas/{name}"' not in _dumps(schema, skip=name):
            schemas.pop(name)
    return schema


def _dumps(schema: dict[str, Any], *, skip: str) -> str:
    trimmed = {**schema, "components": {**schema["components"]}}
    trimmed["components"]["schemas"] = {k: v for k, v in schema["components"]["schemas"].items() if k != skip}
    return json.dumps(trimmed)


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` return the processed document (built on first use, then cached)."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = process(build(), _operation_traits(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise it
