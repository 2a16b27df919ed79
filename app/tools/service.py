"""Executing a tool: exact name, strict arguments, the data step in-process, the computation in the sandbox,
and one audit row per call whatever the outcome.

The order of the checks is the order of trust: an unknown name is 404 before anything is read; the
arguments are validated by the tool's strict model (422 naming ``arguments.<path>``) before any data is
fetched; the computation runs in a worker process under its memory and CPU caps and the wall-clock
``TOOL_TIMEOUT_SECONDS`` (504 when exceeded, the worker replaced); a full pool is 503 + Retry-After. The
same function serves ``POST /v1/tools/{name}/execute`` and the MCP server (``via``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
import uuid
from typing import Any

from prometheus_client import Counter, Histogram

from app.core.db import Database
from app.core.errors import AppError, log_exception
from app.providers.market_data import MarketData
from app.tools import registry
from app.tools.functions import ToolArgumentError
from app.tools.models import ToolCall
from app.tools.sandbox import Sandbox, ToolFailed

log = logging.getLogger("tradedesk.tools")

TOOL_CALLS = Counter(
    "tool_calls_total",
    "Tool executions by tool and outcome (ok, or the problem slug: validation, not-found, tool-timeout, ...).",
    ["tool", "outcome"],
)
TOOL_DURATION = Histogram(
    "tool_call_duration_seconds",
    "Wall time of one tool execution, validation to result.",
    ["tool"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
MAX_AUDITED_NAME = 64


class LazySandbox:
    """The process's sandbox, started once: at startup in the background (``warm()``), or by the first
    call that needs it (tests create many apps that never run a tool)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self._started: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def warm(self) -> None:
        if self._started is None:
            self._started = asyncio.create_task(self.sandbox.start(), name="tool-sandbox-start")

    async def get(self) -> Sandbox:
        async with self._lock:
            if self._started is None:
                self._started = asyncio.create_task(self.sandbox.start(), name="tool-sandbox-start")
        await asyncio.shield(self._started)
        return self.sandbox

    async def close(self) -> None:
        if self._started is None:
            return
        try:
            await self._started
        except Exception as exc:
            log_exception(log, "the tool sandbox had not started", exc)
        await self.sandbox.close()


def allowed_functions() -> dict[str, str]:
    """Every sandboxed tool's function: the sandbox's whole allow-list."""
    return {tool.name: tool.function for tool in registry.REGISTRY.values() if tool.function is not None}


def arguments_digest(raw: Any) -> str:
    try:
        text = json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)
    except (TypeError, ValueError, RecursionError):
        text = repr(type(raw))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


async def execute(
    *,
    database: Database,
    sandbox: LazySandbox,
    market: MarketData | None,
    name: str,
    raw_arguments: Any,
    user_id: uuid.UUID | None,
    timeout: float,  # noqa: ASYNC109 - the sandbox enforces it by killing the worker, not by cancelling
    via: str = "http",
) -> dict[str, Any]:
    """Run tool ``name`` on ``raw_arguments`` for ``user_id``: ``{"result": ...}`` or an AppError."""
    started = time.perf_counter()
    outcome = "error"
    label = name if name in registry.REGISTRY else "<unknown>"
    try:
        tool = registry.get_tool(name)
        args = registry.validate_arguments(name, raw_arguments)
        prepared = await registry.prepare(tool, args, registry.ToolContext(market=market))
        if prepared.function is None:
            result = prepared.payload
        else:
            pool = await sandbox.get()
            try:
                result = await pool.run(prepared.function, prepared.payload, timeout=timeout)
            except ToolFailed as exc:
                if exc.raised("app.tools.functions.ToolArgumentError"):
                    raise registry.argument_error(ToolArgumentError(*exc.exc_args)) from None
                raise
        outcome = "ok"
        return {"result": result}
    except AppError as exc:
        outcome = exc.slug
        raise
    finally:
        elapsed = time.perf_counter() - started
        TOOL_CALLS.labels(label, outcome).inc()
        TOOL_DURATION.labels(label).observe(elapsed)
        await _audit(database, user_id, name, raw_arguments, outcome, elapsed, via)
        log.info(
            "tool call",
            extra={"tool": label, "outcome": outcome, "duration_ms": round(elapsed * 1000, 1), "via": via},
        )


async def _audit(
    database: Database,
    user_id: uuid.UUID | None,
    name: str,
    raw: Any,
    outcome: str,
    elapsed: float,
    via: str,
) -> None:
    """One audit row; a failure to write it is logged, never the caller's error."""
    try:
        async with database.own_transaction(single_statement=True) as session:
            session.add(
                ToolCall(
                    user_id=user_id,
                    tool=str(name)[:MAX_AUDITED_NAME],
                    arguments_digest=arguments_digest(raw),
                    outcome=outcome[:32],
                    duration_ms=min(int(math.ceil(elapsed * 1000)), 2**31 - 1),
                    via=via,
                )
            )
            await session.flush()
    except Exception as exc:
        log_exception(log, "could not write the tool-call audit row", exc)
