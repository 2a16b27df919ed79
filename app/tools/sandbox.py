"""The tool sandbox: a supervised pool of worker processes that run tool functions under hard limits.

Why processes
-------------
Tool arguments come from language models and front ends, so a call must never be able to stall the
server: not the event loop, not its threads, not its memory. Threads share the interpreter (a
pure-Python loop holds the GIL), share the address space (one runaway allocation takes the whole
server down) and cannot be killed. A process can be given its own limits and killed. Workers are
started with the ``spawn`` method: each one is a fresh interpreter that shares nothing with the web
process but ``sys.path``. Forking the web process would copy its threads' locks, its open sockets,
its event loop and its decrypted secrets into the child. ``forkserver`` is not used: it runs one
server per interpreter and its preload list is global to that interpreter, and the workers would then
be children of the server rather than of this process. The worker also removes from its environment
every variable not on a short list (:data:`_ENV_KEEP`), so ``os.environ`` in a tool holds no
``DATABASE_URL`` or ``JWT_SECRET``. ``/proc/self/environ`` still shows the environment the process
was started with: ``multiprocessing`` offers no way to pass a child its own. It dies with its parent
(``PR_SET_PDEATHSIG``, Linux), and an idle worker exits when its pipe closes, so no worker outlives
the server.

Starting a worker costs about 0.35 s of CPU, most of it importing this module's dependencies
(``app.core.errors`` pulls in FastAPI and SQLAlchemy), plus whatever ``preload`` imports. A script
that starts a sandbox needs the usual ``if __name__ == "__main__":`` guard, because ``spawn``
re-imports the main module in each worker.

The limits
----------
Each worker sets its own limits before it signals ready:

* ``RLIMIT_AS = memory_mb``: the worker's whole address space, the interpreter and preloaded
  libraries included (about 65 MiB bare, about 230 MiB with NumPy and SciPy), so set it well above
  that baseline. Past it an allocation fails inside the worker: Python raises ``MemoryError``.
* ``RLIMIT_CPU``: ``SIGXCPU`` (fatal) once a job has used ``cpu_seconds`` of CPU time, and
  ``SIGKILL`` at the hard limit if that signal is ever caught. The kernel counts CPU time over the
  process's whole life, and an unprivileged process can lower its hard limit but never raise it. So
  the hard limit is a lifetime allowance fixed at start (``cpu_budget`` seconds, ``+ 1``), the soft
  limit is re-armed before each job at *used so far + cpu_seconds* (rounded up to a whole second: a
  job gets at least ``cpu_seconds`` and less than one second more), and a worker whose allowance can
  no longer cover a full job retires after its reply and is replaced (``recycled``).
* ``RLIMIT_CORE = 0``: the CPU-limit signal would otherwise dump core.
* One thread per library (``OMP_NUM_THREADS=1`` and the like, :data:`WORKER_ENV`): the pool's
  processes are the unit of parallelism, and each extra thread reserves address space under the cap.
* The wall clock: the parent kills a job's worker (``SIGKILL``, its whole process group) once
  ``timeout`` seconds have passed.

Workers also ignore ``SIGINT`` (a Ctrl-C in the terminal is the server's to handle), and run at a
lower priority (``nice``, +5 by default), so that the event loop keeps its share of the CPU while
every worker spins.

What each failure answers
-------------------------
Every error is an :class:`~app.core.errors.AppError`, so it renders as problem+json on its own:

* :class:`ToolTimeout` (504, ``tool-timeout``): over the wall-clock limit. The worker is killed and
  replaced, and the caller gets the error at once, not after the replacement starts.
* :class:`ToolCrashed` (502, ``tool-crashed``): the worker died during the job. That covers a
  ``MemoryError`` at the address-space cap (caught in the worker, which answers cleanly and then
  retires: an interpreter that ran out of memory is not trusted with the next job), the CPU limit,
  ``os._exit`` and signals. The worker is replaced. Why 502 and not 500: the worker is the upstream
  this process forwards the call to, and 504 already answers its timeouts. A 500 would mean a bug in
  the web process itself, which issue 13's fuzz test (200, 404, 422 or 504, never 500) and the
  alerts on unhandled errors treat as a failure. ``reason`` says which limit it was (``memory``, ``cpu`` or ``crashed``).
* :class:`ToolFailed` (500 if left unmapped, ``tool-failed``): the tool function raised. The worker
  is fine and stays in the pool. Exceptions do not cross the boundary, only their description does:
  the class's qualified name, the names of its bases, ``str(exc)``, its ``args`` when they are
  plain data, and the traceback for the logs. The caller maps them (``failed.raised("ValueError")``);
  the default rendering shows none of it to the client.
* :class:`PoolBusy` (503 + ``Retry-After``, ``tools-busy``): no free worker. See below.
* ``KeyError``/``ValueError``/``TypeError`` from :meth:`Sandbox.run` are programming errors: a
  function that is not on the allow-list, a bad timeout, or a payload that is not plain data.

Only plain data crosses the pipe, in both directions: ``None``, ``bool``, ``int``, ``float``, ``str``,
``bytes``, ``list``, ``tuple``, ``dict``, ``set`` and ``frozenset``, exact types only (a
``numpy.float64`` is refused: call ``float()``). Frames are pickles written by a pickler that refuses
any other type, read by an unpickler that refuses every global, so a worker that was subverted
cannot run code in the server by answering with a crafted pickle. The size of a frame is capped
(``max_message_bytes``).

The bounded queue
-----------------
At most ``workers`` jobs run at once and at most ``max_waiting`` calls wait for a free worker. The
next call gets :class:`PoolBusy` at once, and so does a call that waited ``queue_timeout`` seconds.
The time limit counts from when a worker takes the job, so a call can take at most
``queue_timeout + timeout``. A worker being replaced counts as busy until it is ready. A caller that
is cancelled (its client went away) does not kill the job: the job finishes within its limits and
the worker goes back to the pool.

Lifecycle, in the lifespan::

    sandbox = Sandbox(allowed, workers=settings.tool_workers, memory_mb=settings.tool_memory_mb,
                      cpu_seconds=math.ceil(settings.tool_timeout_seconds),
                      max_waiting=settings.tool_max_waiting, preload=("app.tools.functions",))
    await sandbox.start()  # returns once every worker has imported its preload and is ready
    ...
    result = await sandbox.run("app.tools.functions:greeks", payload,
                               timeout=settings.tool_timeout_seconds)
    ...
    await sandbox.close()  # kills and reaps every worker

Inside a tool, :func:`report_progress` sends a fraction (0..1) to the caller's ``on_progress``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import gc
import importlib
import io
import itertools
import logging
import math
import multiprocessing
import os
import pickle  # nosec B403 # only _PlainUnpickler (find_class refuses every global) loads
import re
import resource
import signal
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.process import BaseProcess
from typing import Any, Final

from prometheus_client import Counter, Gauge

from app.core.errors import AppError, BadGateway, ServiceUnavailable

__all__ = [
    "WORKER_ENV",
    "GatewayTimeout",
    "PoolBusy",
    "Sandbox",
    "SandboxStartError",
    "ToolCrashed",
    "ToolFailed",
    "ToolTimeout",
    "UnsendableResult",
    "report_progress",
]

log = logging.getLogger("tradedesk.tools.sandbox")

SANDBOX_WORKERS = Gauge(
    "tool_sandbox_workers",
    "Tool sandbox worker processes alive and ready (idle or busy).",
    multiprocess_mode="livesum",
)
SANDBOX_RESTARTS = Counter(
    "tool_sandbox_restarts_total",
    "Tool sandbox workers replaced, by reason: timeout, crashed, cpu, memory, recycled.",
    ["reason"],
)
SANDBOX_BUSY = Counter(
    "tool_sandbox_busy_total",
    "Tool calls refused with 503 because every worker was busy and the wait queue was full or too slow.",
)

#: Set in every worker, on top of what the caller passes as ``env``: one thread per library.
WORKER_ENV: Final[Mapping[str, str]] = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "TRADEDESK_QUANT_THREADS": "1",
    "MPLBACKEND": "Agg",
}
#: The variables a worker keeps from the server's environment (and ``LC_*``); every other one is removed.
_ENV_KEEP: Final = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "TEMP",
        "TMP",
        "PYTHONPATH",
        "PYTHONHASHSEED",
        "PYTHONIOENCODING",
        "PYTHONUTF8",
        "VIRTUAL_ENV",
        "MPLCONFIGDIR",
        "XDG_CACHE_HOME",
        "XDG_CONFIG_HOME",
    }
)
_TARGET: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
_HEADER: Final = struct.Struct("!Q")  # every frame: an 8-byte big-endian length, then a plain-data pickle
_FRAME_SLACK: Final = 64 * 1024  # a reply's envelope around a result of max_message_bytes
_PROGRESS_INTERVAL: Final = 0.05  # seconds between two progress frames from one job (the last always goes)
_EXIT_GRACE: Final = 1.0  # seconds a worker that closed its pipe has to exit before it is killed
_REAP_TIMEOUT: Final = 5.0
_RESPAWN_BACKOFF: Final = (0.1, 10.0)  # first and longest pause between failed attempts to replace a worker


# --------------------------------------------------------------------------------------------------
# errors


class GatewayTimeout(AppError):
    status, title, slug = 504, "Gateway Timeout", "gateway-timeout"


class ToolTimeout(GatewayTimeout):
    """The job ran past its wall-clock limit; its worker was killed and is being replaced."""

    slug = "tool-timeout"

    def __init__(self, function: str, timeout: float) -> None:
        self.function = function
        self.timeout = timeout
        super().__init__(
            f"The tool did not finish within its {timeout:g}-second limit and was stopped.",
            timeout_seconds=timeout,
        )


class ToolCrashed(BadGateway):
    """The worker died during the job (memory cap, CPU-time cap, a crash); it is being replaced.

    502 rather than 500: the worker is the upstream the call was forwarded to (its timeouts answer
    504), and a 500 stays reserved for bugs in the web process itself."""

    slug = "tool-crashed"

    def __init__(self, function: str, reason: str, how: str) -> None:
        self.function = function
        self.reason = reason  # "memory", "cpu" or "crashed"
        self.how = how
        super().__init__(f"The tool's worker process {how}; it was replaced.", reason=reason)


class PoolBusy(ServiceUnavailable):
    """Every worker is busy and the wait queue is full (or the wait took too long), or the sandbox
    is shutting down: 503 with ``Retry-After``."""

    slug = "tools-busy"


class ToolFailed(AppError):
    """The tool function raised. The exception's description, not the exception itself:

    ``exc_type`` is its class's qualified name (``"ValueError"`` for builtins,
    ``"app.tools.functions.ToolArgumentError"`` otherwise), ``exc_mro`` the names of that class and
    its bases, ``message`` is ``str(exc)``, ``exc_args`` its ``args`` when they are plain data
    (else ``()``), and ``traceback`` the formatted traceback, for logs only. It renders as a generic
    500 that shows none of these. The caller decides what it means, e.g. ``failed.raised("ValueError")``
    → 422."""

    status, title, slug = 500, "Internal Server Error", "tool-failed"

    def __init__(
        self,
        function: str,
        *,
        exc_type: str,
        exc_mro: Sequence[str],
        message: str,
        exc_args: tuple[Any, ...] = (),
        traceback: str = "",
    ) -> None:
        self.function = function
        self.exc_type = exc_type
        self.exc_mro = tuple(exc_mro)
        self.message = message
        self.exc_args = exc_args
        self.traceback = traceback
        super().__init__("The tool failed.")

    def raised(self, *names: str) -> bool:
        """Whether the tool raised one of ``names`` or a subclass (names as in :attr:`exc_mro`)."""
        return any(name in self.exc_mro for name in names)

    def __str__(self) -> str:
        return f"{self.exc_type}: {self.message}"


class UnsendableResult(TypeError):
    """Raised in a worker when a tool's result is not plain data or is too large to send."""


