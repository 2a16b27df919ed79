"""The reconciler loop: every ``RECONCILE_INTERVAL_SECONDS`` it runs ``app.orders.service.reconcile`` —
the paper matcher, then every due order (unknown outcomes settled by ``client_order_id``, open orders'
fills refreshed, grace-period rejections watched for a late appearance).

One per process, started and stopped by the lifespan. Several processes run it side by side safely: due
orders are taken with ``FOR UPDATE SKIP LOCKED`` and leased, so each order is handled by one process at
a time. The first run comes right after startup, so a restart after a crash finishes interrupted orders
at once. A failing run is logged, counted (``reconcile_runs_total{outcome="error"}``) and retried at the
next interval; the loop never dies of it. ``python -m app.cli reconcile-now`` runs one pass by hand.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from app.core.db import Database
from app.core.errors import log_exception
from app.orders import service
from app.providers.broker import BrokerProvider
from app.workers.loop import BackgroundLoop

log = logging.getLogger("tradedesk.reconciler")


class ReconcilerWorker(BackgroundLoop):
    name = "order-reconciler"

    def __init__(
        self,
        database: Database,
        broker: BrokerProvider,
        policy: service.OrderPolicy,
        accounts: service.AccountLookup,
        *,
        stop_timeout: float = 5.0,
    ) -> None:
        super().__init__(stop_timeout=stop_timeout)
        self.database = database
        self.broker = broker
        self.policy = policy
        self.accounts = accounts
        self.interval_seconds = policy.interval.total_seconds()
        self.runs = 0
        self.last_report: service.ReconcileReport | None = None
        self._ran = asyncio.Condition()
        self._lock = asyncio.Lock()  # one pass at a time in this process (loop and run_once callers)

    async def run_once(self) -> service.ReconcileReport | None:
        """One pass; None when it failed (logged and counted)."""
        async with self._lock:
            report: service.ReconcileReport | None
            try:
                report = await service.reconcile(
                    database=self.database, broker=self.broker, policy=self.policy, accounts=self.accounts
                )
            except Exception as exc:
                log_exception(log, "reconciler run failed; retrying at the next interval", exc)
                report = None
            else:
                if report.looked_at or report.matched:
                    log.info("reconciled", extra={k: v for k, v in dataclasses.asdict(report).items() if v})
            self.last_report = report
        async with self._ran:
            self.runs += 1
            self._ran.notify_all()
        return report

    async def wait_for_runs(self, count: int) -> None:
        """Until at least ``count`` runs have completed (tests and tooling)."""
        async with self._ran:
            await self._ran.wait_for(lambda: self.runs >= count)

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            await self.run_once()
            await self._pause(self.interval_seconds)
