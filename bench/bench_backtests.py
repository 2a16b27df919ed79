"""Backtest jobs (issue 13): the upload-to-result time of a 1M-row CSV through a real server.

    python bench/bench_backtests.py [--rows N] [--repeat K]

One real uvicorn process (the production entry point, its job sandbox started at startup) on a migrated
scratch database. Per repetition: ``POST /v1/backtests`` streams the file (the client reads it from disk
in 1 MiB slices), the server writes it to its spool, checks it in a sandbox worker and answers 202; then
``GET /v1/backtests/{id}`` is polled every 20 ms until ``done``. Reported: the time to the 202, the time
from 202 to ``done``, and the total, beside ``run_backtest`` on the same file in this process (the same
computation with no HTTP, no check and no sandbox), measured in the same run: the ratio is what the job
machinery costs. The file is generated into a temporary directory and deleted afterwards.

The issue sets no target for this figure, so the ratio is reported, not enforced: the server reads the file
twice (once to check it before the 202, once to run it), draws the PNG and is polled every 20 ms, so about
3x the direct call is what this design costs. Exit status 1 on any error, or if a job's result differs
from ``run_backtest``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import bench_database_url, bench_settings_env, save, serve  # noqa: E402


def write_file(path: Path, rows: int) -> None:
    from tests.backtests.helpers import generated_rows

    with path.open("wb") as f:
        for chunk in generated_rows(rows):
            f.write(chunk)


async def file_body(path: Path, boundary: str):
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="fast"\r\n\r\n10\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="slow"\r\n\r\n40\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="bars.csv"\r\n'
        "Content-Type: text/csv\r\n\r\n"
    ).encode()
    with path.open("rb") as f:
        while chunk := await asyncio.to_thread(f.read, 1 << 20):
            yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()


async def one_job(client: httpx.AsyncClient, auth: dict[str, str], path: Path) -> tuple[float, float, dict]:
    boundary = f"bench{uuid.uuid4().hex}"
    started = time.perf_counter()
    r = await client.post(
        "/v1/backtests",
        headers={**auth, "content-type": f"multipart/form-data; boundary={boundary}"},
        content=file_body(path, boundary),
    )
    if r.status_code != 202:
        raise RuntimeError(f"upload answered {r.status_code}: {r.text[:300]}")
    accepted = time.perf_counter()
    job_id = r.json()["id"]
    while True:
        body = (await client.get(f"/v1/backtests/{job_id}", headers=auth)).json()
        if body["status"] in ("done", "failed"):
            break
        await asyncio.sleep(0.02)  # polling interval: the resolution of the measurement
    done = time.perf_counter()
    if body["status"] != "done":
        raise RuntimeError(f"job failed: {body['error']}")
    return accepted - started, done - accepted, body["result"]


async def measure(base: str, path: Path, repeat: int) -> list[tuple[float, float, dict]]:
    async with httpx.AsyncClient(base_url=base, timeout=600) as client:
        creds = {"email": f"bench-{uuid.uuid4().hex[:8]}@example.com", "password": "correct horse battery"}
        assert (await client.post("/v1/auth/signup", json=creds)).status_code == 201
        token = (await client.post("/v1/auth/login", json=creds)).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        await one_job(client, auth, path)  # warm-up: the workers' first imports and plots
        return [await one_job(client, auth, path) for _ in range(repeat)]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from app.quant.backtest import run_backtest

    database_url = bench_database_url()
    with tempfile.TemporaryDirectory(prefix="tradedesk-bench-bt-") as tmp:
        path = Path(tmp) / "bars.csv"
        write_file(path, args.rows)
        size_mb = path.stat().st_size / 1e6
        direct = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            expected = run_backtest(path, fast=10, slow=40)
            direct.append(time.perf_counter() - t)
        env = bench_settings_env(
            database_url,
            APP_ENV="development",  # the sandboxes start with the server, as in production
            BACKTEST_SPOOL_DIR=str(Path(tmp) / "spool"),
            RATE_LIMIT_BACKTESTS="100000/hour",
            RATE_LIMIT_SIGNUP="100000/hour",
            LOG_LEVEL="WARNING",
        )
        with serve("app.main:app", env, workers=1) as base:
            runs = asyncio.run(measure(base, path, args.repeat))
    for _, _, result in runs:
        if result != expected:
            print(f"FAIL: the job's result differs from run_backtest: {result} != {expected}")
            return 1
    upload = [u for u, _, _ in runs]
    job = [j for _, j, _ in runs]
    total = [u + j for u, j, _ in runs]
    ratio = min(total) / min(direct)
    print(f"\nbacktest jobs: {args.rows:,} rows ({size_mb:.0f} MB), best of {args.repeat} (median)")
    print(f"  run_backtest in-process        {min(direct):7.3f} s  ({statistics.median(direct):.3f})")
    print(f"  upload + check -> 202          {min(upload):7.3f} s  ({statistics.median(upload):.3f})")
    print(f"  202 -> done (run + PNG)        {min(job):7.3f} s  ({statistics.median(job):.3f})")
    print(f"  upload-to-result               {min(total):7.3f} s  ({statistics.median(total):.3f})")
    print(f"  ratio to run_backtest          {ratio:7.2f}x  (reported; no target)")
    print(f"  rows/s upload-to-result        {args.rows / min(total):,.0f}")
    save(
        "backtests",
        {
            "rows": args.rows,
            "bytes": int(size_mb * 1e6),
            "direct_s": direct,
            "upload_s": upload,
            "job_s": job,
            "total_s": total,
            "ratio": ratio,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
