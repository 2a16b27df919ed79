"""Backtest jobs on uploaded CSV: accept an upload, check it, queue it, run it in the sandbox, keep the result.

The life of a job
-----------------
1. ``POST /v1/backtests`` streams the file into this host's spool directory (``upload.py``). Before the
   first byte is read the user's unfinished jobs are counted (429 past ``BACKTEST_MAX_ACTIVE_PER_USER``)
   and the free disk space is checked (503 when the upload would not fit).
2. :func:`submit` checks the parameters (422 naming the field), then has a sandbox worker read the whole
   file the way the backtest will (422 ``file`` with the line number of the first bad line), and inserts
   the job, ``queued``, in one transaction that re-counts the user's jobs under a lock. The answer is 202.
3. The host's :class:`~app.workers.backtests.BacktestWorker` claims it (``FOR UPDATE SKIP LOCKED`` and a
   lease of ``BACKTEST_LEASE_SECONDS``) and :func:`run_claimed` runs it in the sandbox under
   ``BACKTEST_TIMEOUT_SECONDS``. The worker's progress reports (0..1) are written to the row, at most
   once a second, together with the lease extension.
4. It ends ``done`` (result + equity PNG) or ``failed`` with a reason; the file is deleted either way.

Restarts: a server that stops gracefully gives its running jobs back to the queue, and a server that
died stops renewing their leases; either way the next process on the same host resumes them from the
start (the run is deterministic) — unless the uploaded file is gone, or the job was already interrupted
:data:`MAX_ATTEMPTS` times, and then it ends ``failed`` with that reason. Jobs of a host that never
comes back are failed after :data:`ABANDONED_AFTER`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from app.backtests.models import BacktestJob
from app.backtests.repository import BacktestRepository, ClaimedJob
from app.backtests.schemas import BacktestParams
from app.backtests.upload import FILE_FIELD, Upload
from app.core.config import Settings
from app.core.db import Database
from app.core.errors import (
    AppError,
    Conflict,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
    Unprocessable,
    log_exception,
    validation_errors,
)
from app.tools.sandbox import PoolBusy, Sandbox, ToolCrashed, ToolFailed, ToolTimeout
from app.tools.service import LazySandbox

log = logging.getLogger("tradedesk.backtests")

MAX_ATTEMPTS = 3
ABANDONED_AFTER = dt.timedelta(hours=6)
RETENTION = dt.timedelta(days=30)
STRAY_FILE_SLACK_SECONDS = 3600.0
DISK_RESERVE_BYTES = 256 * 1024 * 1024
PROGRESS_EVERY_SECONDS = 1.0
CSV_ERROR = "app.quant._csvbars.CsvValidationError"
_LINE = re.compile(r"line ([0-9]+):")  # CsvValidationError's message starts with its line number

UPLOADS = Counter(
    "backtest_uploads_total",
    "Backtest uploads by outcome (accepted, or the problem slug: validation, upload-too-large, ...).",
    ["outcome"],
)
UPLOAD_BYTES = Counter("backtest_upload_bytes_total", "Bytes of accepted backtest uploads.")
JOBS = Counter(
    "backtest_jobs_total", "Backtest job runs by outcome (done, failed, released, resumed).", ["outcome"]
)
JOB_DURATION = Histogram(
    "backtest_job_duration_seconds",
    "Wall time of one backtest run in the sandbox.",
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
JOBS_RUNNING = Gauge(
    "backtest_jobs_running", "Backtest jobs this process is running now.", multiprocess_mode="livesum"
)


class TooManyActiveJobs(TooManyRequests):
    slug = "backtests-active-limit"


class NotEnoughDisk(ServiceUnavailable):
    slug = "backtest-spool-full"


class BacktestNotReady(Conflict):
    slug = "backtest-not-ready"


@dataclass
class BacktestRunner:
    """This process's side of backtest jobs: the spool directory, the job sandbox, who it is."""

    sandbox: LazySandbox
    spool: Path
    host: str
    max_upload_bytes: int
    max_active_per_user: int
    timeout: float
    lease: dt.timedelta
    workers: int
    owner: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
    )
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def from_settings(cls, settings: Settings) -> BacktestRunner:
        """The runner and its sandbox: ``BACKTEST_WORKERS`` job slots plus one for checking uploads."""
        spool = Path(settings.backtest_spool_dir or Path(tempfile.gettempdir()) / "tradedesk-backtests")
        spool.mkdir(parents=True, exist_ok=True, mode=0o700)
        cpu = max(1, math.ceil(settings.backtest_timeout_seconds)) + 1
        sandbox = Sandbox(
            {"validate": "app.backtests.functions:validate", "run": "app.backtests.functions:run"},
            workers=settings.backtest_workers + 1,
            memory_mb=settings.backtest_memory_mb,
            cpu_seconds=cpu,
            cpu_budget=max(cpu * 4, 3600),
            max_waiting=16,
            queue_timeout=60.0,
            retry_after=10.0,
            preload=("app.backtests.functions",),
            env={"MPLBACKEND": "Agg", "MPLCONFIGDIR": str(spool / ".matplotlib")},
        )
        return cls(
            sandbox=LazySandbox(sandbox),
            spool=spool,
            host=socket.gethostname(),
            max_upload_bytes=settings.backtest_max_upload_bytes,
            max_active_per_user=settings.backtest_max_active_per_user,
            timeout=settings.backtest_timeout_seconds,
            lease=dt.timedelta(seconds=settings.backtest_lease_seconds),
            workers=settings.backtest_workers,
        )

    def part_path(self, job_id: uuid.UUID) -> Path:
        return self.spool / f"{job_id}.csv.part"

    def file_path(self, file_name: str) -> Path:
        return self.spool / file_name


