"""Logging, request ids and Prometheus metrics: one place for everything an operator watches.

Metric names are fixed by the contract (§4 Operations); alert rules are written against them.
Routes are labelled by their template (``/v1/orders/{id}``), never by the raw path.

Several workers: when ``PROMETHEUS_MULTIPROC_DIR`` is set, every process writes its samples to files in
that directory and ``/metrics`` (any worker) aggregates all of them: counters and histograms are summed
(dead workers' counts included, so totals never go backwards), each gauge by its ``multiprocess_mode``.
``python -m app`` empties the directory before starting the workers (``app/__main__.py``); a
worker drops its live-gauge files when it stops and, when it starts, those of workers that died without
stopping (uvicorn offers no child-exit hook; ``prune_dead_workers``).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import os
import re
import sys
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client import REGISTRY as DEFAULT_REGISTRY

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# --------------------------------------------------------------------------------------
# Metrics (process-wide, as Prometheus client libraries intend)
# --------------------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests served, by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time to serve a request, by route template.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
HTTP_IN_FLIGHT = Gauge("http_requests_in_flight", "Requests being served now.", multiprocess_mode="livesum")
DB_POOL_CHECKED_OUT = Gauge(
    "db_pool_checked_out", "Database connections checked out of the pool now.", multiprocess_mode="livesum"
)
DB_POOL_SIZE = Gauge("db_pool_size", "Configured steady-state pool size.", multiprocess_mode="livesum")
DB_POOL_OVERFLOW = Gauge(
    "db_pool_overflow",
    "Connections open beyond the pool size now (negative: unused slots).",
    multiprocess_mode="livesum",
)
DB_POOL_TIMEOUTS = Counter("db_pool_timeouts_total", "Pool checkouts that timed out (answered 503).")
DB_STATEMENT_TIMEOUTS = Counter(
    "db_statement_timeouts_total",
    "Statements PostgreSQL cancelled at DB_STATEMENT_TIMEOUT_SECONDS (answered 503).",
)
RATE_LIMIT_HITS = Counter("rate_limit_hits_total", "Requests refused by a rate limit (429).", ["route"])
RATE_LIMIT_OFFENDERS = Counter(
    "rate_limit_offenders_total",
    "Clients (one key of one limit) refused more than RATE_LIMIT_OFFENDER_THRESHOLD times within "
    "RATE_LIMIT_OFFENDER_WINDOW_SECONDS; once per key and window. The key is in the warning log line.",
    ["limit"],
)
RATE_LIMIT_ERRORS = Counter(
    "rate_limit_storage_errors_total", "Rate-limit storage failures (the limiter failed open).", ["limit"]
)
RATE_LIMIT_SKIPPED = Counter(
    "rate_limit_storage_skipped_total",
    "Requests served without a limit check because the storage failed moments ago (cooldown, fail open).",
    ["limit"],
)
BODY_TOO_LARGE = Counter("http_request_body_too_large_total", "Requests refused with 413.")
BLOCKED_REQUESTS = Counter(
    "http_blocked_requests_total", "Requests refused with 403 because the client is in BLOCKED_NETWORKS."
)
UNHANDLED_ERRORS = Counter("http_unhandled_exceptions_total", "Unexpected exceptions answered with 500.")
WEBHOOK_EVENTS = Counter(
    "webhook_events_total",
    "Stripe webhook deliveries by event type and outcome "
    "(processed, ignored, duplicate, bad_signature, unprocessable, failed, disabled).",
    ["type", "outcome"],
)
# Refusals before an event is trusted are labelled type="unknown"; their series exist from startup so an
# alert on increase() sees the first forged delivery too.
for _outcome in ("bad_signature", "disabled"):
    WEBHOOK_EVENTS.labels("unknown", _outcome)
READINESS_CHECKS = Counter(
    "readiness_checks_total",
    "Database checks made for /readyz (at most one per second per process, shared by every caller).",
    ["outcome"],
)
PASSWORD_HASH_SHED = Counter(
    "password_hash_shed_total",
    "Hashing requests refused (503) because the per-process queue was full; signups are shed first.",
    ["kind"],
)
PASSWORD_HASH_DURATION = Histogram(
    "password_hash_duration_seconds",
    "Argon2id work per operation (hash, verify), measured in the hashing thread; login capacity is bound by it.",
    ["operation"],
    buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1),
)

# Outbound calls (app/core/http.py, app/core/breaker.py) and the market-data cache.
EXTERNAL_API_REQUESTS = Counter(
    "external_api_requests_total",
    "Outbound calls by provider and outcome (success, client_error, rate_limited, server_error, timeout, "
    "connection_error, invalid_response, circuit_open); one per call, retries included in the call.",
    ["provider", "outcome"],
)
EXTERNAL_API_LATENCY = Histogram(
    "external_api_latency_seconds",
    "Wall time of an outbound call (all attempts and back-off), by provider.",
    ["provider"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
EXTERNAL_API_RETRIES = Counter(
    "external_api_retries_total", "Outbound attempts that were retries.", ["provider"]
)
# Several workers: the worst state any live worker is applying. With Redis every worker mirrors the shared
# state on each call to the provider, so they agree; without Redis (or while it fails) each worker runs its
# own breaker, and "some worker refuses calls" is what an alert must see — "mostrecent" would show whichever
# worker wrote last (a restarting worker's initial 0 included) and could hide an open breaker.
CIRCUIT_BREAKER_STATE = Gauge(
    "circuit_breaker_state",
    "Circuit breaker state per provider: 0 closed, 1 half-open, 2 open.",
    ["provider"],
    multiprocess_mode="livemax",
)
SHARED_STATE_FALLBACKS = Counter(
    "shared_state_fallbacks_total",
    "Redis operations that failed and fell back to in-process state (breaker, cache).",
    ["component"],
)
REDIS_PIPELINE_BATCH = Histogram(
    "redis_pipeline_batch_size",
    "Script calls sent together in one pipelined Redis round trip (app.core.redisconn.ScriptPipeline), by "
    "component; the count is the round trips, the sum the calls.",
    ["component"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
MARKET_DATA_CACHE = Counter(
    "market_data_cache_total",
    "Market-data cache answers by kind (quote, bars) and result (HIT, MISS, STALE, ERROR, NOT_FOUND).",
    ["kind", "result"],
)


def metrics_payload() -> tuple[bytes, str]:
    """Render the metrics exposition (aggregated across workers in multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # prometheus_client's multiprocess module is unannotated
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(DEFAULT_REGISTRY), CONTENT_TYPE_LATEST


def _multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


_LIVE_GAUGE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


def prune_dead_workers() -> list[int]:
    """A starting worker drops the live-gauge files of workers that are gone (crashed or killed without
    running their shutdown), so ``live*`` gauges never count a dead worker. Returns the pids pruned."""
    path = _multiprocess_dir()
    if path is None:
        return []
    me = os.getpid()
    pids = {int(m.group(1)) for f in os.listdir(path) if (m := _LIVE_GAUGE_FILE.match(f))} - {me}
    dead = []
    for pid in sorted(pids):
        try:
            os.kill(pid, 0)  # signal 0: existence check only
        except ProcessLookupError:
            dead.append(pid)
        except OSError:  # exists, owned by someone else
            continue
    for pid in dead:
        multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]  # unannotated upstream
    return dead


