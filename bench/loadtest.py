"""`make loadtest`: the mixed workload at a constant 1,000 requests/s for 60 s, then its knee.

The stack is started as production starts it: ``python -m app`` (the image's CMD) with
``WEB_CONCURRENCY=2``, ``APP_ENV=production``, a real PostgreSQL (a migrated scratch database on
TEST_DATABASE_URL/DATABASE_URL, else an embedded one) and Redis (REDIS_URL, else db 0 on loopback), the
paper broker and the synthetic market-data provider, metrics through PROMETHEUS_MULTIPROC_DIR. Limits
stay on; the per-user and per-IP budgets are raised through the environment because one loopback client
with 20 users would trip the real ones within a second (each check still runs on every request).

The load: one wrk process per route, each holding its share of the rate with ``bench/loadtest.lua``
(a per-thread send schedule; wrk alone would be closed-loop):

    60 % cached quotes (GET /v1/market-data/quotes/{symbol}, bearer, 8 symbols warmed first)
    15 % GET /v1/auth/me
    10 % POST /v1/orders on the paper broker, a new Idempotency-Key each
    10 % POST /v1/tools/greeks/execute (one option)
     5 % POST /v1/auth/login (Argon2id, the app's parameters)

Pass, on every route: the rate held (>= 99 % of its share), errors (non-2xx and socket errors) < 0.1 %,
p95 < 200 ms, p99 < 500 ms. The knee: the same mix at rising constant rates (``--knee-step`` apart, each
``--knee-duration`` s) until a step fails; the highest passing rate is printed. The exit status is that
of the 1,000 req/s run. Figures are recorded in docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    ROOT,
    bench_database_url,
    bench_settings_env,
    ensure_wrk,
    free_port,
    http_request,
    redis_url_if_reachable,
    save,
    signup_and_login,
    wait_ready,
)
from tests.support.servers import stop_process  # noqa: E402

LUA = str(Path(__file__).resolve().parent / "loadtest.lua")
HIGH = "100000000/minute"
PASSWORD = "loadtest-password-0123456789"
SYMBOLS = ["AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "TSLA", "META", "SPY"]
GREEKS = {
    "arguments": {
        "option_type": "call",
        "spot": 101.5,
        "strike": 100,
        "t_years": 0.25,
        "rate": 0.03,
        "dividend_yield": 0.01,
        "sigma": 0.22,
    }
}


@dataclass(frozen=True)
class Route:
    name: str
    label: str
    share: float
    connections: int  # enough free connections that a slot never waits for one at the knee


MIX = [
    Route("quote", "GET /v1/market-data/quotes/{symbol} (cached)", 0.60, 48),
    Route("me", "GET /v1/auth/me", 0.15, 16),
    Route("order", "POST /v1/orders (paper, new key)", 0.10, 24),
    Route("greeks", "POST /v1/tools/greeks/execute", 0.10, 24),
    Route("login", "POST /v1/auth/login", 0.05, 48),
]
MAX_ERROR_PCT = 0.1
MAX_P95_MS = 200.0
MAX_P99_MS = 500.0
MIN_RATE_HELD = 0.99


@dataclass
class RouteResult:
    route: str
    label: str
    target_rps: float
    rps: float
    requests: int
    errors: int
    status: dict[str, int]
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    problems: list[str] = field(default_factory=list)

    @property
    def error_pct(self) -> float:
        return 100.0 * self.errors / self.requests if self.requests else 100.0

    def judge(self) -> None:
        if self.rps < MIN_RATE_HELD * self.target_rps:
            self.problems.append(f"rate {self.rps:,.1f}/s < {MIN_RATE_HELD:.0%} of {self.target_rps:,.1f}/s")
        if self.error_pct >= MAX_ERROR_PCT:
            self.problems.append(f"errors {self.error_pct:.2f} % >= {MAX_ERROR_PCT} %")
        if self.p95_ms >= MAX_P95_MS:
            self.problems.append(f"p95 {self.p95_ms:.1f} ms >= {MAX_P95_MS:.0f} ms")
        if self.p99_ms >= MAX_P99_MS:
            self.problems.append(f"p99 {self.p99_ms:.1f} ms >= {MAX_P99_MS:.0f} ms")


@dataclass
class MixResult:
    rate: int
    duration: int
    routes: list[RouteResult]
    load_average: tuple[float, float, float]

    @property
    def passed(self) -> bool:
        return all(not r.problems for r in self.routes)

    @property
    def rps(self) -> float:
        return sum(r.rps for r in self.routes)

    def table(self) -> str:
        rows = [
            f"\nmixed load at {self.rate:,} req/s for {self.duration} s "
            f"(load average after: {' '.join(f'{x:.2f}' for x in self.load_average)})",
            "| route | target/s | achieved/s | requests | errors % | p50 ms | p95 ms | p99 ms | max ms | statuses |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.routes:
            statuses = " ".join(f"{k}:{v}" for k, v in sorted(r.status.items()))
            rows.append(
                f"| {r.label} | {r.target_rps:,.0f} | {r.rps:,.1f} | {r.requests:,} | {r.error_pct:.3f} | "
                f"{r.p50_ms:.2f} | {r.p95_ms:.2f} | {r.p99_ms:.2f} | {r.max_ms:.1f} | {statuses} |"
            )
        total = sum(r.requests for r in self.routes)
        errors = sum(r.errors for r in self.routes)
        rows.append(
            f"| **all** | {self.rate:,} | {self.rps:,.1f} | {total:,} | "
            f"{100.0 * errors / max(total, 1):.3f} | | max {max(r.p95_ms for r in self.routes):.2f} | "
            f"max {max(r.p99_ms for r in self.routes):.2f} | | |"
        )
        verdict = (
            "PASS"
            if self.passed
            else "FAIL: "
            + "; ".join(f"{r.route}: {', '.join(r.problems)}" for r in self.routes if r.problems)
        )
        rows.append(f"-> {verdict}")
        return "\n".join(rows)


def loadtest_env(database_url: str, redis_url: str, workdir: Path) -> dict[str, str]:
    """The stack's environment: production settings, 2 workers, budgets raised (the checks still run)."""
    return bench_settings_env(
        database_url,
        redis_url,
        APP_ENV="production",
        FRONTEND_URL="https://app.example.com",
        WEB_CONCURRENCY="2",
        PROMETHEUS_MULTIPROC_DIR=str(workdir / "metrics"),
        MARKET_DATA_PROVIDER="synthetic",
        BROKER_PROVIDER="paper",
        MARKET_DATA_CACHE_SECONDS="3600",  # "cached quotes": no expiry within the run
        RATE_LIMIT_DEFAULT=HIGH,
        RATE_LIMIT_LOGIN=HIGH,
        RATE_LIMIT_SIGNUP=HIGH,
        RATE_LIMIT_ORDERS=HIGH,
        RATE_LIMIT_TOOLS=HIGH,
    )


