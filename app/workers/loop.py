"""What every background loop shares: started once in the lifespan, stopped gracefully.

``start()`` runs the subclass's ``_loop()`` as a task; ``stop()`` sets ``_stopping`` (the loop checks it
between passes and inside its waits: ``await self._pause(seconds)``), lets the running pass finish, and
cancels it only after ``stop_timeout`` seconds (logged). A stopped loop can be started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger("tradedesk.workers")


class BackgroundLoop:
    name = "background-loop"

    def __init__(self, *, stop_timeout: float) -> None:
        self.stop_timeout = stop_timeout
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        try:
            await asyncio.wait_for(task, timeout=self.stop_timeout)
        except TimeoutError:  # wait_for cancelled it
            log.warning(
                "background loop cancelled after the stop timeout",
                extra={"loop": self.name, "timeout": self.stop_timeout},
            )

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, or less if ``stop()`` is called meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=max(seconds, 0.0))

    async def _loop(self) -> None:  # pragma: no cover - every subclass has its own
        raise NotImplementedError
