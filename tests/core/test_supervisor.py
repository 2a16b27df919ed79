"""`python -m app` with two workers (real processes, real PostgreSQL): one listening socket per worker.

* connections opened in one burst end up on both workers (with uvicorn's shared socket the first worker
  to wake accepted nearly all of them: 62 / 2 of 64 here), and there are two listening sockets;
* a worker killed with SIGKILL is replaced on its own socket, and the connections the kernel queued on
  that socket meanwhile are answered by the replacement, not reset;
* a port another process listens on, even with SO_REUSEPORT, still refuses to start (exit 3): the
  group never silently shares traffic with a stray instance;
* ``WEB_WORKER_SOCKETS=shared`` keeps uvicorn's single socket; a bad value exits 2 naming the variable.

Linux only (``/proc/net/tcp`` tells which process holds which connection).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.servers import free_port, server_env, stop_process
from tests.support.settings import TEST_FERNET_KEY, TEST_JWT_SECRET, TEST_WEBHOOK_SECRET

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/net/tcp"),
]

READY_SECONDS = 30.0
LISTEN, ESTABLISHED = "0A", "01"


def _env(database_url: str, **extra: str) -> dict[str, str]:
    return server_env(
        DATABASE_URL=database_url,
        FRONTEND_URL="http://localhost:3000",
        JWT_SECRET=TEST_JWT_SECRET,
        STRIPE_WEBHOOK_SECRET=TEST_WEBHOOK_SECRET,
        TOKEN_ENCRYPTION_KEY=TEST_FERNET_KEY,
        APP_ENV="test",
        LOG_LEVEL="WARNING",
        WEB_CONCURRENCY="2",
        HOST="127.0.0.1",
        **extra,
    )


def _healthz(port: int, timeout: float = 30.0) -> tuple[int, socket.socket]:
    """GET /healthz on a new connection; (status, the still-open connection)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split(b" ", 2)[1]), sock


def _tcp_rows(port: int) -> list[tuple[str, str]]:
    """(state, inode) of every IPv4 TCP socket whose local port is ``port``."""
    rows = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port:
            rows.append((fields[3], fields[9]))
    return rows


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(FileNotFoundError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry))
    return out


def _workers(supervisor: int) -> list[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""

    def is_worker(pid: int) -> bool:
        try:
            return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):  # exited since it was listed (a worker replaced)
            return False

    return [pid for pid in _children(supervisor) if is_worker(pid)]


def _connections_by_worker(supervisor: int, port: int) -> Counter[int]:
    """How many established server-side connections on ``port`` each child of ``supervisor`` holds."""
    established = {inode for state, inode in _tcp_rows(port) if state == ESTABLISHED}
    return Counter({pid: n for pid in _children(supervisor) if (n := len(_socket_inodes(pid) & established))})


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            status, sock = _healthz(port, timeout=1)
            sock.close()
            if status == 200:
                return
        time.sleep(0.05)  # polling for startup, bounded by READY_SECONDS
    raise AssertionError(f"not ready after {READY_SECONDS} s: {log.read_text()[-3000:]}")


@contextlib.contextmanager
def _app(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app"],
            cwd=tmp_path,
            env={**env, "PORT": str(port)},
            stdout=out,
            stderr=out,
        )
    try:
        _wait_ready(proc, port, log)
        # Both workers must be serving, not only the first one up.
        _wait_for(
            lambda: log.read_text().count("Application startup complete") >= int(env["WEB_CONCURRENCY"]),
            "every worker started",
        )
        yield proc, port
    finally:
        stop_process(proc)


def _burst(port: int, n: int) -> list[socket.socket]:
    """``n`` connections opened at once (as a load balancer or wrk opens its pool), each answered once."""
    socks = [socket.socket() for _ in range(n)]
    for sock in socks:
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.connect(("127.0.0.1", port))
    for sock in socks:
        sock.setblocking(True)
        sock.settimeout(30)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    for sock in socks:
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    return socks