class SandboxStartError(RuntimeError):
    """A worker could not start: a preload import failed, the limits were refused, or it died."""


# --------------------------------------------------------------------------------------------------
# the wire: plain data only


_PLAIN_TYPES: Final = frozenset({type(None), bool, int, float, str, bytes, list, tuple, dict, set, frozenset})


def _qualname(cls: type) -> str:
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


class _PlainPickler(pickle.Pickler):
    """Pickles plain data; anything else (which would need a global to unpickle) is a TypeError."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) in _PLAIN_TYPES:
            return NotImplemented  # the pickler's own opcodes, no global involved
        raise TypeError(
            f"{_qualname(type(obj))} is not plain data "
            "(only None, bool, int, float, str, bytes, list, tuple, dict, set and frozenset cross the sandbox)"
        )


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module_name: str, global_name: str, /) -> Any:
        raise pickle.UnpicklingError(f"refused the global {module_name}.{global_name}: plain data only")


def _dumps(obj: object) -> bytes:
    buffer = io.BytesIO()
    _PlainPickler(buffer, protocol=5).dump(obj)
    return buffer.getvalue()


def _loads(data: bytes | bytearray) -> Any:
    return _PlainUnpickler(io.BytesIO(data)).load()


def _frame(message: tuple[Any, ...]) -> bytes:
    body = _dumps(message)
    return _HEADER.pack(len(body)) + body


# --------------------------------------------------------------------------------------------------
# the worker process


@dataclasses.dataclass(frozen=True)
class _WorkerConfig:
    parent_pid: int
    targets: frozenset[str]
    preload: tuple[str, ...]
    memory_bytes: int
    cpu_seconds: int
    cpu_budget: int
    max_message_bytes: int
    env: tuple[tuple[str, str], ...]
    nice: int


_progress_sink: Callable[[float], None] | None = None  # set in a worker while a job runs


def report_progress(fraction: float) -> None:
    """Inside a sandboxed tool: report progress (0..1) to the caller's ``on_progress``. Updates
    closer together than 50 ms are dropped, except the final 1.0. Outside a worker, a no-op."""
    sink = _progress_sink
    if sink is not None:
        sink(fraction)


class _ProgressSink:
    def __init__(self, sock: socket.socket, job_id: int) -> None:
        self.sock = sock
        self.job_id = job_id
        self.last = -math.inf

    def __call__(self, fraction: float) -> None:
        value = float(fraction)
        if not 0.0 <= value <= 1.0:  # NaN fails too
            raise ValueError(f"progress must be between 0 and 1, got {fraction!r}")
        now = time.monotonic()
        if value < 1.0 and now - self.last < _PROGRESS_INTERVAL:
            return
        self.last = now
        self.sock.sendall(_frame(("progress", self.job_id, value)))


def _recv_exact_blocking(sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise EOFError
        got += n
    return buffer


def _cpu_used() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _set_limit(which: int, soft: int, hard: int) -> None:
    """Set a limit, never above the one inherited (an unprivileged process cannot raise it)."""
    _, current_hard = resource.getrlimit(which)
    if current_hard != resource.RLIM_INFINITY:
        hard = min(hard, current_hard)
    resource.setrlimit(which, (min(soft, hard), hard))


def _apply_limits(config: _WorkerConfig) -> int:
    """Set the worker's limits; returns its RLIMIT_CPU hard limit (its lifetime CPU allowance)."""
    _set_limit(resource.RLIMIT_CORE, 0, 0)
    _set_limit(resource.RLIMIT_AS, config.memory_bytes, config.memory_bytes)
    used = _cpu_used()
    _set_limit(
        resource.RLIMIT_CPU,
        math.ceil(used + config.cpu_seconds),
        math.ceil(used) + config.cpu_budget + 1,
    )
    return resource.getrlimit(resource.RLIMIT_CPU)[1]


