from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.metrics import grew, scrape


async def test_healthz_and_request_id(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert len(r.headers["x-request-id"]) >= 16
    echoed = await client.get("/healthz", headers={"X-Request-ID": "abc-123.req"})
    assert echoed.headers["x-request-id"] == "abc-123.req"
    # A hostile request id (header injection, absurd length) is replaced, not echoed.
    hostile = await client.get("/healthz", headers={"X-Request-ID": "x" * 500})
    assert hostile.headers["x-request-id"] != "x" * 500


async def test_security_headers(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert "strict-transport-security" not in r.headers  # only in production


async def test_hsts_in_production(make_client) -> None:
    client = await make_client(app_env="production", frontend_url="https://app.example.com")
    r = await client.get("/healthz")
    assert r.headers["strict-transport-security"].startswith("max-age=")


async def test_metrics_exposes_contract_names(client: httpx.AsyncClient) -> None:
    await client.get("/readyz")
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in (
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "db_pool_checked_out",
        "db_pool_size",
        "db_pool_timeouts_total",
        "rate_limit_hits_total",
        "orders_total",
        "alerts_queue_depth",
        "alerts_sent_total",
        "alerts_failed_total",
        "discord_rate_limited_total",
        "alert_send_duration_seconds_bucket",
        "orders_pending_reconciliation",
        "reconcile_runs_total",
        "reconcile_duration_seconds_bucket",
    ):
        assert name in text, name
    assert 'route="/readyz"' in text


async def test_metrics_label_routes_by_template_not_raw_path(client: httpx.AsyncClient) -> None:
    before = await scrape(client)
    for i in range(3):
        await client.get(f"/no/such/path/{i}")
    text = await scrape(client)
    assert "/no/such/path/" not in text
    assert grew(before, text, "http_requests_total", method="GET", route="<unmatched>", status="404") == 3


# --------------------------------------------------------------------------------------------------
# Several workers: PROMETHEUS_MULTIPROC_DIR (real processes, as uvicorn's workers are)
# --------------------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[2]

_WORKER = """
import sys
from app.core import observability as o
o.HTTP_REQUESTS.labels("GET", "/v1/x", "200").inc(int(sys.argv[1]))
o.DB_POOL_SIZE.set(5)
o.HTTP_IN_FLIGHT.inc()
o.CIRCUIT_BREAKER_STATE.labels("alpaca").set(int(sys.argv[2]))
print("ready", flush=True)
if sys.stdin.readline().strip() == "stop":
    o.mark_worker_stopped()  # what the lifespan does on a clean shutdown
"""

_SCRAPE = """
import sys
from app.core import observability as o
if "prune" in sys.argv:
    print("pruned", *o.prune_dead_workers(), file=sys.stderr)  # what a starting worker does
sys.stdout.write(o.metrics_payload()[0].decode())
"""


def _env(directory: Path) -> dict[str, str]:
    return {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": str(ROOT)}


def _worker(directory: Path, requests: int, breaker: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(requests), str(breaker)],
        cwd=ROOT,
        env=_env(directory),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _scrape(directory: Path, *args: str) -> tuple[dict[str, float], str]:
    done = subprocess.run(
        [sys.executable, "-c", _SCRAPE, *args],
        cwd=ROOT,
        env=_env(directory),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    samples = {}
    for line in done.stdout.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples, done.stderr


def test_metrics_aggregate_across_worker_processes(tmp_path: Path) -> None:
    requests = 'http_requests_total{method="GET",route="/v1/x",status="200"}'
    breaker = 'circuit_breaker_state{provider="alpaca"}'
    a = _worker(tmp_path, 3, 2)  # this worker saw the breaker open
    b = _worker(tmp_path, 4, 0)
    try:
        samples, _ = _scrape(tmp_path)
        assert samples[requests] == 7  # counters: summed over workers
        assert samples["db_pool_size"] == 10  # livesum: total pool capacity of the live workers
        assert samples["http_requests_in_flight"] == 2
        assert samples[breaker] == 2  # livemax: the worst state any live worker applies
        assert not any("pid=" in name for name in samples)  # one series per label set, not per process

        # A clean stop (lifespan shutdown) drops the worker's live gauges; its counts stay.
        assert b.stdin is not None
        b.stdin.write("stop\n")
        b.stdin.close()
        assert b.wait(timeout=30) == 0
        samples, _ = _scrape(tmp_path)
        assert samples[requests] == 7 and samples["db_pool_size"] == 5 and samples[breaker] == 2

        # A crash runs no shutdown: the next worker to start prunes the dead worker's live gauges.
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=30)
        samples, pruned = _scrape(tmp_path, "prune")
        assert str(a.pid) in pruned.split()
        assert samples[requests] == 7  # counters never go backwards
        assert samples["db_pool_size"] == 0 and samples["http_requests_in_flight"] == 0
        assert breaker not in samples
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_entry_point_empties_the_metrics_dir_before_anything_creates_metrics(tmp_path: Path) -> None:
    stale = [tmp_path / "counter_4242.db", tmp_path / "gauge_livesum_4242.db", tmp_path / "histogram_4242.db"]
    for path in stale:
        path.write_bytes(b"old run")
    (tmp_path / "notes.txt").write_text("not a metrics file")
    code = (
        "import sys, app.__main__ as entry\n"
        "assert 'prometheus_client' not in sys.modules, 'metrics would be created before the wipe'\n"
        "print(entry.prepare_multiprocess_dir())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path)
    assert not any(path.exists() for path in stale)
    assert (tmp_path / "notes.txt").exists()
