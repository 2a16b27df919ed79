"""Issue 5 benchmark: signed Stripe deliveries through the full stack, 2 workers, real PostgreSQL.

* unique event ids (each an ``invoice.paid`` that records one payment): target >= 1,000 events/s
  with p99 < 100 ms at 32 concurrent deliveries (the issue fixes no concurrency; Stripe delivers
  to one endpoint with modest concurrency). The same load at 64 connections is reported beside it;
* the same event id repeated (every delivery after the first is a duplicate): reported beside it.
Events are signed exactly as Stripe signs them, just before each run (300 s tolerance).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import stripe

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_database_url, bench_settings_env, run_wrk, save, serve  # noqa: E402

SECRET = "whsec_bench_0123456789abcdef"
LUA = str(Path(__file__).resolve().parent / "webhook.lua")


def write_events(path: Path, count: int, *, same_id: bool) -> None:
    now = int(time.time())
    header_ts = now
    fixed = f"evt_{uuid.uuid4().hex[:24]}"
    with path.open("w") as fh:
        for i in range(count):
            event_id = fixed if same_id else f"evt_{uuid.uuid4().hex[:24]}"
            invoice = "in_fixed" if same_id else f"in_{i:09d}"
            payload = json.dumps({
                "id": event_id, "object": "event", "created": now, "type": "invoice.paid",
                "data": {"object": {"object": "invoice", "id": invoice, "customer": f"cus_{i % 500:05d}",
                                    "amount_paid": 1999, "currency": "usd"}},
            }, separators=(",", ":"))
            sig = stripe.WebhookSignature.generate_signature_header(payload, SECRET, timestamp=header_ts)
            fh.write(f"{payload}\t{sig}\n")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    env = bench_settings_env(bench_database_url(), STRIPE_WEBHOOK_SECRET=SECRET, DB_POOL_SIZE="20",
                             DB_MAX_OVERFLOW="10")
    results = {}
    with tempfile.TemporaryDirectory() as tmp, serve("app.main:app", env) as base:
        runs = (("unique event ids", False, args.connections),
                ("same event id (duplicates)", True, args.connections),
                ("unique event ids, 64 connections (reported)", False, 64))
        for label, same, connections in runs:
            path = Path(tmp) / f"events-{label[:6]}-{connections}.tsv"
            # Enough distinct events that no id repeats within the run, even at 10k/s.
            write_events(path, 1 if same else (args.duration + 3) * 12_000, same_id=same)
            os.environ["WEBHOOK_FILE"], os.environ["WRK_THREADS"] = str(path), "2"
            results[label] = run_wrk(f"{label} [{connections} conns]", base + "/v1/webhooks/stripe",
                                     connections=connections, duration=args.duration, script=LUA, warmup=0)
    print("| deliveries | events/s | p50 ms | p99 ms | non-2xx | socket errors |")
    print("|---|---|---|---|---|---|")
    for r in results.values():
        print(r.row())
    unique = results["unique event ids"]
    ok = unique.requests_per_s >= 1000 and unique.p99_ms < 100 and unique.non_2xx == 0
    print(f"\nunique: {unique.requests_per_s:,.0f} events/s, p99 {unique.p99_ms:.1f} ms "
          f"(target >= 1,000/s, p99 < 100 ms) -> {'PASS' if ok else 'MISS'}")
    save("webhooks", {"results": list(results.values()), "pass": ok})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
