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
    env = bench_settings_env(
        bench_database_url(), STRIPE_WEBHOOK_SECRET=SECRET, DB_POOL_SIZE="20", DB_MAX_OVERFLOW="10"
    )
    results = {}
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
    ok = unique.requests_per_s >= 1000 and unique.p99_ms < 100 and unique.non_2xx == 0
    print(
        f"\nunique: {unique.requests_per_s:,.0f} events/s, p99 {unique.p99_ms:.1f} ms "
        f"(target >= 1,000/s, p99 < 100 ms) -> {'PASS' if ok else 'MISS'}"
    )
    save("webhooks", {"results": list(results.values()), "pass": ok})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
