"""Blocked, optionally multi-threaded evaluation of element-wise kernels.

The option kernels are chains of NumPy/SciPy ufuncs.  Running them over blocks of tens of
thousands of elements bounds the temporaries (preallocated per thread and reused), and because
ufuncs release the GIL, blocks can be spread over a small pool of threads (the calling thread
takes part).  The kernels are element-wise, so results are bit-for-bit identical whatever the
number of threads.

``TRADEDESK_QUANT_THREADS`` sets the number of threads (default: the number of CPUs, at most 4;
``1`` disables threading).
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

BLOCK = 65536  # elements per block for cheap kernels: amortises the per-ufunc-call overhead

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_pid: int | None = None
_pool_workers = 0


def num_threads() -> int:
    env = os.environ.get("TRADEDESK_QUANT_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            pass
    return max(1, min(4, os.cpu_count() or 1))


def _get_pool(workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_pid, _pool_workers
    with _lock:
        # A pool inherited through fork() has no threads: build a fresh one in the child.
        if _pool is None or _pool_pid != os.getpid() or _pool_workers < workers:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="quant")
            _pool_pid = os.getpid()
            _pool_workers = workers
        return _pool


def run_blocks(n: int, fn: Callable[[int, int], None], block: int = BLOCK) -> None:
    """Call ``fn(lo, hi)`` for consecutive blocks covering ``range(n)``; threads when worthwhile."""
    if n <= 0:
        return
    workers = num_threads()
    if workers == 1 or n < 2 * block:
        for lo in range(0, n, block):
            fn(lo, min(lo + block, n))
        return
    # The calling thread works too; every thread pulls the next block from a shared counter
    # (``next`` on an ``itertools.count`` is atomic under the GIL), which balances the load even
    # when a core is busy with something else.
    counter = itertools.count(0, block)
    failed = threading.Event()

    def worker() -> None:
        try:
            for lo in counter:
                if lo >= n or failed.is_set():
                    return
                fn(lo, min(lo + block, n))
        except BaseException:
            failed.set()
            raise

    pool = _get_pool(workers - 1)
    futures = [pool.submit(worker) for _ in range(min(workers - 1, (n - 1) // block))]
    try:
        worker()
    finally:
        # helpers that never started (the pool busy with another call) are cancelled rather than
        # waited for; the others are waited for, and their first exception re-raised
        errors = [None if fut.cancel() else fut.exception() for fut in futures]
    for err in errors:
        if err is not None:
            raise err
