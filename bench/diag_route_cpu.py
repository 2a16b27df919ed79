"""Diagnostics for `make loadtest`: the CPU each route of the mix costs, one route at a time.

Starts the same stack as bench/loadtest.py (``python -m app``, 2 workers, production settings, real
PostgreSQL and Redis), then drives each route alone at a modest constant rate (bench/loadtest.lua) and
reads, from /proc, the CPU time the server's processes (workers and their tool/backtest sandboxes),
Redis and PostgreSQL spent meanwhile, per request. The sum over the mix says how many cores a rate needs:
``--rate 1000`` prints the cores the 1,000 req/s mix would take on this box, against ``os.cpu_count()``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_orders import _cpu_by_pid, _delta, _named, _pids, _stat  # noqa: E402
from bench.common import bench_database_url, ensure_wrk, redis_url_if_reachable  # noqa: E402
from bench.loadtest import LUA, MIX, loadtest_env, prepare, production_stack  # noqa: E402

DIAG_RATES = {"quote": 400, "me": 200, "order": 60, "greeks": 60, "login": 20}


def _descendants(root: int) -> list[int]:
    parents = {pid: int(st[1]) for pid in _pids() if (st := _stat(pid))}
    out, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        out += frontier
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rate", type=int, default=1000, help="the mix rate whose core count is printed")
    args = parser.parse_args()
    redis_url = redis_url_if_reachable()
    if redis_url is None:
        print("needs Redis (REDIS_URL or redis://127.0.0.1:6379/0)", file=sys.stderr)
        return 1
    wrk = ensure_wrk()
    rows = []
    with tempfile.TemporaryDirectory(prefix="tradedesk-routecpu-") as tmp:
        workdir = Path(tmp)
        env = loadtest_env(bench_database_url(), redis_url, workdir)
        with production_stack(env, workdir) as (base, server_pid):
            tokens, users = prepare(base, 4, workdir)
            time.sleep(1)  # startup's own work (sandbox warm-up) out of the first reading
            for route in MIX:
                stats = workdir / f"{route.name}.json"
                server = _descendants(server_pid)
                others = {"redis": _named("redis-server"), "postgres": _named("postgres")}
                before = (_cpu_by_pid(server), {k: _cpu_by_pid(v) for k, v in others.items()})
                subprocess.run(
                    [wrk, "-t1", "-c16", f"-d{args.seconds}s", "--timeout=10s", "-s", LUA, base],
                    env={
                        **os.environ,
                        "LT_ROUTE": route.name,
                        "LT_RATE": str(DIAG_RATES[route.name]),
                        "LT_TOKENS": str(tokens),
                        "LT_USERS": str(users),
                        "LT_RUN": f"cpu{int(time.time())}",
                        "LT_STATS": str(stats),
                        "WRK_THREADS": "1",
                    },
                    capture_output=True,
                    check=True,
                )
                data = json.loads(stats.read_text())
                n = data["requests"]
                server_us = 1e6 * _delta(before[0], _cpu_by_pid(server)) / n
                other_us = {k: 1e6 * _delta(before[1][k], _cpu_by_pid(v)) / n for k, v in others.items()}
                rows.append((route, n, data, server_us, other_us))
    print(
        f"| route | rate/s | requests | server CPU µs/req | Redis µs/req | PostgreSQL µs/req | p50 ms | "
        f"cores at {args.rate:,} req/s mix |"
    )
    print("|---|---|---|---|---|---|---|---|")
    total = 0.0
    for route, n, data, server_us, other_us in rows:
        cores = args.rate * route.share * (server_us + sum(other_us.values())) / 1e6
        total += cores
        print(
            f"| {route.label} | {DIAG_RATES[route.name]} | {n:,} | {server_us:,.0f} | {other_us['redis']:,.0f} | "
            f"{other_us['postgres']:,.0f} | {data['p50_us'] / 1000:.2f} | {cores:.2f} |"
        )
    print(
        f"\nthe {args.rate:,} req/s mix needs {total:.2f} cores of server, Redis and PostgreSQL CPU on this box "
        f"(wrk not counted); it has {os.cpu_count()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
