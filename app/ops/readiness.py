"""The readiness check behind ``GET /readyz``, cached so the endpoint cannot be used to drain the pool.

``/readyz`` is unauthenticated and not rate limited (contract §3). If every call took a pooled
connection for its ``SELECT 1``, a flood of them would exhaust the pool the API needs. So the result
is kept for ``ttl`` seconds (1 s) and at most one check is in flight per process: every caller in
that window shares it. A failed check is cached the same way, so a flood during an outage does not
pile up on a database that is already not answering.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from app.core.db import Database
from app.core.observability import READINESS_CHECKS

log = logging.getLogger("tradedesk.ops")

READINESS_TIMEOUT_SECONDS = 2.0
READINESS_TTL_SECONDS = 1.0


class ReadinessProbe:
    """One database round trip per ``ttl`` per process, shared by every concurrent caller."""

    def __init__(
        self,
        database: Database,
        *,
        timeout: float = READINESS_TIMEOUT_SECONDS,
        ttl: float = READINESS_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.database = database
        self.timeout = timeout
        self.ttl = ttl
        self._clock = clock
        self._checked_at = -float("inf")
        self._ready = False
        self._inflight: asyncio.Task[bool] | None = None

    async def ready(self) -> bool:
        """Whether the database answered within the timeout, as of at most ``ttl`` seconds ago."""
        if self._clock() - self._checked_at < self.ttl:
            return self._ready
        if self._inflight is None:
            self._inflight = asyncio.create_task(self._check(), name="readiness-check")
        # Shielded: a caller that goes away does not cancel the check the others are waiting for.
        return await asyncio.shield(self._inflight)

    async def _check(self) -> bool:
        try:
            await self.database.ping(self.timeout)
            ready = True
        except Exception as exc:
            log.warning("readiness check failed", extra={"error": type(exc).__name__})
            ready = False
        READINESS_CHECKS.labels("ok" if ready else "failed").inc()
        self._ready, self._checked_at, self._inflight = ready, self._clock(), None
        return ready