def _arm_cpu_limit(config: _WorkerConfig, hard: int) -> None:
    soft = min(math.ceil(_cpu_used() + config.cpu_seconds), hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _allowance_spent(config: _WorkerConfig, hard: int) -> bool:
    """True when the lifetime CPU allowance can no longer cover a full job (then: retire)."""
    return math.ceil(_cpu_used() + config.cpu_seconds) + 1 > hard


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no usable libc
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def _detach_from_metrics() -> None:
    """Importing this module (and app.core) created metrics. In multiprocess mode
    (``PROMETHEUS_MULTIPROC_DIR``) each one has a file named after this pid, and every replaced
    worker would leave its files behind. A worker reports no metrics, so it removes its files and
    keeps any later metric in memory."""
    from prometheus_client import values

    values.ValueClass = values.MutexValue
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")
    if not directory:
        return
    suffix = f"_{os.getpid()}.db"
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            if name.endswith(suffix):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, name))


def _scrub_environment(extra: Mapping[str, str]) -> None:
    keep = {k: v for k, v in os.environ.items() if k in _ENV_KEEP or k.startswith("LC_")}
    os.environ.clear()
    os.environ.update(keep)
    os.environ.update(extra)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe_failure(exc: BaseException) -> tuple[str, tuple[str, ...], str, tuple[Any, ...], str]:
    cls = type(exc)
    mro = tuple(_qualname(c) for c in cls.__mro__ if c not in (object, BaseException))
    try:
        message = _clip(str(exc), 2000)
    except Exception:  # a broken __str__
        message = "<unprintable>"
    args: tuple[Any, ...] = ()
    with contextlib.suppress(Exception):
        if len(_dumps(exc.args)) <= 64 * 1024:
            args = exc.args
    try:
        text = "".join(traceback.format_exception(exc))
    except Exception:
        text = ""
    return _qualname(cls), mro, message, args, text[-8000:]


