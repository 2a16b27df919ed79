"""Signed Stripe deliveries through the full stack, 2 workers, real PostgreSQL, beside PostgreSQL alone.

* unique event ids (each an ``invoice.paid`` that records one payment): target >= 1,500 events/s
  with p99 < 100 ms at 32 concurrent deliveries (issue 15; Stripe delivers to one endpoint with modest
  concurrency). The same load at 64 connections is reported beside it;
* the same event id repeated (every delivery after the first is a duplicate): reported beside it;
* the baseline, in the same command: ``pgbench`` at the same 32 clients running the very statement the
  app runs per event (``_CLAIM_AND_PAY`` of app/billing/repository.py, with fresh ids), each its own
  committed transaction. The app's unique rate is printed as a ratio of it: what share of the
  database's own single-statement commit rate the web tier delivers.
Events are signed exactly as Stripe signs them, just before each run (300 s tolerance).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import stripe

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.billing.repository import _CLAIM_AND_PAY  # noqa: E402
from bench.common import bench_database_url, bench_settings_env, run_wrk, save, serve  # noqa: E402
from tests.support.db import asyncpg_dsn  # noqa: E402

SECRET = "whsec_bench_0123456789abcdef"
LUA = str(Path(__file__).resolve().parent / "webhook.lua")
TARGET_RPS = 1500
TARGET_P99_MS = 100


def pgbench_script() -> str:
    """The app's per-event statement for pgbench: its bind parameters become pgbench variables, the ids
    fresh per transaction (client id and a random 62-bit number; a collision is claimed by nobody, as in
    the app)."""
    values = {
        ":id": "'evt_pg_' || :client_id || '_' || :n",
        ":type": "'invoice.paid'",
        ":created": "now()",
        ":invoice_id": "'in_pg_' || :client_id || '_' || :n",
        ":customer": "'cus_00001'",
        ":amount": "1999",
        ":currency": "'usd'",
        ":paid_at": "now()",
    }
    sql = re.sub(r":[a-z_]+", lambda m: values[m.group(0)], str(_CLAIM_AND_PAY))
    return "\\set n random(1, 4611686018427387903)\n" + sql + ";\n"


def run_pgbench(database_url: str, clients: int, duration: int, workdir: Path) -> dict[str, float] | None:
    """pgbench of the per-event statement at ``clients`` connections; tps and latency, or None without
    pgbench (PostgreSQL's client package)."""
    pgbench = shutil.which("pgbench")
    if not pgbench:
        print("[bench] pgbench not found: the PostgreSQL baseline is skipped", file=sys.stderr)
        return None
    script = workdir / "claim_and_pay.sql"
    script.write_text(pgbench_script())
    out = subprocess.run(
        [
            pgbench,
            "-n",
            "-M",
            "prepared",
            "-c",
            str(clients),
            "-j",
            "2",
            "-T",
            str(duration),
            "-f",
            str(script),
            asyncpg_dsn(database_url),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    tps = float(re.search(r"tps = ([\d.]+)", out).group(1))
    latency = float(re.search(r"latency average = ([\d.]+) ms", out).group(1))
    return {"tps": tps, "latency_avg_ms": latency, "clients": clients}


def write_events(path: Path, count: int, *, same_id: bool, kind: str = "invoice.paid") -> None:
    now = int(time.time())
    header_ts = now
    fixed = f"evt_{uuid.uuid4().hex[:24]}"
    with path.open("w") as fh:
        for i in range(count):
            event_id = fixed if same_id else f"evt_{uuid.uuid4().hex[:24]}"
            if kind == "invoice.paid":
                invoice = "in_fixed" if same_id else f"in_{i:09d}"
                obj = {
                    "object": "invoice",
                    "id": invoice,
                    "customer": f"cus_{i % 500:05d}",
                    "amount_paid": 1999,
                    "currency": "usd",
                }
            else:  # customer.subscription.updated: the transactional path (row lock, compare, update)
                obj = {
                    "object": "subscription",
                    "id": f"sub_{i % 5000:05d}",
                    "customer": f"cus_{i % 5000:05d}",
                    "status": "active" if i % 2 else "past_due",
                }
            payload = json.dumps(
                {
                    "id": event_id,
                    "object": "event",
                    "created": now - count + i,
                    "type": kind,
                    "data": {"object": obj},
                },
                separators=(",", ":"),
            )
            sig = stripe.WebhookSignature.generate_signature_header(payload, SECRET, timestamp=header_ts)
            fh.write(f"{payload}\t{sig}\n")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    database_url = bench_database_url()
    env = bench_settings_env(
        database_url, STRIPE_WEBHOOK_SECRET=SECRET, DB_POOL_SIZE="20", DB_MAX_OVERFLOW="10"
    )
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        baseline = run_pgbench(database_url, args.connections, args.duration, Path(tmp))
    with tempfile.TemporaryDirectory() as tmp, serve("app.main:app", env) as base:
        runs = (
            ("unique event ids", False, args.connections, "invoice.paid"),
            ("same event id (duplicates)", True, args.connections, "invoice.paid"),
            ("unique event ids, 64 connections (reported)", False, 64, "invoice.paid"),
            (
                "unique event ids, transaction path (reported)",
                False,
                args.connections,
                "customer.subscription.updated",
            ),
        )
        for label, same, connections, kind in runs:
            path = Path(tmp) / f"events-{label[:6]}-{connections}-{kind}.tsv"
            # Enough distinct events that no id repeats within the run, even at 10k/s.
            write_events(path, 1 if same else (args.duration + 3) * 12_000, same_id=same, kind=kind)
            os.environ["WEBHOOK_FILE"], os.environ["WRK_THREADS"] = str(path), "2"
            results[label] = run_wrk(
                f"{kind}: {label} [{connections} conns]",
                base + "/v1/webhooks/stripe",
                connections=connections,
                duration=args.duration,
                script=LUA,
                warmup=0,
            )
    print("| deliveries | events/s | p50 ms | p99 ms | non-2xx | socket errors |")
    print("|---|---|---|---|---|---|")
    for r in results.values():
        print(r.row())
    unique = results["unique event ids"]
    if baseline:
        print(
            f"| pgbench, the same statement, {baseline['clients']} clients (PostgreSQL alone) | "
            f"{baseline['tps']:,.0f} | | avg {baseline['latency_avg_ms']:.2f} | | |"
        )
    ok = unique.requests_per_s >= TARGET_RPS and unique.p99_ms < TARGET_P99_MS and unique.non_2xx == 0
    ratio = unique.requests_per_s / baseline["tps"] if baseline else None
    print(
        f"\nunique: {unique.requests_per_s:,.0f} events/s, p99 {unique.p99_ms:.1f} ms "
        f"(target >= {TARGET_RPS:,}/s, p99 < {TARGET_P99_MS} ms) -> {'PASS' if ok else 'MISS'}"
        + (f"; {ratio:.2f} of pgbench's {baseline['tps']:,.0f} commits/s" if baseline and ratio else "")
    )
    save("webhooks", {"results": list(results.values()), "pgbench": baseline, "ratio": ratio, "pass": ok})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
