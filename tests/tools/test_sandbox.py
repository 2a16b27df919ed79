"""The tool sandbox (app/tools/sandbox.py): real worker processes, real limits, no database.

The tool functions live in tests/tools/sandbox_funcs.py; spawned workers import them through the
``sys.path`` they inherit from pytest (the repository root is on it)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import pickle
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from app.core.errors import AppError
from app.tools import sandbox as sandbox_module
from app.tools.sandbox import (
    PoolBusy,
    Sandbox,
    SandboxStartError,
    ToolCrashed,
    ToolFailed,
    ToolTimeout,
)
from tests.support.timing import collector_paused

FUNCS = "tests.tools.sandbox_funcs"
NAMES = (
    "echo",
    "pid_after",
    "loop_forever",
    "sleep_forever",
    "allocate_forever",
    "exit_hard",
    "burn_cpu",
    "fail",
    "fail_domain",
    "not_plain",
    "huge_result",
    "progress",
    "inspect",
)
ALLOWED = {name: f"{FUNCS}:{name}" for name in NAMES}


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def restarts(reason: str) -> float:
    return metric("tool_sandbox_restarts_total", reason=reason)


@contextlib.asynccontextmanager
async def pool(**kwargs: Any) -> AsyncIterator[Sandbox]:
    kwargs.setdefault("workers", 1)
    kwargs.setdefault("memory_mb", 512)
    kwargs.setdefault("cpu_seconds", 5)
    sandbox = Sandbox(ALLOWED, **kwargs)
    await sandbox.start()
    try:
        yield sandbox
    finally:
        await sandbox.close()


async def until(predicate: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def exists(pid: int) -> bool:
    """Whether ``pid`` is still a process, a zombie included (signal 0 reaches zombies)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def worker_pids(sandbox: Sandbox) -> set[int]:
    return {w.pid for w in sandbox._workers if w.state != "retired"}


@pytest.fixture(scope="module")
async def shared() -> AsyncIterator[Sandbox]:
    """Two workers for the tests that leave the pool as they found it."""
    async with pool(workers=2) as sandbox:
        yield sandbox


# --------------------------------------------------------------------------------------------------
# happy path


async def test_returns_the_functions_result(shared: Sandbox) -> None:
    out = await shared.run("echo", {"a": 1, "b": [1.5, "x", None, True], "c": {"d": b"\x00"}}, timeout=5)
    assert out["echo"] == {"a": 1, "b": [1.5, "x", None, True], "c": {"d": b"\x00"}}
    assert out["pid"] in worker_pids(shared) and out["pid"] != os.getpid()
    # by its "module:function" reference too, as the registry calls it
    assert (await shared.run(f"{FUNCS}:echo", {}, timeout=5))["echo"] == {}


async def test_concurrent_calls_use_every_worker() -> None:
    async with pool(workers=3, max_waiting=8) as sandbox:
        started = time.monotonic()
        pids = await asyncio.gather(*(sandbox.run("pid_after", {"delay": 0.3}, timeout=5) for _ in range(6)))
        elapsed = time.monotonic() - started
        assert set(pids) == worker_pids(sandbox) and len(set(pids)) == 3
        assert elapsed < 1.2  # two rounds of 0.3 s on three workers, not six in a row
        assert sandbox.stats() == {"workers": 3, "idle": 3, "waiting": 0, "size": 3}


async def test_progress_reaches_the_caller(shared: Sandbox) -> None:
    seen: list[float] = []
    assert await shared.run("progress", {"steps": 4}, timeout=5, on_progress=seen.append) == 4
    assert seen == [0.25, 0.5, 0.75, 1.0]


# --------------------------------------------------------------------------------------------------
# wall clock: infinite loops


