"""Optional error tracking: the Sentry SDK, initialised once per process when ``SENTRY_DSN`` is set.

Without ``SENTRY_DSN`` nothing is initialised and nothing leaves the process. With it, unhandled
exceptions (the 500s ``app/core/errors.py`` renders) and ERROR log lines (background workers included)
become Sentry events, tagged with the environment and the release.

What an event may carry is decided here, not by the SDK's defaults: no personal data
(``send_default_pii=False``), no request bodies (a login body holds a password), no local variables (a
handler's locals hold tokens), and ``scrub`` removes what is left: credential headers (``Authorization``,
``Cookie``, ``Stripe-Signature``, …), query values (an OAuth ``code``, an email), bearer tokens and
URL credentials anywhere in text (breadcrumb URLs of Discord webhooks), and the message of a database
error, which quotes the offending values (the policy ``log_exception`` follows for logs).
"""

from __future__ import annotations

import logging
import re
from typing import Any, cast

import sentry_sdk
import sqlalchemy.exc
from sentry_sdk.integrations.fastapi import FastApiIntegration
from sentry_sdk.integrations.starlette import StarletteIntegration
from sentry_sdk.types import Breadcrumb, BreadcrumbHint, Event, Hint

from app.core.observability import request_id_var

log = logging.getLogger("tradedesk.errortracking")

FILTERED = "[Filtered]"
# Request headers never sent, whatever their value.
SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "stripe-signature",
        "x-api-key",
        "apca-api-key-id",
        "apca-api-secret-key",
    }
)
# Keys (log-line extra fields, breadcrumb data) whose value is a secret by its name.
_SECRET_KEY = re.compile(
    r"(password|secret|token|authorization|signature|cookie|api[-_]?key|dsn|credential)", re.I
)
# Secrets inside free text: bearer tokens, JWTs, URL credentials and Discord webhook tokens.
_SECRET_TEXT = [
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+"), "Bearer " + FILTERED),
    (re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), FILTERED),
    (re.compile(r"(?i)(\w+://)[^/\s:@]+:[^/\s@]+@"), r"\1" + FILTERED + "@"),
    (re.compile(r"(/webhooks/\d+/)[A-Za-z0-9._-]+"), r"\1" + FILTERED),
]

_initialised_dsn: str | None = None


def init_error_tracking(
    dsn: str | None, *, environment: str, release: str, traces_sample_rate: float = 0.0
) -> bool:
    """Initialise Sentry once per process when a DSN is given; True when it is (now or already) on."""
    global _initialised_dsn
    if not dsn:
        return False
    if _initialised_dsn == dsn:
        return True
    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        release=release,
        send_default_pii=False,
        include_local_variables=False,
        max_request_body_size="never",
        traces_sample_rate=traces_sample_rate,
        # Only the integrations chosen here (plus the SDK's defaults: logging, dedupe, excepthook, …);
        # the auto-enabled ones would add breadcrumbs of outbound URLs and SQL.
        auto_enabling_integrations=False,
        integrations=[StarletteIntegration(), FastApiIntegration()],
        before_send=scrub,
        before_send_transaction=scrub,
        before_breadcrumb=_scrub_breadcrumb,
    )
    _initialised_dsn = dsn
    log.info("error tracking on", extra={"environment": environment, "release": release})
    return True


def scrub(event: Event, hint: Hint) -> Event:
    """Remove credentials and data values from an event before it leaves the process."""
    _scrub_event(cast("dict[str, Any]", event), hint)
    return event


def _scrub_event(event: dict[str, Any], hint: Hint) -> None:
    request = event.get("request")
    if isinstance(request, dict):
        headers = request.get("headers")
        if isinstance(headers, dict):
            request["headers"] = {
                name: FILTERED
                if _is_secret_header(name)
                else (_scrub_text(value) if isinstance(value, str) else value)
                for name, value in headers.items()
            }
        request.pop("cookies", None)
        request.pop("data", None)
        if isinstance(request.get("query_string"), str):
            request["query_string"] = _scrub_query(request["query_string"])
        if isinstance(request.get("url"), str):
            request["url"] = _scrub_text(request["url"])
    request_id = request_id_var.get()
    if request_id:  # the same id as the request's log lines and its X-Request-ID
        event.setdefault("tags", {})["request_id"] = request_id
    exc_info = hint.get("exc_info") if isinstance(hint, dict) else None
    database_error = exc_info is not None and isinstance(exc_info[1], sqlalchemy.exc.DBAPIError)
    for exception in (event.get("exception") or {}).get("values") or []:
        if database_error:
            exception["value"] = FILTERED + " (a database error's message quotes the offending values)"
        elif isinstance(exception.get("value"), str):
            exception["value"] = _scrub_text(exception["value"])
    logentry = event.get("logentry")
    if isinstance(logentry, dict):
        for key in ("message", "formatted"):
            if isinstance(logentry.get(key), str):
                logentry[key] = _scrub_text(logentry[key])
        logentry.pop("params", None)
    if isinstance(event.get("extra"), dict):
        event["extra"] = _scrub_mapping(event["extra"])
    breadcrumbs = event.get("breadcrumbs")
    values = breadcrumbs.get("values") if isinstance(breadcrumbs, dict) else breadcrumbs
    if isinstance(values, list):
        for crumb in values:
            if isinstance(crumb, dict):
                _scrub_crumb(crumb)


def _scrub_breadcrumb(crumb: Breadcrumb, hint: BreadcrumbHint) -> Breadcrumb:
    _scrub_crumb(crumb)
    return crumb


def _scrub_crumb(crumb: dict[str, Any]) -> None:
    if isinstance(crumb.get("message"), str):
        crumb["message"] = _scrub_text(crumb["message"])
    if isinstance(crumb.get("data"), dict):
        crumb["data"] = _scrub_mapping(crumb["data"])


def _is_secret_header(name: str) -> bool:
    return name.lower() in SECRET_HEADERS


def _scrub_mapping(values: dict[str, Any]) -> dict[str, Any]:
    return {
        key: FILTERED if _SECRET_KEY.search(str(key)) else (_scrub_text(v) if isinstance(v, str) else v)
        for key, v in values.items()
    }


def _scrub_query(query: str) -> str:
    """Keys only: a value is request data (an OAuth code, an email, a search), as in the access log,
    which records the path without its query."""
    return "&".join(
        f"{key}={FILTERED}" if sep else key
        for key, sep, _ in (part.partition("=") for part in query.split("&"))
    )


def _scrub_text(text: str) -> str:
    for pattern, replacement in _SECRET_TEXT:
        text = pattern.sub(replacement, text)
    return text
