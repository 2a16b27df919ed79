"""Tool functions for the sandbox tests only: each takes one payload dict, as the sandbox calls it.

Imported by the spawned workers (the repository root is on ``sys.path`` when pytest runs, and a
spawned worker inherits the parent's ``sys.path``)."""

from __future__ import annotations

import os
import resource
import signal
import sys
import time
from typing import Any

from app.tools.sandbox import report_progress


def echo(payload: dict[str, Any]) -> dict[str, Any]:
    return {"echo": payload, "pid": os.getpid()}


def pid_after(payload: dict[str, Any]) -> int:
    time.sleep(float(payload.get("delay", 0.0)))
    return os.getpid()


def loop_forever(payload: dict[str, Any]) -> None:
    while True:
        pass


def sleep_forever(payload: dict[str, Any]) -> None:
    time.sleep(3600)


def allocate_forever(payload: dict[str, Any]) -> None:
    chunks = []
    while True:
        chunks.append(bytearray(16 * 1024 * 1024))  # zero-filled pages: fast, and counted by RLIMIT_AS


def exit_hard(payload: dict[str, Any]) -> None:
    os._exit(int(payload.get("code", 3)))


def burn_cpu(payload: dict[str, Any]) -> float:
    """Spin until this process has used ``seconds`` more CPU time; returns the CPU time used."""
    start = time.process_time()
    while time.process_time() - start < float(payload["seconds"]):
        pass
    return time.process_time() - start


def fail(payload: dict[str, Any]) -> None:
    raise ValueError(payload.get("message", "bad input"))


class DomainError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)
        self.field = field


def fail_domain(payload: dict[str, Any]) -> None:
    raise DomainError("spot", "must be positive")


def not_plain(payload: dict[str, Any]) -> object:
    return {"value": complex(1, 2)}


def huge_result(payload: dict[str, Any]) -> bytes:
    return b"x" * int(payload["size"])


def progress(payload: dict[str, Any]) -> int:
    steps = int(payload["steps"])
    for i in range(1, steps + 1):
        time.sleep(0.06)
        report_progress(i / steps)
    return steps


def inspect(payload: dict[str, Any]) -> dict[str, Any]:
    """What a worker looks like from the inside."""
    return {
        "as": list(resource.getrlimit(resource.RLIMIT_AS)),
        "cpu": list(resource.getrlimit(resource.RLIMIT_CPU)),
        "core": list(resource.getrlimit(resource.RLIMIT_CORE)),
        "cpu_used": time.process_time(),
        "sigint_ignored": signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
        "env": dict(os.environ),
        "pgid_is_pid": os.getpgrp() == os.getpid(),
        "ppid": os.getppid(),
        "nice": os.nice(0),
        "loaded": [name for name in payload.get("modules", []) if name in sys.modules],
    }