async def check_can_submit(
    *, database: Database, runner: BacktestRunner, user_id: uuid.UUID, declared_bytes: int | None
) -> None:
    """Refuse an upload before reading it: too many unfinished jobs (429), no room on disk (503)."""
    async with database.own_transaction(single_statement=True) as session:
        active = await BacktestRepository(session).active_count(user_id)
    if active >= runner.max_active_per_user:
        UPLOADS.labels(TooManyActiveJobs.slug).inc()
        raise TooManyActiveJobs(
            f"You have {active} unfinished backtests (at most {runner.max_active_per_user}); "
            "wait for one to finish.",
            headers={"Retry-After": "30"},
        )
    needed = (declared_bytes or 0) + DISK_RESERVE_BYTES
    free = (await asyncio.to_thread(shutil.disk_usage, runner.spool)).free
    if free < needed:
        UPLOADS.labels(NotEnoughDisk.slug).inc()
        log.warning("backtest spool is full", extra={"free_bytes": free, "needed_bytes": needed})
        raise NotEnoughDisk("The server has no room for this upload now; retry later.", retry_after=60)


def parse_params(fields: dict[str, str]) -> BacktestParams:
    """The text fields as parameters (422 naming each bad field)."""
    try:
        return BacktestParams.model_validate(fields)
    except ValidationError as exc:
        errors = validation_errors(exc.errors())
        raise Unprocessable(
            "; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors
        ) from None


async def submit(
    *, database: Database, runner: BacktestRunner, user_id: uuid.UUID, job_id: uuid.UUID, upload: Upload
) -> dict[str, Any]:
    """Check the received upload (parameters, then the whole file in the sandbox) and queue the job."""
    part = runner.part_path(job_id)
    outcome = "error"
    try:
        if upload.file_bytes is None:
            raise Unprocessable(
                "Send the CSV in a form part named 'file'.",
                errors=[{"field": FILE_FIELD, "message": "required"}],
            )
        params = parse_params(upload.fields)
        rows = await _check_file(runner, part)
        file_name = f"{job_id}.csv"
        await asyncio.to_thread(os.replace, part, runner.file_path(file_name))
        try:
            async with database.own_transaction() as session:
                inserted = await BacktestRepository(session).insert(
                    job_id=job_id,
                    user_id=user_id,
                    params=params.model_dump(),
                    host=runner.host,
                    file_name=file_name,
                    file_bytes=upload.file_bytes,
                    rows=rows,
                    max_active=runner.max_active_per_user,
                )
        except BaseException:
            await _remove(runner.file_path(file_name))
            raise
        if not inserted:
            await _remove(runner.file_path(file_name))
            raise TooManyActiveJobs(
                f"You already have {runner.max_active_per_user} unfinished backtests; wait for one to finish.",
                headers={"Retry-After": "30"},
            )
        outcome = "accepted"
        UPLOAD_BYTES.inc(upload.file_bytes)
        runner.wake.set()
        log.info(
            "backtest queued",
            extra={"job_id": str(job_id), "rows": rows, "bytes": upload.file_bytes, "host": runner.host},
        )
        return {"id": job_id, "status": "queued"}
    except AppError as exc:
        outcome = exc.slug
        raise
    finally:
        UPLOADS.labels(outcome).inc()
        await _remove(part)


