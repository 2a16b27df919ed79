"""Real uvicorn processes for the tests that need operating-system processes (two servers, SIGKILL, SIGTERM):
a free port, the environment without the parent's settings, the spawn itself, a Redis flush and a poll.
Shared by tests/orders/test_processes.py, tests/alerts/test_processes.py and tests/market/test_two_processes.py."""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import redis.asyncio as aioredis

from app.core.config import Settings

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(**values: str) -> dict[str, str]:
    """The parent's environment minus every variable the app's settings (or metrics) would read, plus ours."""
    fields = {name.upper() for name in Settings.model_fields}
    env = {
        k: v
        for k, v in os.environ.items()
        if k.upper() not in fields and k.upper() != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(values, PYTHONPATH=str(ROOT))
    return env


def spawn_uvicorn(port: int, env: dict[str, str], cwd: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """One single-worker uvicorn process serving ``app.main:app``, its stdout and stderr in ``log_path``."""
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-proxy-headers",
        "--no-access-log",
        "--log-level",
        "warning",
        "--timeout-graceful-shutdown",
        "3",
    ]
    with log_path.open("wb") as log:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)


async def flush_redis(url: str) -> None:
    client = aioredis.from_url(url, socket_connect_timeout=1)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


async def eventually(probe: Callable[[], T | Awaitable[T]], *, within: float, what: str) -> T:
    """Poll ``probe`` (sync or async) until it returns something truthy; AssertionError naming ``what``
    past ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {within} s: {what} (last probe: {value!r})")
        await asyncio.sleep(0.01)
