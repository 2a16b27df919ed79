"""The cleanup loop: every ``interval_seconds`` it deletes expired idempotency keys, expired alert dedup
slots and old Discord error counts.

One per process, started and stopped by the lifespan. Several processes may run it at once: each batch
is one bounded statement that skips rows another purge has locked (``purge_expired``). The first run
comes one interval after startup, so short-lived processes (tests, one-off commands) never purge.

A failing run (database down, statement timeout) is logged, counted in
``cleanup_runs_total{job, outcome="error"}`` and retried at the next interval; the loop never dies of
it. ``stop()`` lets a running batch finish (no further batch starts) and waits at most
``stop_timeout`` seconds before cancelling it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import Counter

from app.alerts import service as alerts_service
from app.core import idempotency
from app.core.db import Database
from app.core.errors import log_exception
from app.workers.loop import BackgroundLoop

log = logging.getLogger("tradedesk.cleanup")

CLEANUP_RUNS = Counter(
    "cleanup_runs_total", "Cleanup job runs by job and outcome (ok, error).", ["job", "outcome"]
)
for _job in ("idempotency_keys", "alert_dedup"):
    for _outcome in ("ok", "error"):
        CLEANUP_RUNS.labels(_job, _outcome)


class CleanupWorker(BackgroundLoop):
    name = "cleanup-worker"

    def __init__(
        self,
        database: Database,
        *,
        interval_seconds: float = 300.0,
        batch_size: int = idempotency.PURGE_BATCH_SIZE,
        stop_timeout: float = 5.0,
    ) -> None:
        if interval_seconds <= 0:
            raise ValueError("interval_seconds must be positive")
        super().__init__(stop_timeout=stop_timeout)
        self.database = database
        self.interval_seconds = interval_seconds
        self.batch_size = batch_size
        self.runs = 0  # completed runs, failed ones included
        self._ran = asyncio.Condition()
        self._jobs: dict[str, Callable[[], Awaitable[int]]] = {
            "idempotency_keys": self._purge_idempotency_keys,
            "alert_dedup": self._purge_alert_state,
        }

    async def _purge_idempotency_keys(self) -> int:
        return await idempotency.purge_expired(
            database=self.database, batch_size=self.batch_size, should_stop=self._stopping.is_set
        )

    async def _purge_alert_state(self) -> int:
        return await alerts_service.purge_expired_state(database=self.database)

    async def run_once(self) -> dict[str, int]:
        """Run every job once; a failing job is logged and counted, and does not stop the others."""
        deleted: dict[str, int] = {}
        for name, job in self._jobs.items():
            try:
                deleted[name] = await job()
            except Exception as exc:
                CLEANUP_RUNS.labels(name, "error").inc()
                log_exception(log, "cleanup job failed; retrying at the next interval", exc, job=name)
            else:
                CLEANUP_RUNS.labels(name, "ok").inc()
                if deleted[name]:
                    log.info("cleanup", extra={"job": name, "deleted": deleted[name]})
        async with self._ran:
            self.runs += 1
            self._ran.notify_all()
        return deleted

    async def wait_for_runs(self, count: int) -> None:
        """Until at least ``count`` runs have completed (for tests and operators' tooling)."""
        async with self._ran:
            await self._ran.wait_for(lambda: self.runs >= count)

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            await self._pause(self.interval_seconds)
            if self._stopping.is_set():
                return
            await self.run_once()