async def test_infinite_loops_time_out_while_the_event_loop_stays_responsive() -> None:
    async with pool(workers=4, max_waiting=4) as sandbox:
        before = restarts("timeout")
        old = worker_pids(sandbox)
        gaps: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        with collector_paused():  # the gaps measured are the sandbox's, not this process's collector's
            tick = asyncio.create_task(ticker())
            timeout = 0.5
            started = time.monotonic()
            results = await asyncio.gather(
                *(sandbox.run("loop_forever", {}, timeout=timeout) for _ in range(4)), return_exceptions=True
            )
            elapsed = time.monotonic() - started
            await until(lambda: sandbox.stats()["workers"] == 4)  # replacements spawned while ticking
            stop.set()
            await tick

        assert all(isinstance(r, ToolTimeout) for r in results), results
        assert elapsed < timeout + 1
        assert max(gaps) < 0.05, f"the event loop stalled for {max(gaps) * 1000:.0f} ms"
        assert restarts("timeout") - before == 4
        new = worker_pids(sandbox)
        assert len(new) == 4 and not new & old
        assert not any(exists(pid) for pid in old)  # killed and reaped
        assert (await sandbox.run("echo", {"x": 1}, timeout=5))["echo"] == {"x": 1}


async def test_a_sleeping_tool_times_out_too(shared: Sandbox) -> None:
    started = time.monotonic()
    with pytest.raises(ToolTimeout) as caught:
        await shared.run("sleep_forever", {}, timeout=0.3)
    assert time.monotonic() - started < 1.3
    assert caught.value.status == 504 and caught.value.slug == "tool-timeout"
    assert caught.value.extra == {"timeout_seconds": 0.3}
    assert (await shared.run("echo", {}, timeout=5))["echo"] == {}


# --------------------------------------------------------------------------------------------------
# memory, CPU time, crashes


async def test_unbounded_allocation_hits_the_memory_cap_and_the_pool_recovers() -> None:
    async with pool(memory_mb=256) as sandbox:
        before = restarts("memory")
        (old,) = worker_pids(sandbox)
        timeout = 5.0
        started = time.monotonic()
        with pytest.raises(ToolCrashed) as caught:
            await sandbox.run("allocate_forever", {}, timeout=timeout)
        elapsed = time.monotonic() - started
        assert elapsed < 1.5  # the cap stops it long before the wall clock would (limit + 1 s at most)
        assert caught.value.reason == "memory" and caught.value.status == 502
        assert caught.value.slug == "tool-crashed" and "memory cap (256 MiB)" in caught.value.detail
        assert restarts("memory") - before == 1
        out = await sandbox.run("echo", {}, timeout=5)  # waits for the replacement
        assert out["pid"] != old


async def test_a_worker_that_exits_is_reported_and_replaced(shared: Sandbox) -> None:
    await until(lambda: shared.stats()["idle"] == 2)
    before = restarts("crashed")
    old = worker_pids(shared)
    with pytest.raises(ToolCrashed) as caught:
        await shared.run("exit_hard", {"code": 3}, timeout=5)
    assert caught.value.reason == "crashed" and "exited with status 3" in caught.value.detail
    assert restarts("crashed") - before == 1
    await until(lambda: shared.stats()["idle"] == 2)
    assert len(worker_pids(shared) - old) == 1  # one replaced, the other untouched


async def test_the_cpu_time_cap_kills_a_hog_before_the_wall_clock() -> None:
    async with pool(cpu_seconds=1) as sandbox:
        before = restarts("cpu")
        started = time.monotonic()
        with pytest.raises(ToolCrashed) as caught:
            await sandbox.run("loop_forever", {}, timeout=10)
        elapsed = time.monotonic() - started
        assert caught.value.reason == "cpu", caught.value.detail
        # SIGXCPU, not the wall clock: 1-2 s of CPU (rounded up to the worker's next whole second),
        # ~1.6 s of wall time on an idle machine; more when other processes share the CPUs.
        assert elapsed < 10
        assert restarts("cpu") - before == 1
        assert (await sandbox.run("echo", {}, timeout=5))["echo"] == {}


