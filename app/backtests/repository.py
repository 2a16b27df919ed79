"""All backtest-job SQL.

Submitting is one transaction under a lock on the user's row (count the user's unfinished jobs, insert),
so concurrent uploads can never take a user past ``BACKTEST_MAX_ACTIVE_PER_USER``. A worker claims a job
of its own host with ``FOR UPDATE SKIP LOCKED`` and leases it (``owner``, ``lease_until``) in the same
statement; every later write of that run (progress, result, failure, release) is conditional on the
owner, so a run whose lease lapsed and was taken over can never overwrite its successor's state.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Interval, bindparam, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from app.backtests.models import BacktestJob
from app.core.db import rowcount

UNFINISHED = ("queued", "running")

# The user's row, locked to the end of the submitting transaction: one submission per user at a time
# counts and inserts (NO KEY UPDATE: the insert's foreign-key check still passes).
_LOCK_USER = text("SELECT id FROM users WHERE id = :user_id FOR NO KEY UPDATE")

_INSERT = text(
    """
    WITH active AS (
        SELECT count(*) AS n FROM backtest_jobs
        WHERE user_id = :user_id AND status IN ('queued', 'running')
    )
    INSERT INTO backtest_jobs (id, user_id, status, progress, params, host, file_name, file_bytes, rows)
    SELECT :id, :user_id, 'queued', 0, :params, :host, :file_name, :file_bytes, :rows
    FROM active WHERE active.n < :max_active
    RETURNING id
    """
).bindparams(bindparam("params", type_=JSONB()))

_CLAIM = text(
    """
    UPDATE backtest_jobs j
    SET status = 'running', owner = :owner, lease_until = now() + :lease, attempts = j.attempts + 1,
        started_at = coalesce(j.started_at, now()), progress = 0, updated_at = now()
    WHERE j.id = (
        SELECT id FROM backtest_jobs
        WHERE host = :host AND status IN ('queued', 'running')
          AND (lease_until IS NULL OR lease_until < now())
        ORDER BY created_at
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    )
    RETURNING j.id, j.user_id, j.params, j.file_name, j.rows, j.attempts
    """
).bindparams(bindparam("lease", type_=Interval()))

_HEARTBEAT = text(
    """
    UPDATE backtest_jobs SET progress = :progress, lease_until = now() + :lease, updated_at = now()
    WHERE id = :id AND owner = :owner AND status = 'running'
    RETURNING id
    """
).bindparams(bindparam("lease", type_=Interval()))

_FINISH = text(
    """
    UPDATE backtest_jobs
    SET status = 'done', progress = 1, result = :result, equity_png = :png, owner = NULL,
        lease_until = NULL, finished_at = now(), updated_at = now(), error = NULL
    WHERE id = :id AND owner = :owner AND status = 'running'
    RETURNING id
    """
).bindparams(bindparam("result", type_=JSONB()))

_FAIL = text(
    """
    UPDATE backtest_jobs
    SET status = 'failed', error = :error, owner = NULL, lease_until = NULL, finished_at = now(),
        updated_at = now()
    WHERE id = :id AND (CAST(:owner AS varchar) IS NULL OR owner = :owner) AND status IN ('queued', 'running')
    RETURNING id
    """
)

_RELEASE = text(
    """
    UPDATE backtest_jobs
    SET status = 'queued', owner = NULL, lease_until = NULL, progress = 0, attempts = greatest(attempts - 1, 0),
        updated_at = now()
    WHERE id = :id AND owner = :owner AND status = 'running'
    RETURNING id
    """
)

# Jobs whose host never came back: unfinished, and no lease or heartbeat for a long time.
_ABANDONED = text(
    """
    UPDATE backtest_jobs
    SET status = 'failed', owner = NULL, lease_until = NULL, finished_at = now(), updated_at = now(),
        error = 'the server holding the uploaded file (' || host || ') did not come back to run it; '
                || 'upload the file again'
    WHERE status IN ('queued', 'running') AND updated_at < now() - :after
    RETURNING id
    """
).bindparams(bindparam("after", type_=Interval()))

_PURGE = text(
    "DELETE FROM backtest_jobs WHERE status IN ('done', 'failed') AND finished_at < now() - :after"
).bindparams(bindparam("after", type_=Interval()))


@dataclass(frozen=True)
class ClaimedJob:
    id: uuid.UUID
    user_id: uuid.UUID
    params: dict[str, Any]
    file_name: str
    rows: int
    attempts: int


class BacktestRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def active_count(self, user_id: uuid.UUID) -> int:
        """The user's unfinished jobs (queued or running)."""
        result = await self.session.execute(
            text(
                "SELECT count(*) FROM backtest_jobs WHERE user_id = :user_id AND status IN ('queued', 'running')"
            ),
            {"user_id": user_id},
        )
        return int(result.scalar_one())

    async def insert(
        self,
        *,
        job_id: uuid.UUID,
        user_id: uuid.UUID,
        params: dict[str, Any],
        host: str,
        file_name: str,
        file_bytes: int,
        rows: int,
        max_active: int,
    ) -> bool:
        """Insert a queued job unless the user already has ``max_active`` unfinished ones (False)."""
        await self.session.execute(_LOCK_USER, {"user_id": user_id})
        result = await self.session.execute(
            _INSERT,
            {
                "id": job_id,
                "user_id": user_id,
                "params": params,
                "host": host,
                "file_name": file_name,
                "file_bytes": file_bytes,
                "rows": rows,
                "max_active": max_active,
            },
        )
        return result.first() is not None

    async def get_for_user(self, job_id: uuid.UUID, user_id: uuid.UUID) -> BacktestJob | None:
        """The job without its PNG, if it is the user's."""
        result = await self.session.execute(
            select(BacktestJob)
            .where(BacktestJob.id == job_id, BacktestJob.user_id == user_id)
            .options(defer(BacktestJob.equity_png))
        )
        return result.scalar_one_or_none()

    async def png_for_user(
        self, job_id: uuid.UUID, user_id: uuid.UUID
    ) -> tuple[str, bytes | None, str | None] | None:
        """(status, PNG, error) of the user's job, or None."""
        result = await self.session.execute(
            select(BacktestJob.status, BacktestJob.equity_png, BacktestJob.error).where(
                BacktestJob.id == job_id, BacktestJob.user_id == user_id
            )
        )
        row = result.first()
        return None if row is None else (row[0], row[1], row[2])

    async def claim(self, *, host: str, owner: str, lease: dt.timedelta) -> ClaimedJob | None:
        """The oldest unfinished, unleased job of ``host``, now running under ``owner``'s lease."""
        result = await self.session.execute(_CLAIM, {"host": host, "owner": owner, "lease": lease})
        row = result.mappings().first()
        return None if row is None else ClaimedJob(**row)

    async def heartbeat(self, job_id: uuid.UUID, *, owner: str, progress: float, lease: dt.timedelta) -> bool:
        """Write the progress and extend the lease; False when the run no longer owns the job."""
        result = await self.session.execute(
            _HEARTBEAT, {"id": job_id, "owner": owner, "progress": progress, "lease": lease}
        )
        return result.first() is not None

    async def finish(self, job_id: uuid.UUID, *, owner: str, result: dict[str, Any], png: bytes) -> bool:
        out = await self.session.execute(
            _FINISH, {"id": job_id, "owner": owner, "result": result, "png": png}
        )
        return out.first() is not None

    async def fail(self, job_id: uuid.UUID, *, owner: str | None, error: str) -> bool:
        """Mark the job failed (only under ``owner``'s lease, unless ``owner`` is None)."""
        out = await self.session.execute(_FAIL, {"id": job_id, "owner": owner, "error": error})
        return out.first() is not None

    async def release(self, job_id: uuid.UUID, *, owner: str) -> bool:
        """Give a running job back to the queue (its server is shutting down): the next start resumes it."""
        out = await self.session.execute(_RELEASE, {"id": job_id, "owner": owner})
        return out.first() is not None

    async def fail_abandoned(self, *, after: dt.timedelta) -> list[uuid.UUID]:
        result = await self.session.execute(_ABANDONED, {"after": after})
        return [row[0] for row in result]

    async def purge_finished(self, *, after: dt.timedelta) -> int:
        result = await self.session.execute(_PURGE, {"after": after})
        return rowcount(result)

    async def live_files(self, *, host: str) -> set[str]:
        """File names of this host's unfinished jobs (the spool sweep keeps these)."""
        result = await self.session.execute(
            text(
                "SELECT file_name FROM backtest_jobs WHERE host = :host AND status IN ('queued', 'running')"
            ),
            {"host": host},
        )
        return {row[0] for row in result}
