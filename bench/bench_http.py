"""Issue 2 benchmark: /healthz through the full middleware stack vs a bare FastAPI app, same run.

Target: the full stack keeps >= 60 % of the bare app's requests/s, with p99 < 25 ms at 64 connections.
Both servers run uvicorn with 2 workers on loopback; wrk drives 64 connections.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    bench_database_url,
    bench_settings_env,
    compare_full_to_bare,
    run_wrk,
    save,
    serve,
)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()

    env = bench_settings_env(bench_database_url())
    results = []
    # Interleave bare/full twice so drift on a shared machine hits both equally.
    for round_ in (1, 2):
        with serve("bench.bare_app:app", {}) as base:
            results.append(
                run_wrk(
                    f"bare FastAPI /healthz (round {round_})",
                    base + "/healthz",
                    connections=args.connections,
                    duration=args.duration,
                )
            )
        with serve("app.main:app", env) as base:
            results.append(
                run_wrk(
                    f"full stack /healthz (round {round_})",
                    base + "/healthz",
                    connections=args.connections,
                    duration=args.duration,
                )
            )

    _, ratio, p99 = compare_full_to_bare(results)
    ok = ratio >= 0.60 and p99 < 25 and all(r.non_2xx == 0 for r in results)
    print(
        f"\nfull/bare requests/s ratio: {ratio:.2f} (target >= 0.60); full-stack worst p99 {p99:.2f} ms "
        f"(target < 25 ms) -> {'PASS' if ok else 'MISS'}"
    )
    save("http", {"results": results, "ratio": ratio, "p99_ms": p99, "pass": ok})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