async def test_the_cpu_limit_is_rearmed_per_job() -> None:
    """RLIMIT_CPU counts the worker's whole life: each job gets a fresh cpu_seconds."""
    async with pool(cpu_seconds=1) as sandbox:
        used = await sandbox.run("burn_cpu", {"seconds": 0.5}, timeout=5)
        assert used >= 0.5
        out = await sandbox.run("inspect", {}, timeout=5)
        soft, hard = out["cpu"]
        assert out["cpu_used"] + 1 - 0.05 <= soft < out["cpu_used"] + 1 + 1
        assert hard >= 60  # the lifetime allowance (default: max(60, 20 * cpu_seconds))


async def test_a_worker_whose_cpu_allowance_is_spent_is_recycled() -> None:
    async with pool(cpu_seconds=2, cpu_budget=2) as sandbox:
        before = restarts("recycled")
        (old,) = worker_pids(sandbox)
        assert await sandbox.run("burn_cpu", {"seconds": 1.0}, timeout=5) >= 1.0  # answered normally
        assert (await sandbox.run("echo", {}, timeout=5))["pid"] != old
        assert restarts("recycled") - before == 1


async def test_an_idle_worker_that_dies_is_replaced() -> None:
    async with pool(workers=2) as sandbox:
        before = restarts("crashed")
        victim = min(worker_pids(sandbox))
        os.kill(victim, signal.SIGKILL)
        await until(lambda: victim not in worker_pids(sandbox) and sandbox.stats()["workers"] == 2)
        assert restarts("crashed") - before == 1
        pids = await asyncio.gather(*(sandbox.run("pid_after", {"delay": 0.2}, timeout=5) for _ in range(2)))
        assert victim not in pids and len(set(pids)) == 2


# --------------------------------------------------------------------------------------------------
# the tool's own exceptions, plain data


async def test_an_exception_in_the_tool_is_a_tool_failed(shared: Sandbox) -> None:
    pids = worker_pids(shared)
    with pytest.raises(ToolFailed) as caught:
        await shared.run("fail", {"message": "spot must be > 0"}, timeout=5)
    failed = caught.value
    assert failed.exc_type == "ValueError" and failed.message == "spot must be > 0"
    assert failed.raised("ValueError") and not failed.raised("TypeError")
    assert failed.exc_args == ("spot must be > 0",)
    assert "sandbox_funcs.py" in failed.traceback and "raise ValueError" in failed.traceback
    assert failed.status == 500 and failed.slug == "tool-failed"
    assert "spot" not in failed.detail  # the default rendering shows the client nothing of it

    with pytest.raises(ToolFailed) as caught:
        await shared.run("fail_domain", {}, timeout=5)
    assert caught.value.exc_type == f"{FUNCS}.DomainError"
    assert caught.value.raised("ValueError", "KeyError")  # a subclass of ValueError
    assert caught.value.exc_args == ("spot", "must be positive")
    assert worker_pids(shared) == pids  # the workers are fine and stay


async def test_only_plain_data_crosses(shared: Sandbox) -> None:
    class Opaque:
        pass

    busy = metric("tool_sandbox_busy_total")
    with pytest.raises(TypeError, match="not plain data"):
        await shared.run("echo", {"x": Opaque()}, timeout=5)
    with pytest.raises(ToolFailed) as caught:
        await shared.run("not_plain", {}, timeout=5)
    assert caught.value.exc_type == "app.tools.sandbox.UnsendableResult"
    assert "complex is not plain data" in caught.value.message
    assert metric("tool_sandbox_busy_total") == busy


async def test_results_and_payloads_are_size_capped() -> None:
    async with pool(max_message_bytes=1 << 20) as sandbox:
        with pytest.raises(ToolFailed) as caught:
            await sandbox.run("huge_result", {"size": 2 << 20}, timeout=5)
        assert caught.value.exc_type == "app.tools.sandbox.UnsendableResult"
        assert "too large" in caught.value.message
        with pytest.raises(ValueError, match="too large"):
            await sandbox.run("echo", {"blob": b"x" * (2 << 20)}, timeout=5)
        assert len(await sandbox.run("huge_result", {"size": 1000}, timeout=5)) == 1000