def mark_worker_stopped() -> None:
    """A stopping worker (end of its lifespan) removes its own live-gauge files."""
    path = _multiprocess_dir()
    if path is not None:
        multiprocess.mark_process_dead(os.getpid(), path)  # type: ignore[no-untyped-call]  # unannotated upstream


# --------------------------------------------------------------------------------------
# Structured logging
# --------------------------------------------------------------------------------------
_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id and any extras."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid:
            payload["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, separators=(",", ":"))


class AccessLogWriter:
    """The per-request access line, rendered directly to JSON on the hot path.

    Same shape as ``JsonFormatter`` output, but without building a LogRecord and a dict per request
    (that cost a third of a minimal request's CPU). Enabled while the ``tradedesk.access`` logger is
    enabled for INFO; the line goes to the same stream as every other log line.
    """

    def __init__(self) -> None:
        self.logger = logging.getLogger("tradedesk.access")
        self._second = -1
        self._prefix = ""

    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def _timestamp(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._prefix}.{int((now - second) * 1000):03d}+00:00"

    def write(
        self,
        *,
        now: float,
        request_id: str,
        method: str,
        route: str,
        path: str,
        status: int,
        duration: float,
        client_ip: str,
    ) -> None:
        line = (
            f'{{"ts":"{self._timestamp(now)}","level":"info","logger":"tradedesk.access","msg":"request",'
            f'"request_id":"{request_id}","method":{_q(method)},"route":{_q(route)},"path":{_q(path)},'
            f'"status":{status},"duration_ms":{duration * 1000:.3f},"client_ip":{_q(client_ip)}}}\n'
        )
        stream = _log_stream()
        try:
            stream.write(line)
            stream.flush()
        except Exception:  # nosec B110 # a closed or broken log stream never fails a request
            pass


def _q(value: str) -> str:
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return json.dumps(value)


def _log_stream() -> Any:
    for handler in logging.getLogger().handlers:
        stream = getattr(handler, "stream", None)
        if stream is not None:
            return stream
    return sys.stderr


def configure_logging(level: str = "INFO") -> None:
    """Send every logger (ours and uvicorn's) through one JSON handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # The access log is ours (one line per request with route template and duration).
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every request URL at INFO; URLs can carry secrets (e.g. Discord webhook tokens).
    # SQLAlchemy would log statements at INFO and result rows at DEBUG (password hashes, emails,
    # encrypted tokens); it pins itself to WARNING at import unless configured, and this keeps it so
    # whatever imports first. Stripe's library logs request details. LOG_LEVEL=DEBUG (a runbook step)
    # must not turn any of that on: tests/core/test_debug_logging.py.
    for name in ("httpx", "httpcore", "sqlalchemy", "asyncpg", "stripe"):
        logging.getLogger(name).setLevel(logging.WARNING)