@contextlib.contextmanager
def production_stack(env: dict[str, str], workdir: Path) -> Iterator[tuple[str, int]]:
    """``python -m app`` with ``env`` (2 workers) on a free port; (base URL, its pid) once /healthz
    answers."""
    port = free_port()
    log = (workdir / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app"],
        cwd=ROOT,
        env={**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(port)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base + "/healthz")
        yield base, proc.pid
    except BaseException:
        log.flush()
        sys.stderr.write((workdir / "server.log").read_bytes().decode(errors="replace")[-4000:])
        raise
    finally:
        stop_process(proc)
        log.close()


def prepare(base: str, users: int, workdir: Path) -> tuple[Path, Path]:
    """Users (signed up and logged in over HTTP), the quote cache, the tool sandbox and an order path
    warmed; (tokens file, users file)."""
    tag = uuid.uuid4().hex[:8]
    emails = [f"loadtest-{tag}-{i}@example.com" for i in range(users)]
    with ThreadPoolExecutor(4) as pool:
        tokens = list(pool.map(lambda email: signup_and_login(base, email, PASSWORD), emails))
    tokens_file, users_file = workdir / "tokens.txt", workdir / "users.tsv"
    tokens_file.write_text("\n".join(tokens) + "\n")
    users_file.write_text("".join(f"{email}\t{PASSWORD}\n" for email in emails))
    auth = {"Authorization": f"Bearer {tokens[0]}"}
    for symbol in SYMBOLS:
        status, _, body = http_request("GET", f"{base}/v1/market-data/quotes/{symbol}", headers=auth)
        if status != 200:
            raise RuntimeError(f"warming the quote of {symbol} answered {status}: {body[:200]!r}")
    for _ in range(8):  # every tool worker of both processes, roughly
        status, _, body = http_request(
            "POST", base + "/v1/tools/greeks/execute", json.dumps(GREEKS).encode(), auth
        )
        if status != 200:
            raise RuntimeError(f"warming the greeks tool answered {status}: {body[:200]!r}")
    return tokens_file, users_file


def run_mix(
    base: str,
    rate: int,
    duration: int,
    tokens: Path,
    users: Path,
    workdir: Path,
    *,
    routes: list[Route] = MIX,
    timeout: float = 5.0,
) -> MixResult:
    """Every route's wrk at once, for ``duration`` seconds; their results, judged."""
    wrk = ensure_wrk()
    run = uuid.uuid4().hex[:10]
    procs = []
    for route in routes:
        stats = workdir / f"stats-{rate}-{route.name}.json"
        stats.unlink(missing_ok=True)
        env = {
            **os.environ,
            "LT_ROUTE": route.name,
            "LT_RATE": str(rate * route.share),
            "LT_TOKENS": str(tokens),
            "LT_USERS": str(users),
            "LT_RUN": f"{run}{route.name[0]}",
            "LT_STATS": str(stats),
            "WRK_THREADS": "1",
        }
        cmd = [
            wrk,
            "-t1",
            f"-c{route.connections}",
            f"-d{duration}s",
            f"--timeout={timeout:g}s",
            "-s",
            LUA,
            base,
        ]
        procs.append((route, stats, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)))
    results = []
    for route, stats, proc in procs:
        out, _ = proc.communicate(timeout=duration + 60)
        if proc.returncode != 0 or not stats.exists():
            raise RuntimeError(f"wrk for {route.name} failed ({proc.returncode}): {out[-2000:]}")
        data = json.loads(stats.read_text())
        sockets = sum(data["socket_errors"].values())
        non_2xx = sum(n for code, n in data["status"].items() if not code.startswith("2"))
        seconds = data["duration_us"] / 1e6
        result = RouteResult(
            route=route.name,
            label=route.label,
            target_rps=rate * route.share,
            rps=data["requests"] / seconds,
            requests=data["requests"],
            errors=non_2xx + sockets,
            status=data["status"],
            p50_ms=data["p50_us"] / 1000,
            p95_ms=data["p95_us"] / 1000,
            p99_ms=data["p99_us"] / 1000,
            max_ms=data["max_us"] / 1000,
        )
        result.judge()
        results.append(result)
    return MixResult(rate, duration, results, os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--duration", type=int, default=60)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--no-knee", action="store_true", help="only the --rate run")
    parser.add_argument(
        "--routes", default="", help="diagnostics: only these routes (comma-separated), at their shares"
    )
    parser.add_argument("--knee-step", type=int, default=250)
    parser.add_argument("--knee-duration", type=int, default=20)
    parser.add_argument("--knee-max", type=int, default=4000)
    args = parser.parse_args()

    redis_url = redis_url_if_reachable()
    if redis_url is None:
        print("make loadtest needs Redis (REDIS_URL or redis://127.0.0.1:6379/0)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="tradedesk-loadtest-") as tmp:
        workdir = Path(tmp)
        env = loadtest_env(bench_database_url(), redis_url, workdir)
        with production_stack(env, workdir) as (base, _):
            tokens, users = prepare(base, args.users, workdir)
            print(f"stack up at {base}: python -m app, 2 workers, {args.users} users", flush=True)
            wanted = set(filter(None, args.routes.split(",")))
            routes = [r for r in MIX if not wanted or r.name in wanted]
            main_run = run_mix(base, args.rate, args.duration, tokens, users, workdir, routes=routes)
            print(main_run.table(), flush=True)
            knee_runs: list[MixResult] = []
            if not args.no_knee:
                rate = args.rate
                while rate + args.knee_step <= args.knee_max:
                    rate += args.knee_step
                    time.sleep(2)  # let the previous step's queues drain before the next rate starts
                    step = run_mix(base, rate, args.knee_duration, tokens, users, workdir, routes=routes)
                    knee_runs.append(step)
                    print(step.table(), flush=True)
                    if not step.passed:
                        break
    passing = [r.rate for r in [main_run, *knee_runs] if r.passed]
    knee = max(passing) if passing else None
    print(
        f"\n{args.rate:,} req/s for {args.duration} s: {'PASS' if main_run.passed else 'FAIL'}; knee "
        + (f"{knee:,} req/s (the highest constant rate that passed)" if knee else "below the first rate")
        + ("" if args.no_knee else f", steps of {args.knee_step} req/s x {args.knee_duration} s")
    )
    save(
        "loadtest",
        {
            "main": asdict(main_run),
            "knee_steps": [asdict(r) for r in knee_runs],
            "knee_rps": knee,
        },
    )
    return 0 if main_run.passed else 1


if __name__ == "__main__":
    sys.exit(main())