def test_the_unpickler_refuses_every_global() -> None:
    class Boom:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, ("echo pwned",))

    crafted = pickle.dumps(("ok", 1, Boom(), False))
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system"):
        sandbox_module._loads(crafted)
    plain = ("ok", 1, {"a": [1, 2.5, "s", b"b", None, True, (1,), {1}, frozenset({2})]}, False)
    assert sandbox_module._loads(sandbox_module._dumps(plain)) == plain
    import numpy as np

    with pytest.raises(TypeError, match="numpy.float64 is not plain data"):
        sandbox_module._dumps({"x": np.float64(1.0)})


async def test_the_allow_list_is_exact(shared: Sandbox) -> None:
    for name in ("nope", "tests.tools.sandbox_funcs:os", "os:system", "ECHO", " echo"):
        with pytest.raises(KeyError):
            await shared.run(name, {}, timeout=5)
    with pytest.raises(ValueError, match="timeout"):
        await shared.run("echo", {}, timeout=0)
    with pytest.raises(ValueError, match="timeout"):
        await shared.run("echo", {}, timeout=math.inf)
    with pytest.raises(ValueError, match="module:function"):
        Sandbox({"bad": "os.system"})
    with pytest.raises(ValueError, match="module:function"):
        Sandbox({"bad": "os:system; rm -rf /"})


# --------------------------------------------------------------------------------------------------
# the bounded queue


async def test_a_full_pool_answers_busy_at_once() -> None:
    async with pool(workers=1, max_waiting=0) as sandbox:
        busy = metric("tool_sandbox_busy_total")
        first = asyncio.create_task(sandbox.run("pid_after", {"delay": 0.5}, timeout=5))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(PoolBusy) as caught:
            await sandbox.run("echo", {}, timeout=5)
        assert time.monotonic() - started < 0.05
        assert caught.value.status == 503 and caught.value.slug == "tools-busy"
        assert caught.value.headers["Retry-After"] == "1"
        assert metric("tool_sandbox_busy_total") - busy == 1
        assert await first > 0


async def test_a_call_waits_at_most_queue_timeout() -> None:
    async with pool(workers=1, max_waiting=1, queue_timeout=0.2) as sandbox:
        first = asyncio.create_task(sandbox.run("pid_after", {"delay": 0.6}, timeout=5))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(sandbox.run("echo", {}, timeout=5))
        await asyncio.sleep(0.02)
        with pytest.raises(PoolBusy):  # the one waiting place is taken
            await sandbox.run("echo", {}, timeout=5)
        started = time.monotonic()
        with pytest.raises(PoolBusy, match="within 0.2 s"):
            await waiting
        assert 0.1 < time.monotonic() - started < 0.3
        await first
        # a waiter that is served in time gets the worker
        second = asyncio.create_task(sandbox.run("pid_after", {"delay": 0.1}, timeout=5))
        await asyncio.sleep(0.02)
        assert (await sandbox.run("echo", {}, timeout=5))["pid"] == await second


async def test_a_cancelled_caller_leaves_the_job_to_finish() -> None:
    async with pool(workers=1, max_waiting=1) as sandbox:
        counts = [restarts(r) for r in ("timeout", "crashed")]
        (pid,) = worker_pids(sandbox)
        task = asyncio.create_task(sandbox.run("pid_after", {"delay": 0.3}, timeout=5))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        out = await sandbox.run("echo", {}, timeout=5)  # queued behind the finishing job
        assert out["pid"] == pid
        assert [restarts(r) for r in ("timeout", "crashed")] == counts


# --------------------------------------------------------------------------------------------------
# the worker's limits and environment