def test_a_burst_of_connections_is_spread_over_both_workers(database_url: str, tmp_path: Path) -> None:
    with _app(_env(database_url), tmp_path) as (proc, port):
        listeners = {inode for state, inode in _tcp_rows(port) if state == LISTEN}
        assert len(listeners) == 2, "one listening socket per worker"
        held = [_socket_inodes(pid) & listeners for pid in _children(proc.pid)]
        assert sorted(len(h) for h in held if h) == [1, 1] and len(set().union(*held)) == 2, (
            "each worker holds its own listening socket"
        )
        socks = _burst(port, 64)
        try:
            split = _connections_by_worker(proc.pid, port)
            assert sum(split.values()) == 64, split
            assert len(split) == 2 and min(split.values()) >= 16, f"uneven split over the workers: {split}"
        finally:
            for sock in socks:
                sock.close()


def test_a_killed_workers_queued_connections_are_served_by_its_replacement(
    database_url: str, tmp_path: Path
) -> None:
    with _app(_env(database_url), tmp_path) as (proc, port):
        held = _burst(port, 16)
        victim = max(_connections_by_worker(proc.pid, port).items(), key=lambda item: item[1])[0]
        for sock in held:
            sock.close()
        os.kill(victim, signal.SIGKILL)
        # New connections, about half hashed to the dead worker's socket, which nobody accepts from
        # until the supervisor has started the replacement: they wait in its queue and are answered.
        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(lambda _: _healthz(port), range(32)))
        try:
            assert [status for status, _ in answers] == [200] * 32
            split = _connections_by_worker(proc.pid, port)
            assert victim not in split
            assert len(split) == 2, f"the replacement serves its slot: {split}"
        finally:
            for _, sock in answers:
                sock.close()


@pytest.mark.parametrize("reuseport", [False, True], ids=["plain listener", "SO_REUSEPORT listener"])
def test_a_port_another_process_listens_on_is_refused(
    reuseport: bool, database_url: str, tmp_path: Path
) -> None:
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    squatter.bind(("127.0.0.1", 0))
    squatter.listen(8)
    port = squatter.getsockname()[1]
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "app"],
            cwd=tmp_path,
            env={**_env(database_url), "PORT": str(port)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        squatter.close()
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "Address already in use" in proc.stderr


def test_shared_mode_keeps_one_listening_socket(database_url: str, tmp_path: Path) -> None:
    with _app(_env(database_url, WEB_WORKER_SOCKETS="shared"), tmp_path) as (_, port):
        assert len([inode for state, inode in _tcp_rows(port) if state == LISTEN]) == 1


def test_an_unknown_socket_mode_exits_2_naming_the_variable(database_url: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "app"],
        cwd=tmp_path,
        env={**_env(database_url, WEB_WORKER_SOCKETS="roundrobin"), "PORT": str(free_port())},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "WEB_WORKER_SOCKETS" in proc.stderr


def _listeners(port: int) -> int:
    return len([inode for state, inode in _tcp_rows(port) if state == LISTEN])


def _wait_for(probe, what: str, within: float = READY_SECONDS):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not (value := probe()):
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        time.sleep(0.05)  # polling the supervisor's reaction to a signal, bounded by `within`
    return value


def test_sigttin_sigttou_and_sighup_keep_one_socket_per_worker(database_url: str, tmp_path: Path) -> None:
    with _app(_env(database_url), tmp_path) as (proc, port):
        before = set(_workers(proc.pid))
        os.kill(proc.pid, signal.SIGTTIN)  # one more worker, with its own socket
        _wait_for(lambda: _listeners(port) == 3, "a third listening socket")
        assert _burst_split(proc.pid, port) == 3  # the new worker answers its share
        os.kill(proc.pid, signal.SIGTTOU)  # and back: the worker and its socket go
        _wait_for(lambda: _listeners(port) == 2, "back to two listening sockets")
        os.kill(proc.pid, signal.SIGHUP)  # every worker replaced, each on its slot's socket
        _wait_for(
            lambda: len(_workers(proc.pid)) == 2 and not set(_workers(proc.pid)) & before,
            "every worker replaced",
        )
        assert _listeners(port) == 2
        assert _burst_split(proc.pid, port) == 2


def _burst_split(supervisor: int, port: int) -> int:
    """How many workers a burst of 48 connections lands on."""
    socks = _burst(port, 48)
    try:
        return len(_connections_by_worker(supervisor, port))
    finally:
        for sock in socks:
            sock.close()