async def _check_file(runner: BacktestRunner, path: Path) -> int:
    """Rows in the file, read in a sandbox worker; 422 ``file`` with the line of the first problem."""
    sandbox = await runner.sandbox.get()
    try:
        checked = await sandbox.run("validate", {"path": str(path)}, timeout=runner.timeout)
    except ToolFailed as exc:
        if exc.raised(CSV_ERROR):
            found = _LINE.match(exc.message)
            line = int(found.group(1)) if found else None
            raise Unprocessable(
                f"The CSV is malformed: {exc.message}",
                errors=[{"field": FILE_FIELD, "message": exc.message}],
                line=line,
            ) from None
        raise
    except ToolTimeout:
        raise Unprocessable(
            f"Checking the file took longer than BACKTEST_TIMEOUT_SECONDS ({runner.timeout:g} s).",
            errors=[{"field": FILE_FIELD, "message": "too large to check within the time limit"}],
        ) from None
    except ToolCrashed as exc:
        raise Unprocessable(
            f"Checking the file failed: its worker process {exc.how}.",
            errors=[{"field": FILE_FIELD, "message": f"could not be read ({exc.reason} limit)"}],
        ) from None
    rows = int(checked["rows"])
    if rows == 0:
        raise Unprocessable(
            "The CSV has a header but no data rows.",
            errors=[{"field": FILE_FIELD, "message": "no data rows after the header"}],
        )
    return rows


async def get_job(*, session: AsyncSession, user_id: uuid.UUID, job_id: uuid.UUID) -> BacktestJob:
    """The user's job (404 for anyone else's)."""
    job = await BacktestRepository(session).get_for_user(job_id, user_id)
    if job is None:
        raise NotFound("No backtest with this id.")
    return job


async def equity_png(*, session: AsyncSession, user_id: uuid.UUID, job_id: uuid.UUID) -> bytes:
    """The finished job's equity curve (409 while it is not done)."""
    found = await BacktestRepository(session).png_for_user(job_id, user_id)
    if found is None:
        raise NotFound("No backtest with this id.")
    status, png, error = found
    if status == "failed":
        raise BacktestNotReady(f"The backtest failed, so it has no equity curve: {error}", status=status)
    if status != "done" or png is None:
        raise BacktestNotReady(
            f"The backtest is {status}; the equity curve exists once it is done.",
            status=status,
            headers={"Retry-After": "2"},
        )
    return png


# ---- the worker's side ---------------------------------------------------------------------------------


async def claim(*, database: Database, runner: BacktestRunner) -> ClaimedJob | None:
    """The next job of this host, leased to this process."""
    async with database.own_transaction(single_statement=True) as session:
        return await BacktestRepository(session).claim(
            host=runner.host, owner=runner.owner, lease=runner.lease
        )


async def run_claimed(*, database: Database, runner: BacktestRunner, job: ClaimedJob) -> str:
    """Run a claimed job to its end; the outcome (done, failed, released)."""
    path = runner.file_path(job.file_name)
    if job.attempts > 1:
        JOBS.labels("resumed").inc()
        log.warning(
            "backtest resumed after an interruption", extra={"job_id": str(job.id), "attempt": job.attempts}
        )
    if job.attempts > MAX_ATTEMPTS:
        return await _fail(
            database, runner, job, f"the backtest was interrupted {MAX_ATTEMPTS} times (server restarts)"
        )
    if not await asyncio.to_thread(path.exists):
        return await _fail(
            database,
            runner,
            job,
            f"the uploaded file is no longer on {runner.host} (lost in a restart); upload it again",
        )
    progress = _Progress()
    started = time.perf_counter()
    JOBS_RUNNING.inc()
    heartbeat = asyncio.create_task(_heartbeat(database, runner, job, progress), name=f"backtest-{job.id}")
    try:
        sandbox = await runner.sandbox.get()
        out = await sandbox.run(
            "run", {"path": str(path), "params": job.params}, timeout=runner.timeout, on_progress=progress.set
        )
    except PoolBusy:  # the sandbox is closing: this process is shutting down
        return await _release(database, runner, job)
    except ToolTimeout:
        return await _fail(
            database, runner, job, f"the backtest ran past BACKTEST_TIMEOUT_SECONDS ({runner.timeout:g} s)"
        )
    except ToolCrashed as exc:
        return await _fail(database, runner, job, f"the backtest's worker process {exc.how}")
    except ToolFailed as exc:
        if exc.raised("ValueError"):  # CsvValidationError included: the file changed under us
            return await _fail(database, runner, job, exc.message)
        log.error("backtest raised", extra={"job_id": str(job.id), "traceback": exc.traceback})
        return await _fail(database, runner, job, "internal error while running the backtest")
    finally:
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
        JOBS_RUNNING.dec()
        JOB_DURATION.observe(time.perf_counter() - started)
    async with database.own_transaction(single_statement=True) as session:
        finished = await BacktestRepository(session).finish(
            job.id, owner=runner.owner, result=out["result"], png=out["png"]
        )
    await _remove(path)
    if not finished:
        log.warning("backtest finished after its lease was taken over", extra={"job_id": str(job.id)})
        return "lost"
    JOBS.labels("done").inc()
    log.info(
        "backtest done",
        extra={"job_id": str(job.id), "rows": job.rows, "seconds": round(time.perf_counter() - started, 3)},
    )
    return "done"


