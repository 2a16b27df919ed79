"""Latency measured inside the test process, without that process's own garbage collector in it.

A test that checks the event loop stays responsive (a runaway tool is killed in a worker process, not
waited for on the loop) measures gaps of tens of milliseconds. After a thousand tests, the pytest
process's heap is large enough that one full collection takes about 0.6 s (measured: 578 k tracked
objects, 583 ms for ``gc.collect()`` at the end of ``tests/core tests/auth tests/tools``), and such a
pass lands in the measured window now and then: the stall is the test harness's, not the code under
test's (the served app freezes its start-up objects, ``gc.freeze()`` in ``app/main.py``, and keeps
a small heap). ``collector_paused`` runs that collection before the window and none inside it.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Collect now, then keep the cyclic collector off until the block exits (reference counting
    still frees everything that is not in a cycle)."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
