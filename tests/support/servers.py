"""Real uvicorn processes for the tests that need operating-system processes (two servers, SIGKILL, SIGTERM):
a free port, the environment without the parent's settings, the spawn itself, a Redis flush, a poll, and
``Servers``, a group of servers started, signalled and stopped together. Shared by the process tests of
orders, alerts, market data and backtests."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import redis.asyncio as aioredis

from app.core.config import Settings

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def stop_process(proc: subprocess.Popen[bytes], grace: float = 30) -> None:
    """Stop a server process as an orchestrator does: SIGTERM (it drains and exits), then SIGKILL if it is
    still there after ``grace`` seconds. Used by the tests' and the benchmarks' servers alike."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


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


def spawn_uvicorn(
    port: int, env: dict[str, str], cwd: Path, log_path: Path, *, factory: str | None = None
) -> subprocess.Popen[bytes]:
    """One single-worker uvicorn process serving ``app.main:app`` (or the app ``factory``, a
    ``module:function`` path, returns), its stdout and stderr in ``log_path``."""
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        *(["--factory", factory] if factory else ["app.main:app"]),
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


READY_SECONDS = 20.0
KEEPALIVE_SECONDS = 2.0  # < uvicorn's --timeout-keep-alive (5 s)
STOP_SECONDS = 5.0


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    base: str
    log_path: Path
    http: httpx.AsyncClient

    def tail(self, chars: int = 6000) -> str:
        return self.log_path.read_bytes().decode(errors="replace")[-chars:]

    def log_messages(self, message: str) -> int:
        """How many JSON log records of this process have ``message`` (e.g. "alert sent")."""
        found = 0
        for line in self.log_path.read_bytes().decode(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                if json.loads(line).get("msg") == message:
                    found += 1
        return found


class Servers:
    """Single-worker uvicorn processes serving ``app.main:app`` with ``env``; output in temp files.
    ``describe`` adds a line of context (e.g. what a fake provider saw) to every failure message."""

    def __init__(
        self,
        env: dict[str, str],
        workdir: Path,
        describe: Callable[[], str] | None = None,
        *,
        stop_seconds: float = STOP_SECONDS,
    ) -> None:
        self.env = env
        self.stop_seconds = stop_seconds
        self.workdir = workdir  # empty: no developer .env is read; the app is found through PYTHONPATH
        self.describe = describe
        self.started: list[Server] = []

    async def start(self, *, factory: str | None = None, **env: str) -> Server:
        """A new server (``env`` added to the group's) once it answers /healthz; ``factory`` as for
        ``spawn_uvicorn``."""
        port = free_port()
        name = f"server-{len(self.started) + 1}"
        log_path = self.workdir / f"{name}.log"
        proc = spawn_uvicorn(port, {**self.env, **env}, self.workdir, log_path, factory=factory)
        base = f"http://127.0.0.1:{port}"
        # Idle connections are dropped before uvicorn's keep-alive timeout (5 s) closes them: a request sent
        # on a connection the server is closing at that moment fails with a ReadError (a server kept for a
        # whole module sits idle between tests).
        limits = httpx.Limits(keepalive_expiry=KEEPALIVE_SECONDS)
        server = Server(
            name, proc, base, log_path, httpx.AsyncClient(base_url=base, timeout=60, limits=limits)
        )
        self.started.append(server)
        await self._wait_ready(server)
        return server

    async def _wait_ready(self, server: Server) -> None:
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise AssertionError(self.explain(f"{server.name} exited with {server.proc.returncode}"))
            with contextlib.suppress(httpx.TransportError):
                if (await server.http.get("/healthz", timeout=1)).status_code == 200:
                    return
            await asyncio.sleep(0.05)  # polling for startup, bounded by READY_SECONDS
        raise AssertionError(self.explain(f"{server.name} not ready after {READY_SECONDS} s"))

    async def terminate(self, server: Server) -> int:
        """SIGTERM and wait for the exit (off the event loop: fakes served by this loop keep answering
        while the server finishes its work). Returns the exit code."""
        server.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(server.proc.wait, self.stop_seconds)

    async def kill(self, server: Server) -> None:
        """SIGKILL: no shutdown hook, no finally block, no last statement runs."""
        os.kill(server.proc.pid, signal.SIGKILL)
        await asyncio.to_thread(server.proc.wait, self.stop_seconds)

    async def stop_all(self) -> None:
        def stop(proc: subprocess.Popen[bytes]) -> None:
            stop_process(proc, self.stop_seconds)

        for server in self.started:
            await server.http.aclose()
        await asyncio.gather(*(asyncio.to_thread(stop, s.proc) for s in self.started))

    def explain(self, message: str) -> str:
        """``message``, the group's context, and the tail of every server's output."""
        parts = [message] + ([self.describe()] if self.describe else [])
        for s in self.started:
            state = "running" if s.proc.poll() is None else f"exited {s.proc.returncode}"
            parts.append(f"--- {s.name} {s.base} ({state}), output tail ---\n{s.tail()}")
        return "\n".join(parts)

    @contextlib.contextmanager
    def diagnosed(self) -> Iterator[None]:
        """Any failure inside carries the context and the servers' output tails (an exception note)."""
        try:
            yield
        except BaseException as exc:
            exc.add_note(self.explain("state at the failure:"))
            raise