@dataclass
class _Progress:
    value: float = 0.0
    written: float = -1.0

    def set(self, fraction: float) -> None:
        self.value = max(self.value, min(1.0, fraction))


async def _heartbeat(
    database: Database, runner: BacktestRunner, job: ClaimedJob, progress: _Progress
) -> None:
    """Every second: write new progress, and renew the lease at least every third of it."""
    renew_every = runner.lease.total_seconds() / 3
    last_renewal = time.monotonic()
    while True:
        await asyncio.sleep(min(PROGRESS_EVERY_SECONDS, renew_every))
        now = time.monotonic()
        if progress.value == progress.written and now - last_renewal < renew_every:
            continue
        value = progress.value
        try:
            async with database.own_transaction(single_statement=True) as session:
                owned = await BacktestRepository(session).heartbeat(
                    job.id, owner=runner.owner, progress=value, lease=runner.lease
                )
        except Exception as exc:  # the next beat tries again; the lease has slack for it
            log_exception(log, "could not renew a backtest's lease", exc, job_id=str(job.id))
            continue
        progress.written, last_renewal = value, now
        if not owned:
            log.warning("backtest lease lost to another process", extra={"job_id": str(job.id)})
            return


async def _fail(database: Database, runner: BacktestRunner, job: ClaimedJob, reason: str) -> str:
    async with database.own_transaction(single_statement=True) as session:
        await BacktestRepository(session).fail(job.id, owner=runner.owner, error=reason)
    await _remove(runner.file_path(job.file_name))
    JOBS.labels("failed").inc()
    log.warning("backtest failed", extra={"job_id": str(job.id), "reason": reason})
    return "failed"


async def _release(database: Database, runner: BacktestRunner, job: ClaimedJob) -> str:
    try:
        async with database.own_transaction(single_statement=True) as session:
            await BacktestRepository(session).release(job.id, owner=runner.owner)
    except Exception as exc:  # the lease lapses on its own and the next start resumes the job
        log_exception(log, "could not hand a backtest back to the queue", exc, job_id=str(job.id))
    JOBS.labels("released").inc()
    log.info("backtest handed back to the queue (shutdown)", extra={"job_id": str(job.id)})
    return "released"


async def sweep(*, database: Database, runner: BacktestRunner) -> dict[str, int]:
    """Housekeeping: fail jobs whose host is gone, purge old finished jobs, delete stray spool files."""
    async with database.own_transaction(single_statement=True) as session:
        abandoned = await BacktestRepository(session).fail_abandoned(after=ABANDONED_AFTER)
    async with database.own_transaction(single_statement=True) as session:
        purged = await BacktestRepository(session).purge_finished(after=RETENTION)
    async with database.own_transaction(single_statement=True) as session:
        live = await BacktestRepository(session).live_files(host=runner.host)
    # A file can sit untouched for up to the time limit while it is checked, before its job row exists.
    max_age = runner.timeout + STRAY_FILE_SLACK_SECONDS
    removed = await asyncio.to_thread(_sweep_spool, runner.spool, live, max_age)
    if abandoned or purged or removed:
        log.info(
            "backtest housekeeping",
            extra={"abandoned": len(abandoned), "purged": purged, "files_removed": removed},
        )
    return {"abandoned": len(abandoned), "purged": purged, "files_removed": removed}


def _sweep_spool(spool: Path, live: set[str], max_age: float) -> int:
    """Delete files no unfinished job holds (left by a crash mid-upload or mid-run) once untouched for
    ``max_age`` seconds."""
    removed = 0
    now = time.time()
    for entry in spool.iterdir():
        name = entry.name
        if not name.endswith((".csv", ".csv.part")) or name in live:
            continue
        try:
            if now - entry.stat().st_mtime > max_age:
                entry.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed


async def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        await asyncio.to_thread(os.unlink, path)
