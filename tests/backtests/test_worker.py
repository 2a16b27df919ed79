"""The backtest worker against PostgreSQL with real sandbox processes: progress written while a job runs,
a lapsed lease taken over (and the old run's late writes refused), a graceful stop handing the job back,
the time and memory caps, a lost file, too many interruptions, and the housekeeping sweep.

Each test runs its own worker for its own host name, so the app's worker (which only claims jobs of
the real host) never touches these jobs."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import uuid
from pathlib import Path

import asyncpg
import pytest

from app.backtests import service
from app.backtests.repository import BacktestRepository
from app.quant.backtest import run_backtest
from app.tools.sandbox import Sandbox
from app.tools.service import LazySandbox
from app.workers.backtests import BacktestWorker
from tests.backtests.helpers import bars_csv
from tests.orders.helpers import trader
from tests.support import db as dbsupport
from tests.support.servers import eventually

pytestmark = pytest.mark.asyncio

FUNCS = "tests.backtests.sandbox_funcs"
PARAMS = {"fast": 5, "slow": 20, "commission": 0.0, "initial_cash": 100000.0}


def make_runner(
    spool: Path, run: str, *, host: str, timeout: float = 30, lease: float = 30, memory_mb: int = 1024
):
    spool.mkdir(parents=True, exist_ok=True)
    sandbox = Sandbox(
        {"validate": "app.backtests.functions:validate", "run": run},
        workers=1,
        memory_mb=memory_mb,
        cpu_seconds=int(timeout) + 1,
        env={"MPLBACKEND": "Agg", "MPLCONFIGDIR": str(spool / ".matplotlib")},
    )
    return service.BacktestRunner(
        sandbox=LazySandbox(sandbox),
        spool=spool,
        host=host,
        max_upload_bytes=1 << 30,
        max_active_per_user=10,
        timeout=timeout,
        lease=dt.timedelta(seconds=lease),
        workers=1,
    )


@pytest.fixture
async def env(make_client, database_url, tmp_path):
    client = await make_client()
    user, _ = await trader(client)
    conn = await asyncpg.connect(dbsupport.asyncpg_dsn(database_url))
    yield (
        client.app.state.database,
        uuid.UUID(user["id"]),
        conn,
        tmp_path / "spool",
        f"test-{uuid.uuid4().hex[:8]}",
    )
    await conn.close()


async def queue_job(database, runner, user_id: uuid.UUID, data: bytes) -> uuid.UUID:
    job_id = uuid.uuid4()
    runner.file_path(f"{job_id}.csv").write_bytes(data)
    async with database.own_transaction() as session:
        assert await BacktestRepository(session).insert(
            job_id=job_id,
            user_id=user_id,
            params=PARAMS,
            host=runner.host,
            file_name=f"{job_id}.csv",
            file_bytes=len(data),
            rows=data.count(b"\n") - 1,
            max_active=10,
        )
    return job_id


async def row(conn, job_id: uuid.UUID) -> asyncpg.Record:
    return await conn.fetchrow(
        "SELECT status, progress, attempts, owner, lease_until > now() AS leased, result, error "
        "FROM backtest_jobs WHERE id = $1",
        job_id,
    )


def expected(tmp_path: Path, data: bytes) -> dict:
    path = tmp_path / f"ref-{uuid.uuid4().hex}.csv"
    path.write_bytes(data)
    return run_backtest(path, **PARAMS)


async def test_progress_is_written_while_the_job_runs(env, tmp_path) -> None:
    database, user_id, conn, spool, host = env
    runner = make_runner(spool, f"{FUNCS}:progress_then_wait", host=host)
    data = bars_csv(3_000)
    job_id = await queue_job(database, runner, user_id, data)
    worker = BacktestWorker(database, runner, poll_seconds=0.2)
    worker.start()
    try:
        running = await eventually(
            lambda: _where(conn, job_id, "status = 'running' AND progress = 0.25"),
            within=30,
            what="progress 0.25 in the database",
        )
        assert running["leased"] and running["owner"] == runner.owner and running["attempts"] == 1
        (spool / f"{job_id}.csv.release").touch()
        done = await eventually(lambda: _where(conn, job_id, "status = 'done'"), within=30, what="done")
        assert done["progress"] == 1.0 and done["owner"] is None
        assert json.loads(done["result"]) == expected(tmp_path, data)
        path = spool / f"{job_id}.csv"
        await eventually(lambda: not path.exists(), within=10, what="the file removed once done")
    finally:
        await worker.stop()


async def test_a_lapsed_lease_is_taken_over_and_the_old_run_cannot_write(env, tmp_path) -> None:
    database, user_id, conn, spool, host = env
    dead = make_runner(spool, "app.backtests.functions:run", host=host, lease=1)
    data = bars_csv(2_000)
    job_id = await queue_job(database, dead, user_id, data)
    # A process claims the job and dies: it never runs it, never renews the lease.
    claimed = await service.claim(database=database, runner=dead)
    assert claimed is not None and claimed.id == job_id
    alive = make_runner(spool, "app.backtests.functions:run", host=host, lease=30)
    assert await service.claim(database=database, runner=alive) is None  # leased: not claimable yet
    await eventually(
        lambda: _where(conn, job_id, "lease_until < now()"), within=10, what="the lease to lapse"
    )
    worker = BacktestWorker(database, alive, poll_seconds=0.2)
    worker.start()
    try:
        done = await eventually(lambda: _where(conn, job_id, "status = 'done'"), within=30, what="done")
        assert done["attempts"] == 2
        async with database.own_transaction(single_statement=True) as session:
            late = await BacktestRepository(session).finish(
                job_id, owner=dead.owner, result={"x": 1}, png=b""
            )
        assert late is False
        final = await row(conn, job_id)
        assert json.loads(final["result"]) == expected(tmp_path, data)
    finally:
        await worker.stop()


async def test_a_graceful_stop_hands_the_running_job_back_and_the_next_start_resumes_it(
    env, tmp_path
) -> None:
    database, user_id, conn, spool, host = env
    first = make_runner(spool, f"{FUNCS}:progress_then_wait", host=host)
    data = bars_csv(2_000)
    job_id = await queue_job(database, first, user_id, data)
    worker = BacktestWorker(database, first, poll_seconds=0.2)
    worker.start()
    await eventually(lambda: _where(conn, job_id, "progress = 0.25"), within=30, what="the job to run")
    await worker.stop()
    released = await row(conn, job_id)
    assert released["status"] == "queued" and released["owner"] is None and released["leased"] is None
    assert (spool / f"{job_id}.csv").exists()  # kept for the next start

    (spool / f"{job_id}.csv.release").touch()
    second = make_runner(spool, f"{FUNCS}:progress_then_wait", host=host)
    worker = BacktestWorker(database, second, poll_seconds=0.2)
    worker.start()
    try:
        done = await eventually(lambda: _where(conn, job_id, "status = 'done'"), within=30, what="done")
        assert done["attempts"] == 1
    finally:
        await worker.stop()


@pytest.mark.parametrize(
    ("function", "options", "reason"),
    [
        ("sleep_forever", {"timeout": 1.5}, "ran past BACKTEST_TIMEOUT_SECONDS (1.5 s)"),
        (
            "allocate_forever",
            {"memory_mb": 700},
            "the backtest's worker process exceeded its memory cap (700 MiB)",
        ),
    ],
    ids=["timeout", "memory"],
)
async def test_the_caps_end_a_job_failed_with_the_reason(env, function, options, reason) -> None:
    database, user_id, conn, spool, host = env
    runner = make_runner(spool, f"{FUNCS}:{function}", host=host, **options)
    job_id = await queue_job(database, runner, user_id, bars_csv(100))
    worker = BacktestWorker(database, runner, poll_seconds=0.2)
    worker.start()
    try:
        failed = await eventually(lambda: _where(conn, job_id, "status = 'failed'"), within=30, what="failed")
        assert reason in failed["error"], failed["error"]
        path = spool / f"{job_id}.csv"
        await eventually(lambda: not path.exists(), within=10, what="the file removed after the failure")
    finally:
        await worker.stop()


async def test_a_lost_file_or_too_many_interruptions_fail_the_job(env) -> None:
    database, user_id, conn, spool, host = env
    runner = make_runner(spool, "app.backtests.functions:run", host=host)
    lost = await queue_job(database, runner, user_id, bars_csv(100))
    os.unlink(runner.file_path(f"{lost}.csv"))
    interrupted = await queue_job(database, runner, user_id, bars_csv(100))
    await conn.execute(
        "UPDATE backtest_jobs SET attempts = $2 WHERE id = $1", interrupted, service.MAX_ATTEMPTS
    )
    worker = BacktestWorker(database, runner, poll_seconds=0.2)
    worker.start()
    try:
        gone = await eventually(
            lambda: _where(conn, lost, "status = 'failed'"), within=30, what="lost failed"
        )
        assert "no longer on" in gone["error"] and "upload it again" in gone["error"]
        many = await eventually(
            lambda: _where(conn, interrupted, "status = 'failed'"), within=30, what="failed"
        )
        assert f"interrupted {service.MAX_ATTEMPTS} times" in many["error"]
    finally:
        await worker.stop()


async def test_the_sweep_removes_stray_files_and_ends_abandoned_jobs(env) -> None:
    database, user_id, conn, spool, host = env
    runner = make_runner(spool, "app.backtests.functions:run", host=host, timeout=5)
    live = await queue_job(database, runner, user_id, bars_csv(10))
    abandoned = await queue_job(database, runner, user_id, bars_csv(10))
    await conn.execute(
        "UPDATE backtest_jobs SET host = 'gone-host', updated_at = now() - interval '7 hours' WHERE id = $1",
        abandoned,
    )
    old = time.time() - 5 - service.STRAY_FILE_SLACK_SECONDS - 60
    stray, part, fresh = spool / "stray.csv", spool / "dead-upload.csv.part", spool / "uploading.csv.part"
    for path in (stray, part, fresh):
        path.write_bytes(b"x")
    for path in (stray, part, runner.file_path(f"{live}.csv")):
        os.utime(path, (old, old))
    report = await service.sweep(database=database, runner=runner)
    assert report["abandoned"] == 1 and report["files_removed"] >= 2
    assert not stray.exists() and not part.exists()
    assert fresh.exists() and runner.file_path(f"{live}.csv").exists()
    ended = await row(conn, abandoned)
    assert ended["status"] == "failed" and "did not come back" in ended["error"]


async def _where(conn, job_id: uuid.UUID, condition: str):
    found = await conn.fetchrow(f"SELECT 1 FROM backtest_jobs WHERE id = $1 AND {condition}", job_id)
    return await row(conn, job_id) if found else None
