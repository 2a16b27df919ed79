"""Benchmark plumbing: real uvicorn servers (2 workers, one listening socket each) on loopback, measured with wrk.

Used by every ``bench/bench_*.py``. Nothing here is imported by the app or the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.support.servers import stop_process

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("[bench] installing wrk from Debian's packages", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "wrk"], env=env, check=False, stdout=subprocess.DEVNULL
        )
        if not shutil.which("wrk"):
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, stdout=subprocess.DEVNULL)
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", "wrk"], env=env, check=False, stdout=subprocess.DEVNULL
            )
    path = shutil.which("wrk")
    if not path:
        sys.exit("wrk is required for the HTTP benchmarks (Debian package 'wrk')")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.2)
    raise RuntimeError(f"server at {url} did not become ready")


@contextlib.contextmanager
def serve(app_spec: str, env: dict[str, str], *, workers: int = 2, factory: bool = False) -> Iterator[str]:
    port = free_port()
    # As production runs it: app/supervisor.py's one listening socket per worker (bench/serve.py).
    cmd = [sys.executable, "-m", "bench.serve", app_spec, "--port", str(port), "--workers", str(workers)]
    if factory:
        cmd.append("--factory")
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base + "/healthz")
        yield base
    except Exception:
        log.seek(0)
        sys.stderr.write(log.read().decode(errors="replace")[-4000:])
        raise
    finally:
        stop_process(proc, 20)
        log.close()


@dataclass
class WrkResult:
    label: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    errors: int

    def row(self) -> str:
        return (
            f"| {self.label} | {self.requests_per_s:,.0f} | {self.p50_ms:.2f} | {self.p99_ms:.2f} | "
            f"{self.non_2xx} | {self.errors} |"
        )


def _ms(value: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", value)
    if not m:
        return float("nan")
    number, unit = float(m.group(1)), m.group(2)
    return number / 1000 if unit == "us" else number * 1000 if unit == "s" else number


def run_wrk(
    label: str,
    url: str,
    *,
    connections: int = 64,
    threads: int = 2,
    duration: int = 10,
    script: str | None = None,
    warmup: int = 2,
) -> WrkResult:
    wrk = ensure_wrk()
    base = [wrk, "-t", str(threads), "-c", str(connections), "--latency"]
    if script:
        base += ["-s", script]
    if warmup:
        subprocess.run([*base, "-d", f"{warmup}s", url], capture_output=True, text=True, check=True)
    out = subprocess.run(
        [*base, "-d", f"{duration}s", url], capture_output=True, text=True, check=True
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return WrkResult(
        label,
        rps,
        p50,
        p99,
        int(non2xx.group(1)) if non2xx else 0,
        sum(int(g) for g in errs.groups()) if errs else 0,
    )


TABLE_HEADER = "| server | req/s | p50 ms | p99 ms | non-2xx | socket errors |\n|---|---|---|---|---|---|"


def compare_full_to_bare(
    results: list[WrkResult], extra_rows: Sequence[WrkResult] = ()
) -> tuple[float, float, float]:
    """Print the table of interleaved bare/full runs; return (mean full req/s, full/bare ratio, worst full p99)."""
    bare = [r for r in results if r.label.startswith("bare")]
    full = [r for r in results if r.label.startswith("full")]
    bare_rps = sum(r.requests_per_s for r in bare) / len(bare)
    full_rps = sum(r.requests_per_s for r in full) / len(full)
    print(TABLE_HEADER)
    for r in [*results, *extra_rows]:
        print(r.row())
    return full_rps, full_rps / bare_rps, max(r.p99_ms for r in full)


def bench_settings_env(database_url: str, redis_url: str | None = None, **extra: str) -> dict[str, str]:
    from cryptography.fernet import Fernet

    env = {
        "DATABASE_URL": database_url,
        "FRONTEND_URL": "http://localhost:3000",
        "JWT_SECRET": "bench-jwt-secret-0123456789-abcdefghijklmnopqrstuvwxyz",
        "STRIPE_WEBHOOK_SECRET": "whsec_bench_0123456789abcdef",
        "TOKEN_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "APP_ENV": "test",
        "LOG_LEVEL": "INFO",  # the full stack logs one JSON access line per request, as in production
        "RATE_LIMIT_DEFAULT": "100000000/minute",  # one loopback client would trip the real default
    }
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update(extra)
    return env


def bench_database_url() -> str:
    """A migrated scratch database on the reachable server (TEST_DATABASE_URL/DATABASE_URL) or embedded."""
    sys.path.insert(0, str(ROOT))
    from scripts.dev import reachable, start_embedded
    from tests.support import db as dbsupport

    url = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if not url or not reachable(url):
        url = start_embedded(Path(tempfile.mkdtemp(prefix="tradedesk-bench-pg-")), cleanup_mode="delete")
    os.environ["TEST_DATABASE_URL"] = url
    name, db_url = asyncio.run(dbsupport.create_database("tradedesk_bench"))
    dbsupport.migrate(db_url)
    import atexit

    atexit.register(lambda: asyncio.run(dbsupport.drop_database(name)))
    return db_url


def redis_url_if_reachable() -> str | None:
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        return url
    except Exception:
        return None


async def sql_async(database_url: str, query: str, *args: Any, fetch: bool = False) -> Any:
    import asyncpg

    from tests.support.db import asyncpg_dsn

    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return await (conn.fetch(query, *args) if fetch else conn.execute(query, *args))
    finally:
        await conn.close()


def sql(database_url: str, query: str, *args: Any, fetch: bool = False) -> Any:
    """One statement on its own connection (``fetch``: the rows, else the status string)."""
    return asyncio.run(sql_async(database_url, query, *args, fetch=fetch))


# ------------------------------------------------------------------------------------------ HTTP clients
def http_request(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    *,
    timeout: float = 30,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection (a JSON body); (status, headers, body), errors included."""
    request = urllib.request.Request(
        url, data=body, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def signup_and_login(base: str, email: str, password: str) -> str:
    """Sign a user up and log in over HTTP; the bearer token."""
    creds = json.dumps({"email": email, "password": password}).encode()
    status, _, body = http_request("POST", base + "/v1/auth/signup", creds)
    if status != 201:
        raise RuntimeError(f"signup answered {status}: {body[:200]!r}")
    status, _, body = http_request("POST", base + "/v1/auth/login", creds)
    if status != 200:
        raise RuntimeError(f"login answered {status}: {body[:200]!r}")
    return str(json.loads(body)["access_token"])


def probe_healthz(
    base: str, stop: threading.Event, *, start_after: float = 0.0, stamps: list[float] | None = None
) -> list[float]:
    """Sequential GET /healthz, each on a new connection (so every worker is sampled); latencies in ms.
    ``stamps`` receives each kept probe's end (``time.monotonic()``), in the same order."""
    parts = urlsplit(base)
    samples: list[float] = []
    begin = time.monotonic()
    while not stop.is_set():
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        try:
            conn.request("GET", "/healthz")
            resp = conn.getresponse()
            resp.read()
            ok = resp.status == 200
        finally:
            conn.close()
        elapsed = (time.perf_counter() - t0) * 1000
        if not ok:
            raise RuntimeError(f"/healthz answered {resp.status}")
        if (now := time.monotonic()) - begin >= start_after:
            samples.append(elapsed)
            if stamps is not None:
                stamps.append(now)
        time.sleep(0.002)  # ~ a few hundred probes/s: a monitor, not a load generator
    return samples


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summary(values: Sequence[float]) -> dict[str, float]:
    """Count, median, p99 and max of latencies in ms."""
    return {
        "n": len(values),
        "p50_ms": statistics.median(values),
        "p99_ms": pct(values, 99),
        "max_ms": max(values),
    }


def save(name: str, payload: object) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2, default=lambda o: asdict(o)))
