"""The backtest loop: runs this host's queued backtest jobs in the job sandbox, up to BACKTEST_WORKERS at
once, and does the housekeeping (jobs of hosts that never came back, old results, stray spool files).

One per process, started and stopped by the lifespan. Several processes on one host share its spool
directory and its jobs: a job is claimed with ``FOR UPDATE SKIP LOCKED`` and leased, so each runs in one
process at a time. An upload wakes the loop at once; otherwise it looks every ``poll_seconds`` (a job
whose server died becomes claimable when its lease lapses). The first pass comes right after startup, so
jobs interrupted by a restart resume at once. On stop it closes the job sandbox, which ends the running
jobs' calls: they are handed back to the queue and the next start resumes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from app.backtests import service
from app.core.db import Database
from app.core.errors import log_exception
from app.workers.loop import BackgroundLoop

log = logging.getLogger("tradedesk.backtests")

SWEEP_EVERY_SECONDS = 600.0


class BacktestWorker(BackgroundLoop):
    name = "backtest-jobs"

    def __init__(
        self,
        database: Database,
        runner: service.BacktestRunner,
        *,
        poll_seconds: float = 2.0,
        stop_timeout: float = 10.0,
    ) -> None:
        super().__init__(stop_timeout=stop_timeout)
        self.database = database
        self.runner = runner
        self.poll_seconds = poll_seconds
        self._jobs: set[asyncio.Task[str]] = set()
        self._next_sweep = 0.0

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            self.runner.wake.clear()
            try:
                await self._fill_slots()
                if time.monotonic() >= self._next_sweep:
                    self._next_sweep = time.monotonic() + SWEEP_EVERY_SECONDS
                    await service.sweep(database=self.database, runner=self.runner)
            except Exception as exc:
                log_exception(log, "backtest loop pass failed; retrying", exc)
            await self._wait()

    async def _fill_slots(self) -> None:
        while len(self._jobs) < self.runner.workers and not self._stopping.is_set():
            job = await service.claim(database=self.database, runner=self.runner)
            if job is None:
                return
            task = asyncio.create_task(
                service.run_claimed(database=self.database, runner=self.runner, job=job),
                name=f"backtest-job-{job.id}",
            )
            self._jobs.add(task)
            task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[str]) -> None:
        self._jobs.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None:
            log_exception(log, "backtest job failed unexpectedly", error)
        self.runner.wake.set()  # a slot is free

    async def _wait(self) -> None:
        """Until an upload or a finished job wakes us, ``poll_seconds`` pass, or ``stop()``."""
        wake = asyncio.create_task(self.runner.wake.wait())
        stop = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({wake, stop}, timeout=self.poll_seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (wake, stop):
                task.cancel()

    async def stop(self) -> None:
        """Stop claiming, end the running jobs' sandbox calls (they go back to the queue), wait for them."""
        await super().stop()
        await self.runner.sandbox.close()
        if self._jobs:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*self._jobs, return_exceptions=True), timeout=self.stop_timeout
                )