def _resolve(target: str, config: _WorkerConfig, cache: dict[str, Callable[..., Any]]) -> Callable[..., Any]:
    function = cache.get(target)
    if function is None:
        if target not in config.targets:  # the parent checks too: a worker never trusts its pipe
            raise LookupError(f"{target!r} is not on the sandbox's allow-list")
        module_name, _, attr = target.partition(":")
        function = getattr(importlib.import_module(module_name), attr)
        if not callable(function):
            raise TypeError(f"{target!r} is not callable")
        cache[target] = function
    return function


def _serve(
    sock: socket.socket,
    message: Any,
    config: _WorkerConfig,
    cpu_hard: int,
    cache: dict[str, Callable[..., Any]],
) -> tuple[bytes, bool]:
    """Run one job; returns the reply frame and whether this worker retires after sending it."""
    global _progress_sink
    if not (isinstance(message, tuple) and len(message) == 4 and message[0] == "job"):
        raise EOFError("not a job")  # only the parent writes here: a garbled job ends the worker
    _, job_id, target, payload = message
    _arm_cpu_limit(config, cpu_hard)
    signal.signal(signal.SIGXCPU, signal.SIG_DFL)  # a tool must not have made the CPU limit harmless
    failure = None
    out_of_memory = False
    result: Any = None
    _progress_sink = _ProgressSink(sock, job_id)
    try:
        result = _resolve(target, config, cache)(payload)
    except MemoryError:
        out_of_memory = True  # leaving this block frees the traceback, and with it what was allocated
    except Exception as exc:
        failure = _describe_failure(exc)
    finally:
        _progress_sink = None
    if out_of_memory:
        gc.collect()
        return _frame(("memory", job_id)), True
    retiring = _allowance_spent(config, cpu_hard)
    if failure is None:
        try:
            reply = _frame(("ok", job_id, result, retiring))
            if len(reply) > config.max_message_bytes + _FRAME_SLACK:
                raise UnsendableResult(
                    f"the result is too large to send ({len(reply)} bytes, at most {config.max_message_bytes})"
                )
            return reply, retiring
        except MemoryError:
            result = reply = None
            gc.collect()
            return _frame(("memory", job_id)), True
        except Exception as exc:
            if not isinstance(exc, UnsendableResult):
                exc = UnsendableResult(f"the result cannot be sent: {exc}")
            failure = _describe_failure(exc)
    return _frame(("error", job_id, *failure, retiring)), retiring


def _worker_priority(parent_pid: int, nice: int) -> int:
    """A worker's niceness: its parent's plus ``nice``, at most 19."""
    return min(19, os.getpriority(os.PRIO_PROCESS, parent_pid) + nice)


