"""The alert dispatcher loop: claims due alerts and sends them (``app/alerts/dispatch.py``).

One per process, started and stopped by the lifespan; several processes run it side by side (claims
skip locked rows and lease them). After a pass that claimed something it goes again at once (a webhook's
next alert is due as soon as the previous one is recorded); otherwise it sleeps until the next alert can
be due — a retry, a webhook's bucket reset, the end of a pause — or ``poll_seconds`` for new alerts.
``stop()`` lets the running pass finish (its sends are recorded) within ``stop_timeout``; a pass cut
short leaves leased alerts, claimed again when their lease ends. A failing pass is logged and the loop
goes on.
"""

from __future__ import annotations

import logging

from app.alerts.dispatch import Dispatcher, DispatchReport
from app.core.errors import log_exception
from app.workers.loop import BackgroundLoop

log = logging.getLogger("tradedesk.alerts.worker")


class AlertWorker(BackgroundLoop):
    name = "alert-dispatcher"

    def __init__(
        self, dispatcher: Dispatcher, *, poll_seconds: float = 0.5, stop_timeout: float = 10.0
    ) -> None:
        super().__init__(stop_timeout=stop_timeout)
        self.dispatcher = dispatcher
        self.poll_seconds = poll_seconds
        self.passes = 0

    async def run_once(self) -> DispatchReport | None:
        try:
            report = await self.dispatcher.run_once()
        except Exception as exc:
            log_exception(log, "alert dispatch pass failed", exc)
            return None
        finally:
            self.passes += 1
        return report

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            report = await self.run_once()
            if report is not None and report.claimed:
                continue
            try:
                pause = await self.dispatcher.seconds_until_due(self.poll_seconds)
            except Exception as exc:
                log_exception(log, "alert dispatcher could not read the queue", exc)
                pause = self.poll_seconds
            await self._pause(max(pause, 0.01))
