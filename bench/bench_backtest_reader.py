"""The backtester's reader against pyarrow's streaming CSV reader (issue 13, item 7).

    python bench/bench_backtest_reader.py            # 4 M rows (the figures in docs/quant.md)
    python bench/bench_backtest_reader.py --quick    # 1 M rows

On one generated file of minute bars with 6-decimal prices and ISO timestamps
(``2020-01-01T00:00:00Z,100.000025,…``), each in a fresh interpreter, best of ``--repeat``:

* ``raw``: ``pyarrow.csv.open_csv`` read to the end, timestamps and prices converted — the ceiling;
* ``strategy``: the trading rules alone (``_Strategy.step`` in 100,000-bar steps) on columns already
  in memory: what any reader must add to ``raw`` unless it overlaps the two;
* ``current``: ``app.quant.backtest.run_backtest`` as it ships (its NumPy fast path; pyarrow is
  hidden from the child, as in the production image, which does not install it);
* ``candidate``: ``bench/arrow_candidate.run_backtest_arrow`` — pyarrow for the reading, the strict
  parser kept only to locate errors.

The rule from the issue: adopt pyarrow if the candidate is within 20 % of ``raw`` while its peak
RSS stays under 150 MB and flat (the 4x smaller file's peak within 1.3x).  The script prints the
decision with the figures; its exit status is 1 only if the candidate's result differs from
``run_backtest``'s, since either decision is an outcome, not a miss.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_quant import write_bars  # noqa: E402
from bench.common import save  # noqa: E402

CHILD = r"""
import json, sys, time
which, path = sys.argv[1], sys.argv[2]
# imports first, outside the timing (pandas is what the current reader's first batch imports)
import numpy as np
from app.quant.backtest import _Strategy, run_backtest
if which == "current":
    sys.modules["pyarrow"] = None  # as installed in production: pandas then runs without it
    import pandas
else:
    from bench.arrow_candidate import STEP_ROWS, arrow_batches, run_backtest_arrow
if which == "strategy":  # the trading rules alone, on columns already in memory
    batches = list(arrow_batches(path))
    opens = np.concatenate([b.column(1).to_numpy() for b in batches])
    closes = np.concatenate([b.column(4).to_numpy() for b in batches])
    del batches
t0 = time.perf_counter()
if which == "raw":
    rows = 0
    for batch in arrow_batches(path):
        rows += batch.num_rows
    result = {"bars": rows}
elif which == "strategy":
    strategy = _Strategy(20, 50, 0.0, 100000.0)
    for lo in range(0, len(closes), STEP_ROWS):
        strategy.step(opens[lo : lo + STEP_ROWS], closes[lo : lo + STEP_ROWS])
    result = strategy.result()
elif which == "current":
    result = run_backtest(path, fast=20, slow=50)
else:
    result = run_backtest_arrow(path, fast=20, slow=50)
elapsed = time.perf_counter() - t0
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"result": result, "s": elapsed, "hwm_mb": hwm / 1024}))
"""


def run_child(which: str, path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, which, str(path)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if proc.returncode:
        raise SystemExit(f"{which} child failed:\n{proc.stderr}")
    out: dict = json.loads(proc.stdout)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 M rows instead of 4 M")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    rows = 1_000_000 if args.quick else 4_000_000
    small_rows = rows // 4
    kinds = ("raw", "strategy", "current", "candidate")
    with tempfile.TemporaryDirectory(prefix="bench-reader-") as tmp:
        path = Path(tmp) / f"bars_{rows}.csv"
        small = Path(tmp) / f"bars_{small_rows}.csv"
        size = write_bars(path, rows, decimals=6)
        write_bars(small, small_rows, decimals=6)
        print(f"{rows:,} rows, {size / 1e6:.0f} MB, 6-decimal prices, ISO timestamps; best of {args.repeat}")
        runs: dict[str, list[dict]] = {k: [] for k in kinds}
        for _ in range(args.repeat):  # interleaved, so a burst of load hits all three alike
            for k in kinds:
                runs[k].append(run_child(k, path))
        small_hwm = max(run_child("candidate", small)["hwm_mb"] for _ in range(2))
    best = {k: min(o["s"] for o in runs[k]) for k in kinds}
    hwm = {k: max(o["hwm_mb"] for o in runs[k]) for k in kinds}
    same = runs["candidate"][0]["result"] == runs["current"][0]["result"] == runs["strategy"][0]["result"]
    assert all(o["result"]["bars"] == rows for k in kinds for o in runs[k])
    ratio = best["candidate"] / best["raw"]
    print(f"  {'reader':<10} {'best s':>8} {'M rows/s':>9} {'peak RSS MB':>12} {'vs raw':>7}")
    for k in kinds:
        rss = "(in memory)" if k == "strategy" else f"{hwm[k]:.1f}"
        print(f"  {k:<10} {best[k]:8.3f} {rows / best[k] / 1e6:9.2f} {rss:>12} {best[k] / best['raw']:6.2f}x")
    floor = (best["raw"] + best["strategy"]) / best["raw"]
    print(f"  floor for any reader that runs the strategy after reading: raw + strategy = {floor:.2f}x raw")
    flat = hwm["candidate"] / small_hwm
    reasons = []
    if ratio > 1.2:
        reasons.append(f"candidate {ratio:.2f}x the raw pyarrow read (rule: <= 1.20x)")
    if hwm["candidate"] >= 150:
        reasons.append(f"candidate peak RSS {hwm['candidate']:.0f} MB (rule: < 150 MB)")
    if flat > 1.3:
        reasons.append(f"candidate peak RSS {flat:.2f}x the {small_rows:,}-row file's (rule: flat, <= 1.3x)")
    print(f"  candidate peak RSS on {small_rows:,} rows: {small_hwm:.1f} MB ({flat:.2f}x from 4x the rows)")
    print(f"  candidate result == run_backtest result: {same}")
    print(f"  candidate vs current: {best['current'] / best['candidate']:.2f}x faster")
    print("decision: " + ("adopt pyarrow" if not reasons else "keep the NumPy reader: " + "; ".join(reasons)))
    save(
        "backtest_reader",
        {
            "rows": rows,
            "best_s": best,
            "peak_rss_mb": hwm,
            "small_peak_rss_mb": small_hwm,
            "floor": floor,
            "same": same,
        },
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