async def test_the_worker_runs_under_its_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADEDESK_TEST_SECRET", "hunter2")
    async with pool(memory_mb=300, cpu_seconds=2, env={"EXTRA": "yes"}, preload=("wave", FUNCS)) as sandbox:
        out = await sandbox.run("inspect", {"modules": ["wave"]}, timeout=5)
    assert out["as"] == [300 * 1024 * 1024, 300 * 1024 * 1024]
    assert out["core"] == [0, 0]
    soft, hard = out["cpu"]
    assert out["cpu_used"] + 2 - 0.05 <= soft < out["cpu_used"] + 3 and hard >= 60
    assert out["sigint_ignored"] and out["pgid_is_pid"] and out["ppid"] == os.getpid()
    assert out["nice"] == os.nice(0) + 5
    env = out["env"]
    assert "TRADEDESK_TEST_SECRET" not in env and "PATH" in env
    assert env["OPENBLAS_NUM_THREADS"] == "1" and env["TRADEDESK_QUANT_THREADS"] == "1"
    assert env["EXTRA"] == "yes"
    assert out["loaded"] == ["wave"]  # preloaded before the worker said ready


async def test_a_worker_that_cannot_start_fails_start() -> None:
    before = set(multiprocessing.active_children())
    with pytest.raises(SandboxStartError, match="ModuleNotFoundError: No module named 'no_such_module_xyz'"):
        await Sandbox(ALLOWED, workers=1, preload=("no_such_module_xyz",)).start()
    # a cap below what the preload needs fails loudly at start, not on the first call
    with pytest.raises(SandboxStartError, match="could not start"):
        await Sandbox(ALLOWED, workers=1, memory_mb=48, preload=("numpy",)).start()
    assert set(multiprocessing.active_children()) <= before


# --------------------------------------------------------------------------------------------------
# close


def _sandbox_children() -> list[int]:
    """Pids of this process's spawned children (``spawn_main``: not the resource tracker), from /proc."""
    me, out = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                spawned = b"spawn_main" in f.read()
            if ppid == me and spawned:
                out.append(int(entry))
    return out


async def test_close_kills_and_reaps_every_worker(shared: Sandbox) -> None:
    gauge = metric("tool_sandbox_workers")
    sandbox = Sandbox(ALLOWED, workers=2, max_waiting=2, queue_timeout=10)
    await sandbox.start()
    pids = worker_pids(sandbox)
    assert metric("tool_sandbox_workers") - gauge == 2
    running = [asyncio.create_task(sandbox.run("loop_forever", {}, timeout=30)) for _ in range(2)]
    await asyncio.sleep(0.1)
    waiting = asyncio.create_task(sandbox.run("echo", {}, timeout=5))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await sandbox.close()
    assert time.monotonic() - started < 2
    for task in [*running, waiting]:
        with pytest.raises(PoolBusy, match="shut"):
            await task
    assert not any(exists(pid) for pid in pids)  # no zombies either: they were reaped
    assert not [p for p in multiprocessing.active_children() if p.pid in pids]
    others = worker_pids(shared)  # the module's shared pool is still open
    assert [pid for pid in _sandbox_children() if pid not in others] == []
    assert metric("tool_sandbox_workers") == gauge
    with pytest.raises(PoolBusy):
        await sandbox.run("echo", {}, timeout=5)
    await sandbox.close()  # idempotent


async def test_run_before_start_is_a_programming_error() -> None:
    with pytest.raises(RuntimeError, match="start"):
        await Sandbox(ALLOWED).run("echo", {}, timeout=5)


def test_errors_are_problems() -> None:
    for exc, status, slug in (
        (ToolTimeout("m:f", 10), 504, "tool-timeout"),
        (ToolCrashed("m:f", "memory", "exceeded its memory cap"), 502, "tool-crashed"),
        (PoolBusy("busy", retry_after=2.5), 503, "tools-busy"),
        (ToolFailed("m:f", exc_type="ValueError", exc_mro=("ValueError",), message="m"), 500, "tool-failed"),
    ):
        assert isinstance(exc, AppError) and exc.status == status and exc.slug == slug
    assert PoolBusy("busy", retry_after=2.5).headers == {"Retry-After": "3"}
    assert sys.modules["app.tools.sandbox"] is sandbox_module