def _worker_main(sock: socket.socket, config: _WorkerConfig) -> None:
    """A worker process: limits, preloads, ``ready``, then one job at a time until its pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGXCPU, signal.SIG_DFL)
    os.setpgrp()  # its own process group: a timeout kills whatever it started, too
    if config.nice:  # the web process wins the CPU over tool work it waits on (the parent set it already)
        os.setpriority(os.PRIO_PROCESS, 0, _worker_priority(config.parent_pid, config.nice))
    _die_with_parent(config.parent_pid)
    _detach_from_metrics()
    _scrub_environment(dict(config.env))
    sock.setblocking(True)
    try:
        cpu_hard = _apply_limits(config)
        for module_name in config.preload:
            importlib.import_module(module_name)
        gc.collect()
    except BaseException as exc:
        with contextlib.suppress(Exception):
            sock.sendall(_frame(("failed", _qualname(type(exc)), _clip(str(exc), 2000))))
        os._exit(1)
    sock.sendall(_frame(("ready", os.getpid())))
    cache: dict[str, Callable[..., Any]] = {}
    limit = config.max_message_bytes + _FRAME_SLACK
    try:
        while True:
            (size,) = _HEADER.unpack(_recv_exact_blocking(sock, _HEADER.size))
            if size > limit:
                break
            reply, retiring = _serve(sock, _loads(_recv_exact_blocking(sock, size)), config, cpu_hard, cache)
            sock.sendall(reply)
            if retiring:
                break
    except (EOFError, OSError, pickle.UnpicklingError):
        pass  # the parent closed the pipe (shutdown, or it is gone)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)  # no interpreter teardown: nothing to save, and it may follow a MemoryError


# --------------------------------------------------------------------------------------------------
# the pool (in the server process)


class _WorkerGone(Exception):
    def __init__(self, how: str, *, alive: bool = False) -> None:
        super().__init__(how)
        self.how = how
        self.alive = alive  # the process may still run (it answered garbage): kill it


@dataclasses.dataclass(eq=False)
class _Worker:
    slot: int
    process: BaseProcess
    sock: socket.socket
    exited: asyncio.Future[None]  # resolved when the process's sentinel becomes readable
    pid: int
    state: str = "starting"  # starting | idle | busy | retired
    ready: bool = False


class Sandbox:
    """A supervised pool of ``workers`` processes running allow-listed functions under limits.

    ``allowed`` maps names to ``"module:function"`` references: the only functions :meth:`run`
    calls, each with one positional argument, the payload dict. ``preload`` modules are imported
    by every worker before it reports ready. Sizes come from the caller (settings), see the module
    docstring for what each one bounds.
    """

    def __init__(
        self,
        allowed: Mapping[str, str],
        *,
        workers: int = 2,
        memory_mb: int = 1024,
        cpu_seconds: int = 10,
        cpu_budget: int | None = None,
        max_waiting: int = 16,
        queue_timeout: float = 5.0,
        retry_after: float = 1.0,
        preload: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        start_timeout: float = 60.0,
        max_message_bytes: int = 64 * 1024 * 1024,
        nice: int = 5,
    ) -> None:
        for name, target in allowed.items():
            if not isinstance(target, str) or not _TARGET.fullmatch(target):
                raise ValueError(f"allowed[{name!r}] = {target!r} is not a 'module:function' reference")
        if workers < 1 or max_waiting < 0 or memory_mb < 16 or cpu_seconds < 1:
            raise ValueError("need workers >= 1, max_waiting >= 0, memory_mb >= 16 and cpu_seconds >= 1")
        cpu_budget = max(60, 20 * cpu_seconds) if cpu_budget is None else cpu_budget
        if cpu_budget < cpu_seconds:
            raise ValueError("cpu_budget (a worker's lifetime CPU allowance) must be >= cpu_seconds")
        if not queue_timeout > 0 or not start_timeout > 0 or max_message_bytes < 1024:
            raise ValueError("queue_timeout and start_timeout must be > 0, max_message_bytes >= 1024")
        self._names: dict[str, str] = dict(allowed)
        self._targets = frozenset(self._names.values())
        self.size = workers
        self.max_waiting = max_waiting
        self.queue_timeout = queue_timeout
        self.retry_after = retry_after
        self.memory_mb = memory_mb
        self.cpu_seconds = cpu_seconds
        self.start_timeout = start_timeout
        self.max_message_bytes = max_message_bytes
        self._config = _WorkerConfig(
            parent_pid=os.getpid(),
            targets=self._targets,
            preload=tuple(preload),
            memory_bytes=memory_mb * 1024 * 1024,
            cpu_seconds=cpu_seconds,
            cpu_budget=cpu_budget,
            max_message_bytes=max_message_bytes,
            env=tuple({**WORKER_ENV, **(env or {})}.items()),
            nice=max(0, min(19, nice)),
        )
        self._ctx = multiprocessing.get_context("spawn")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: set[_Worker] = set()  # every process not yet reaped
        self._idle: collections.deque[_Worker] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[_Worker]] = collections.deque()
        self._tasks: set[asyncio.Task[Any]] = set()  # jobs, reaps
        self._refills: set[asyncio.Task[None]] = set()
        self._job_ids = itertools.count(1)
        self._started = False
        self._closing = False

    # ---- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every worker and wait until each has applied its limits, imported its preload and
        reported ready; :class:`SandboxStartError` (after stopping the others) if one cannot."""
        if self._started:
            raise RuntimeError("this sandbox was already started")
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._config = dataclasses.replace(self._config, parent_pid=os.getpid())
        results = await asyncio.gather(
            *(self._start_worker(slot) for slot in range(self.size)), return_exceptions=True
        )
        for outcome in results:
            if isinstance(outcome, BaseException):
                for other in results:
                    if isinstance(other, _Worker):
                        self._release(other)
                await self.close()
                raise outcome
        for outcome in results:
            if not isinstance(outcome, _Worker):  # every exception was raised above
                raise TypeError(f"a worker start gave {outcome!r}")
            self._release(outcome)
        log.info("tool sandbox started", extra={"workers": self.size, "memory_mb": self.memory_mb})

    async def close(self) -> None:
        """Refuse new calls, fail waiting ones (:class:`PoolBusy`), kill every worker (running jobs
        end with :class:`PoolBusy`) and reap them all."""
        if self._closing:
            return
        self._closing = True
        for fut in self._waiters:
            if not fut.done():
                fut.set_exception(self._shutting_down())
        self._waiters.clear()
        for task in self._refills:
            task.cancel()
        for worker in list(self._workers):
            if worker.state == "idle":
                self._retire(worker, None)
            else:  # starting or busy: its coroutine sees the pipe close and retires it
                self._kill(worker)
        deadline = time.monotonic() + _REAP_TIMEOUT + 2 * _EXIT_GRACE
        while (pending := self._tasks | self._refills) and time.monotonic() < deadline:
            await asyncio.wait(pending, timeout=max(0.0, deadline - time.monotonic()))
        if self._workers:  # pragma: no cover - reaps time out only if the kernel will not kill
            log.error("tool sandbox workers not reaped", extra={"pids": [w.pid for w in self._workers]})

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def stats(self) -> dict[str, int]:
        """Workers ready (idle or busy), idle, and calls waiting: for health checks and benchmarks."""
        ready = sum(1 for w in self._workers if w.ready and w.state != "retired")
        return {"workers": ready, "idle": len(self._idle), "waiting": len(self._waiters), "size": self.size}

    # ---- calls -----------------------------------------------------------------------------------

    async def run(
        self,
        func: str,
        payload: Mapping[str, Any],
        *,
        timeout: float,  # noqa: ASYNC109 - the wall-clock limit is the point, enforced by a kill
        on_progress: Callable[[float], object] | None = None,
    ) -> Any:
        """Run ``func`` (a ``"module:function"`` on the allow-list, or a name it is listed under) on
        ``payload`` in a worker, within ``timeout`` seconds of wall clock; return its result.

        Raises :class:`ToolTimeout`, :class:`ToolCrashed`, :class:`ToolFailed` or :class:`PoolBusy`
        (see the module docstring); ``KeyError`` for a function not on the allow-list, ``ValueError``
        for a bad timeout or an oversized payload, ``TypeError`` for a payload that is not plain
        data. ``on_progress`` (called on the event loop) receives what the tool passes to
        :func:`report_progress`."""
        target = self._target(func)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        job_id = next(self._job_ids)
        frame = _frame(("job", job_id, target, dict(payload)))
        if len(frame) > self.max_message_bytes:
            raise ValueError(
                f"the payload is too large ({len(frame)} bytes, at most {self.max_message_bytes})"
            )
        worker = await self._acquire()
        loop = self._running_loop()
        task = loop.create_task(self._execute(worker, target, job_id, frame, timeout, on_progress))
        self._track(task)
        # A cancelled caller leaves the job to finish within its limits; the worker then returns to
        # the pool instead of being killed and respawned (shield marks the task's outcome retrieved).
        return await asyncio.shield(task)

    def _target(self, func: str) -> str:
        if func in self._targets:
            return func
        target = self._names.get(func) if isinstance(func, str) else None
        if target is None:
            raise KeyError(f"{func!r} is not on the tool sandbox's allow-list")
        return target

    async def _acquire(self) -> _Worker:
        if not self._started:
            raise RuntimeError("call and await Sandbox.start() first")
        if self._closing:
            raise self._shutting_down()
        if self._idle:
            worker = self._idle.popleft()
            worker.state = "busy"
            return worker
        if len(self._waiters) >= self.max_waiting:
            raise self._busy(
                f"All {self.size} tool workers are busy and {len(self._waiters)} calls are waiting; retry shortly."
            )
        fut: asyncio.Future[_Worker] = self._running_loop().create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout(self.queue_timeout):
                try:
                    return await fut
                except asyncio.CancelledError:
                    # Handed a worker in the same instant as cancelled (or timed out): give it back.
                    if fut.done() and not fut.cancelled() and fut.exception() is None:
                        self._release(fut.result())
                    raise
        except TimeoutError:
            raise self._busy(
                f"No tool worker became free within {self.queue_timeout:g} s; retry shortly."
            ) from None
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)

    async def _execute(
        self,
        worker: _Worker,
        target: str,
        job_id: int,
        frame: bytes,
        timeout: float,  # noqa: ASYNC109 - enforced below by asyncio.timeout, then a kill
        on_progress: Callable[[float], object] | None,
    ) -> Any:
        loop = self._running_loop()
        try:
            async with asyncio.timeout(timeout):
                try:
                    await loop.sock_sendall(worker.sock, frame)
                except OSError as exc:
                    raise _WorkerGone(f"closed its pipe ({exc.__class__.__name__})") from None
                while True:
                    reply = await self._recv(worker)
                    if reply[0] == "progress" and len(reply) == 3 and reply[1] == job_id:
                        self._progress(on_progress, reply[2])
                        continue
                    break
        except TimeoutError:
            self._retire(worker, "timeout")
            raise ToolTimeout(target, timeout) from None
        except _WorkerGone as gone:
            raise await self._crashed(worker, target, gone) from None
        except BaseException:  # cancelled: the loop is going away
            self._retire(worker, None)
            raise
        kind = reply[0]
        try:
            if kind == "ok" and len(reply) == 4 and reply[1] == job_id:
                _, _, result, retiring = reply
                self._after_job(worker, bool(retiring))
                return result
            if kind == "error" and len(reply) == 8 and reply[1] == job_id:
                _, _, exc_type, exc_mro, message, exc_args, text, retiring = reply
                failed = ToolFailed(
                    target,
                    exc_type=str(exc_type),
                    exc_mro=tuple(str(n) for n in exc_mro),
                    message=str(message),
                    exc_args=tuple(exc_args),
                    traceback=str(text),
                )
                self._after_job(worker, bool(retiring))
                raise failed
            if kind == "memory" and len(reply) == 2 and reply[1] == job_id:
                self._retire(worker, "memory", kill=False)
                raise ToolCrashed(target, "memory", f"exceeded its memory cap ({self.memory_mb} MiB)")
        except (TypeError, ValueError):
            pass  # a reply of the wrong shape: below
        raise await self._crashed(worker, target, _WorkerGone("sent a malformed reply", alive=True))

    def _after_job(self, worker: _Worker, retiring: bool) -> None:
        if retiring:
            self._retire(worker, "recycled", kill=False)
        else:
            self._release(worker)

    async def _crashed(self, worker: _Worker, target: str, gone: _WorkerGone) -> Exception:
        if gone.alive:
            self._kill(worker)
        code = await self._wait_exit(worker, _EXIT_GRACE)
        if self._closing:
            self._retire(worker, None)
            return self._shutting_down("The tool sandbox shut down while the tool ran; retry shortly.")
        if code is None or gone.alive:
            reason, how = "crashed", gone.how
        else:
            reason, how = self._describe_exit(code)
        self._retire(worker, reason, kill=code is None)
        log.warning(
            "tool worker died during a job",
            extra={"function": target, "reason": reason, "pid": worker.pid, "exitcode": code},
        )
        return ToolCrashed(target, reason, how)

    def _describe_exit(self, code: int) -> tuple[str, str]:
        if code >= 0:
            return "crashed", f"exited with status {code}"
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if -code == signal.SIGXCPU:
            return "cpu", f"exceeded its CPU-time cap ({self.cpu_seconds} s)"
        if -code == signal.SIGKILL:
            return (
                "crashed",
                "was killed by SIGKILL (the CPU-time hard limit, or the kernel's out-of-memory killer)",
            )
        return "crashed", f"was killed by {name}"

    def _progress(self, on_progress: Callable[[float], object] | None, value: object) -> None:
        if on_progress is None or not isinstance(value, float) or not 0.0 <= value <= 1.0:
            return
        try:
            on_progress(value)
        except Exception:
            log.exception("a tool's on_progress callback failed")

    # ---- the pipe --------------------------------------------------------------------------------

    async def _recv(self, worker: _Worker) -> tuple[Any, ...]:
        (size,) = _HEADER.unpack(await self._recv_exact(worker, _HEADER.size))
        if size > self.max_message_bytes + _FRAME_SLACK:
            raise _WorkerGone(f"sent an oversized reply ({size} bytes)", alive=True)
        body = await self._recv_exact(worker, size)
        try:
            message = _loads(body)
        except Exception:
            raise _WorkerGone("sent an unreadable reply", alive=True) from None
        if not isinstance(message, tuple) or not message or not isinstance(message[0], str):
            raise _WorkerGone("sent a malformed reply", alive=True)
        return message

    async def _recv_exact(self, worker: _Worker, size: int) -> bytearray:
        loop = self._running_loop()
        buffer = bytearray(size)
        view = memoryview(buffer)
        got = 0
        while got < size:
            try:
                n = await loop.sock_recv_into(worker.sock, view[got:])
            except OSError as exc:
                raise _WorkerGone(f"lost its pipe ({exc.__class__.__name__})") from None
            if n == 0:
                raise _WorkerGone("closed its pipe")
            got += n
        return buffer

    # ---- workers ---------------------------------------------------------------------------------

    async def _start_worker(self, slot: int) -> _Worker:
        loop = self._running_loop()
        parent_sock, child_sock = socket.socketpair()
        process = self._ctx.Process(
            target=_worker_main,
            args=(child_sock, self._config),
            name=f"tool-sandbox-{slot}",
            daemon=True,
        )
        try:
            process.start()  # fork+exec, a few ms; the imports happen in the child
        except BaseException:
            parent_sock.close()
            raise
        finally:
            child_sock.close()
        if self._config.nice and process.pid is not None:
            # At once, not only once the child runs its own code: a refill starts a whole pool, and its
            # interpreters' start-up would otherwise compete with the event loop at the loop's priority.
            with contextlib.suppress(OSError):  # it may have exited already; it then sets its own
                os.setpriority(os.PRIO_PROCESS, process.pid, _worker_priority(os.getpid(), self._config.nice))
        parent_sock.setblocking(False)
        if process.pid is None:  # start() returned, so the child exists
            raise RuntimeError("the tool worker has no process id after start")
        worker = _Worker(slot, process, parent_sock, loop.create_future(), process.pid)
        self._workers.add(worker)
        loop.add_reader(process.sentinel, self._on_exit, worker)
        try:
            try:
                async with asyncio.timeout(self.start_timeout):
                    message = await self._recv(worker)
            except TimeoutError:
                raise SandboxStartError(
                    f"a tool worker did not become ready within {self.start_timeout:g} s"
                ) from None
            except _WorkerGone as gone:
                code = await self._wait_exit(worker, _EXIT_GRACE)
                raise SandboxStartError(
                    f"a tool worker {gone.how} while starting (exit code {code})"
                ) from None
            if message[0] == "failed" and len(message) == 3:
                raise SandboxStartError(f"a tool worker could not start: {message[1]}: {message[2]}")
            if message[0] != "ready":
                raise SandboxStartError("a tool worker sent a malformed greeting")
        except BaseException:
            self._retire(worker, None)
            raise
        worker.ready = True
        SANDBOX_WORKERS.inc()
        return worker

    async def _refill(self, slot: int) -> None:
        """Start a replacement for ``slot``; retry with backoff while it fails (e.g. a preload that
        no longer imports), meanwhile the pool runs one worker short."""
        delay = _RESPAWN_BACKOFF[0]
        while not self._closing:
            try:
                worker = await self._start_worker(slot)
            except Exception as exc:  # SandboxStartError, or OSError from fork+exec (EAGAIN, EMFILE)
                log.error("cannot replace a tool worker", extra={"error": str(exc), "retry_in": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RESPAWN_BACKOFF[1])
                continue
            self._release(worker)
            return

    def _release(self, worker: _Worker) -> None:
        """A worker is free: hand it to the first waiting call, else put it back in the idle pool."""
        if worker.state == "retired":
            return
        if self._closing:
            self._retire(worker, None)
            return
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                worker.state = "busy"
                fut.set_result(worker)
                return
        worker.state = "idle"
        self._idle.append(worker)

    def _retire(self, worker: _Worker, reason: str | None, *, kill: bool = True) -> None:
        """Take a worker out of the pool for good; kill it, reap it in the background and, when
        ``reason`` is given (a restart, counted under that reason), start its replacement. Called
        only by the worker's owner at a moment when nothing is reading or writing its pipe."""
        if worker.state == "retired":
            return
        worker.state = "retired"
        with contextlib.suppress(ValueError):
            self._idle.remove(worker)
        if kill:
            self._kill(worker)
        worker.sock.close()
        if worker.ready:
            SANDBOX_WORKERS.dec()
        self._track(self._running_loop().create_task(self._reap(worker)))
        if reason is not None:
            SANDBOX_RESTARTS.labels(reason).inc()
            log.warning("tool worker replaced", extra={"reason": reason, "pid": worker.pid})
            if not self._closing:
                refill = self._running_loop().create_task(self._refill(worker.slot))
                self._refills.add(refill)
                refill.add_done_callback(self._refills.discard)

    def _kill(self, worker: _Worker) -> None:
        if worker.exited.done():
            return  # already dead (maybe reaped: its pid could belong to someone else now)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(worker.pid, signal.SIGKILL)  # the worker's own group: whatever it started dies too
        with contextlib.suppress(ProcessLookupError, ValueError):
            worker.process.kill()  # in case it had not yet made its group

    def _on_exit(self, worker: _Worker) -> None:
        """The process's sentinel is readable: it has exited."""
        self._running_loop().remove_reader(worker.process.sentinel)
        if not worker.exited.done():
            worker.exited.set_result(None)
        if worker.state == "idle":
            log.warning("an idle tool worker died", extra={"pid": worker.pid})
            self._retire(worker, "crashed", kill=False)

    async def _wait_exit(self, worker: _Worker, within: float) -> int | None:
        """The worker's exit code once it has exited (and is reaped), or None after ``within`` s."""
        try:
            async with asyncio.timeout(within):
                await asyncio.shield(worker.exited)
                # The sentinel can turn readable a moment before the process can be waited for.
                while (code := worker.process.exitcode) is None:  # noqa: ASYNC110 - waitpid has no event
                    await asyncio.sleep(0.002)
                return code
        except TimeoutError:
            return None

    async def _reap(self, worker: _Worker) -> None:
        code = await self._wait_exit(worker, _REAP_TIMEOUT)
        if code is None:  # pragma: no cover - SIGKILL was sent; the kernel takes its time
            self._kill(worker)
            code = await self._wait_exit(worker, _REAP_TIMEOUT)
        self._running_loop().remove_reader(worker.process.sentinel)
        if code is not None:
            worker.process.close()
            self._workers.discard(worker)

    # ---- helpers ---------------------------------------------------------------------------------

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the sandbox has not been started")
        return self._loop

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _busy(self, detail: str) -> PoolBusy:
        SANDBOX_BUSY.inc()
        return PoolBusy(detail, retry_after=self.retry_after)

    def _shutting_down(self, detail: str = "The tool sandbox is shutting down; retry shortly.") -> PoolBusy:
        return PoolBusy(detail, retry_after=self.retry_after)
