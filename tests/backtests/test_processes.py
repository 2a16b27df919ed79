"""Backtest jobs across REAL server processes (uvicorn, its job sandbox workers, PostgreSQL):

* a 300 MB upload, streamed by the client and never whole in its memory, completes while the server's
  process tree (uvicorn and its sandbox workers) grows by less than 100 MB of resident memory;
* a server SIGKILLed while a job runs leaves it ``running`` under a lease nobody renews; a new server
  on the same host and spool directory takes it over when the lease lapses and finishes it, with the
  same result as ``run_backtest`` on the file (attempt 2);
* the same, with the spool file gone meanwhile (the host lost its temporary files): ``failed`` with
  the reason.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from app.quant.backtest import run_backtest
from tests.auth.helpers import bearer, signup_and_token
from tests.backtests.helpers import StreamedUpload, generated_rows, tree_rss_bytes, write_bars
from tests.support import db as dbsupport
from tests.support.servers import Servers, eventually, server_env
from tests.support.settings import TEST_FERNET_KEY, TEST_JWT_SECRET, TEST_WEBHOOK_SECRET

pytestmark = [pytest.mark.slow]

LEASE_SECONDS = 2
MB = 1024 * 1024


@pytest.fixture
async def servers(database_url: str, tmp_path: Path) -> AsyncIterator[Servers]:
    spool = tmp_path / "spool"
    env = server_env(
        DATABASE_URL=database_url,
        FRONTEND_URL="http://localhost:3000",
        JWT_SECRET=TEST_JWT_SECRET,
        STRIPE_WEBHOOK_SECRET=TEST_WEBHOOK_SECRET,
        TOKEN_ENCRYPTION_KEY=TEST_FERNET_KEY,
        APP_ENV="development",  # the sandboxes start at startup, as in production
        LOG_LEVEL="INFO",
        BACKTEST_SPOOL_DIR=str(spool),
        BACKTEST_LEASE_SECONDS=str(LEASE_SECONDS),
        RATE_LIMIT_DEFAULT="100000/minute",
        RATE_LIMIT_LOGIN="1000/minute",
        RATE_LIMIT_SIGNUP="1000/hour",
    )
    workdir = tmp_path / "servers"
    workdir.mkdir()
    group = Servers(env, workdir)
    try:
        yield group
    finally:
        await group.stop_all()


async def job_row(database_url: str, job_id: str) -> asyncpg.Record:
    conn = await asyncpg.connect(dbsupport.asyncpg_dsn(database_url))
    try:
        return await conn.fetchrow(
            "SELECT status, attempts, progress, error, result FROM backtest_jobs WHERE id = $1",
            uuid.UUID(job_id),
        )
    finally:
        await conn.close()


async def post_stream(server, auth: dict[str, str], rows: int, **fields: str):
    streamed = StreamedUpload(generated_rows(rows), fields)
    return await server.http.post(
        "/v1/backtests", headers={**auth, "content-type": streamed.content_type}, content=streamed.body()
    )


async def wait_done(server, auth: dict[str, str], job_id: str, within: float = 120) -> dict:
    async def probe():
        body = (await server.http.get(f"/v1/backtests/{job_id}", headers=auth)).json()
        return body if body["status"] in ("done", "failed") else None

    return await eventually(probe, within=within, what=f"backtest {job_id} to finish")


class PeakSampler:
    """The peak of the server's process-tree RSS, sampled every 20 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, tree_rss_bytes(self.pid))

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def test_a_300_mb_upload_completes_with_flat_server_memory(servers: Servers) -> None:
    server = await servers.start()
    _, token = await signup_and_token(server.http)
    auth = bearer(token)
    with servers.diagnosed():
        # Warm up: a small job, so the sandbox workers have imported everything they use.
        warm = await post_stream(server, auth, 5_000)
        assert warm.status_code == 202, warm.text
        assert (await wait_done(server, auth, warm.json()["id"]))["status"] == "done"
        baseline = tree_rss_bytes(server.proc.pid)

        rows = 4_700_000  # 65 bytes a row: ~305 MB
        with PeakSampler(server.proc.pid) as sampler:
            r = await post_stream(server, auth, rows, fast="10", slow="40")
            assert r.status_code == 202, r.text
            job = await wait_done(server, auth, r.json()["id"])
        assert job["status"] == "done", job
        assert job["rows"] == rows and job["file_bytes"] > 300 * 1_000_000
        assert job["result"]["bars"] == rows
        growth = sampler.peak - baseline
        print(f"process-tree RSS: baseline {baseline / MB:.1f} MB, peak {sampler.peak / MB:.1f} MB")
        assert growth < 100 * MB, (
            f"process-tree RSS grew by {growth / MB:.1f} MB (baseline {baseline / MB:.1f} MB)"
        )


@pytest.mark.parametrize("lose_the_file", [False, True], ids=["resumed", "file-lost"])
async def test_a_job_interrupted_by_sigkill_is_resumed_by_the_next_server(
    servers: Servers, database_url: str, tmp_path: Path, lose_the_file: bool
) -> None:
    first = await servers.start()
    _, token = await signup_and_token(first.http)
    auth = bearer(token)
    source = write_bars(tmp_path / "bars.csv", 3_000_000)
    with servers.diagnosed():
        streamed = StreamedUpload(iter([source.read_bytes()]), {"fast": "10", "slow": "40"})
        r = await first.http.post(
            "/v1/backtests", headers={**auth, "content-type": streamed.content_type}, content=streamed.body()
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]

        async def running():
            row = await job_row(database_url, job_id)
            return row if row["status"] == "running" else None

        await eventually(running, within=30, what="the job to start running")
        await servers.kill(first)
        interrupted = await job_row(database_url, job_id)
        assert interrupted["status"] == "running" and interrupted["attempts"] == 1  # the kill beat the run

        spool_file = Path(servers.env["BACKTEST_SPOOL_DIR"]) / f"{job_id}.csv"
        assert spool_file.exists()
        if lose_the_file:
            spool_file.unlink()
        second = await servers.start()
        job = await wait_done(second, auth, job_id)
        if lose_the_file:
            assert job["status"] == "failed" and "no longer on" in job["error"], job
        else:
            assert job["status"] == "done", job
            assert job["result"] == await asyncio.to_thread(run_backtest, source, fast=10, slow=40)
            assert (await job_row(database_url, job_id))["attempts"] == 2
            png = await second.http.get(f"/v1/backtests/{job_id}/equity.png", headers=auth)
            assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
