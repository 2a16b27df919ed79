"""Shared state across two REAL processes: two uvicorn servers (separate interpreters, event loops and Redis
pools) on one Redis database, in front of one loopback fake of Alpaca Market Data v2 that counts every
request it receives. The in-process tests (test_alpaca_routes.py) run two apps in one event loop; this
one proves the same guarantees hold between operating-system processes:

* single-flight: concurrent misses for one symbol spread over both processes make ONE upstream request,
  and a copy fetched by one process is a HIT in the other;
* breaker: failures seen by process A open the breaker for process B too (503 + Retry-After, nothing sent),
  and after the reset period exactly one half-open trial goes through across both processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from tests.market.conftest import ALPACA_KEY_ID, ALPACA_SECRET
from tests.outbound.fake_provider import SNAPSHOT_PATH, FakeProvider, Reply, alpaca_snapshot, slow_snapshot
from tests.support.servers import free_port, server_env
from tests.support.settings import TEST_FERNET_KEY, TEST_JWT_SECRET, TEST_WEBHOOK_SECRET

ROOT = Path(__file__).resolve().parents[2]
QUOTE = "/v1/market-data/quotes/{}"
READY_SECONDS = 15.0
STOP_SECONDS = 10.0
FAIL_MAX = 2
RESET_SECONDS = 2


def _output(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-4000:]


def _spawn(port: int, env: dict[str, str], cwd: Path, log: IO[bytes]) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-proxy-headers",
        "--no-access-log",
        "--log-level",
        "warning",
        "--timeout-graceful-shutdown",
        "3",
    ]
    # cwd: an empty directory, so no developer .env is read; the app is found through PYTHONPATH.
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)


async def _wait_ready(base: str, proc: subprocess.Popen[bytes], log: IO[bytes]) -> None:
    deadline = time.monotonic() + READY_SECONDS
    async with httpx.AsyncClient(timeout=1) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server {base} exited with {proc.returncode}:\n{_output(log)}")
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(base + "/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.05)  # polling for startup, bounded by READY_SECONDS
    raise RuntimeError(f"server {base} not ready after {READY_SECONDS} s:\n{_output(log)}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(STOP_SECONDS)


@contextlib.asynccontextmanager
async def uvicorn_servers(count: int, env: dict[str, str], cwd: Path) -> AsyncIterator[list[str]]:
    """``count`` single-worker uvicorn processes serving ``app.main:app``; always terminated on exit."""
    servers: list[tuple[subprocess.Popen[bytes], str, IO[bytes]]] = []
    try:
        for _ in range(count):
            port = free_port()
            log = tempfile.TemporaryFile()
            servers.append((_spawn(port, env, cwd, log), f"http://127.0.0.1:{port}", log))
        await asyncio.gather(*(_wait_ready(base, proc, log) for proc, base, log in servers))
        yield [base for _, base, _ in servers]
    except BaseException:
        for _, base, log in servers:  # shown by pytest with the failure
            sys.stderr.write(f"--- server {base} output ---\n{_output(log)}\n")
        raise
    finally:
        await asyncio.gather(*(asyncio.to_thread(_stop, proc) for proc, _, _ in servers))
        for _, _, log in servers:
            log.close()


@pytest.mark.redis
async def test_two_uvicorn_processes_share_single_flight_cache_and_breaker(
    require_redis: str, database_url: str, fake: FakeProvider, tmp_path: Path
) -> None:
    env = server_env(
        DATABASE_URL=database_url,
        REDIS_URL=require_redis,
        FRONTEND_URL="http://localhost:3000",
        JWT_SECRET=TEST_JWT_SECRET,
        STRIPE_WEBHOOK_SECRET=TEST_WEBHOOK_SECRET,
        TOKEN_ENCRYPTION_KEY=TEST_FERNET_KEY,
        APP_ENV="test",
        LOG_LEVEL="WARNING",
        RATE_LIMIT_DEFAULT="100000/minute",
        MARKET_DATA_PROVIDER="alpaca",
        ALPACA_DATA_BASE_URL=fake.url,
        ALPACA_API_KEY_ID=ALPACA_KEY_ID,
        ALPACA_API_SECRET_KEY=ALPACA_SECRET,
        HTTP_TIMEOUT_SECONDS="3",
        BREAKER_FAIL_MAX=str(FAIL_MAX),
        BREAKER_RESET_SECONDS=str(RESET_SECONDS),
        MARKET_DATA_CACHE_SECONDS="60",
    )
    fake.on(SNAPSHOT_PATH, slow_snapshot(1.0))  # keeps every request of the wave in flight together
    async with uvicorn_servers(2, env, tmp_path) as (a, b), httpx.AsyncClient(timeout=10) as http:
        # Warm both processes (connections, Redis pool) without an upstream call: a bad symbol is a 422.
        for base in (a, b):
            assert (await http.get(base + QUOTE.format("1BAD"))).status_code == 422
        assert fake.requests == []

        # (a) 40 concurrent misses for one symbol, alternating between the processes: ONE upstream request.
        wave = await asyncio.gather(*(http.get(base + QUOTE.format("AAPL")) for base in [a, b] * 20))
        assert [r.status_code for r in wave] == [200] * 40, [r.text for r in wave if r.status_code != 200]
        assert {r.headers["x-cache"] for r in wave} == {"MISS"}  # all were waiting on the one fetch
        assert len({r.text for r in wave}) == 1
        assert [req.path for req in fake.requests] == ["/v2/stocks/AAPL/snapshot"]

        # A copy fetched by one process is a HIT in the other, with no upstream call.
        fake.on(SNAPSHOT_PATH, alpaca_snapshot)
        first = await http.get(a + QUOTE.format("IBM"))
        assert first.status_code == 200 and first.headers["x-cache"] == "MISS"
        assert len(fake.requests) == 2
        other = await http.get(b + QUOTE.format("IBM"))
        assert other.status_code == 200 and other.headers["x-cache"] == "HIT"
        assert other.json() == first.json()
        for base in (a, b):
            assert (await http.get(base + QUOTE.format("AAPL"))).headers["x-cache"] == "HIT"
        assert len(fake.requests) == 2

        # (b) BREAKER_FAIL_MAX failures through process A open the breaker for process B as well.
        fake.on(SNAPSHOT_PATH, Reply(500, {"message": "boom"}))  # a failure, never retried
        for symbol in ("FAILA", "FAILB"):
            assert (await http.get(a + QUOTE.format(symbol))).status_code == 503
        assert len(fake.requests) == 2 + FAIL_MAX
        refused = await http.get(b + QUOTE.format("MSFT"))
        assert refused.status_code == 503, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert "circuit open" in refused.json()["detail"]
        assert 1 <= int(refused.headers["retry-after"]) <= RESET_SECONDS
        assert len(fake.requests) == 2 + FAIL_MAX  # B sent nothing
        metrics = (await http.get(b + "/metrics")).text
        assert 'circuit_breaker_state{provider="alpaca-data"} 2.0' in metrics

        # After the reset period, exactly one half-open trial across both processes; its success closes it.
        await asyncio.sleep(RESET_SECONDS + 0.1)
        fake.on(SNAPSHOT_PATH, slow_snapshot(0.5))
        trial_wave = await asyncio.gather(
            *(http.get(base + QUOTE.format(f"T{i}")) for i, base in enumerate([a, b] * 5))
        )
        assert sorted(r.status_code for r in trial_wave) == [200] + [503] * 9
        assert len(fake.requests) == 2 + FAIL_MAX + 1
        fake.on(SNAPSHOT_PATH, alpaca_snapshot)
        for base, symbol in ((a, "CLOSEDA"), (b, "CLOSEDB")):
            assert (await http.get(base + QUOTE.format(symbol))).status_code == 200
        assert len(fake.requests) == 2 + FAIL_MAX + 3
