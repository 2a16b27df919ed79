"""Job functions for the worker tests only (imported by the spawned sandbox workers): each takes the payload
the backtest worker sends, ``{"path", "params"}``."""

from __future__ import annotations

import os
import time
from typing import Any

from app.backtests import functions
from app.tools.sandbox import report_progress


def progress_then_wait(payload: dict[str, Any]) -> dict[str, Any]:
    """Report 0.25, wait until ``<path>.release`` exists, then run the real job."""
    report_progress(0.25)
    gate = payload["path"] + ".release"
    while not os.path.exists(gate):
        time.sleep(0.01)
    return functions.run(payload)


def sleep_forever(payload: dict[str, Any]) -> None:
    time.sleep(3600)


def allocate_forever(payload: dict[str, Any]) -> None:
    chunks = []
    while True:
        chunks.append(bytearray(64 * 1024 * 1024))
