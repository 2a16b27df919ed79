"""Order metrics (prometheus_client; in multiprocess mode the gauge reports the live maximum)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ORDERS = Counter(
    "orders_total",
    "Order placements by outcome: placed (the broker has it), rejected (the broker refused: 422), "
    "unavailable (nothing was sent: 503), pending_reconciliation (unknown outcome: 202).",
    ["outcome"],
)
for _outcome in ("placed", "rejected", "unavailable", "pending_reconciliation"):
    ORDERS.labels(_outcome)
ORDERS_RECONCILED = Counter(
    "orders_reconciled_total",
    "Orders the reconciler looked at, by result: settled (unknown outcome resolved), updated (an open "
    "order's status or fill changed), unchanged, rejected_after_grace, revived, failed (lookup failed).",
    ["result"],
)
for _result in ("settled", "updated", "unchanged", "rejected_after_grace", "revived", "failed"):
    ORDERS_RECONCILED.labels(_result)
ORDERS_REVIVED = Counter(
    "orders_revived_total",
    "Orders rejected after the grace period that the broker later showed (revived, never dropped).",
)
ORDERS_PENDING = Gauge(
    "orders_pending_reconciliation",
    "Orders whose outcome is not known yet (submitting or pending_reconciliation), as of the last run.",
    multiprocess_mode="livemax",
)
RECONCILE_RUNS = Counter("reconcile_runs_total", "Reconciler runs by outcome (ok, error).", ["outcome"])
for _outcome in ("ok", "error"):
    RECONCILE_RUNS.labels(_outcome)
RECONCILE_DURATION = Histogram(
    "reconcile_duration_seconds",
    "Wall time of one reconciler run.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
