"""Several workers, one listening socket each: the kernel spreads new connections over them.

Why this exists: uvicorn's workers share one listening socket, and whichever worker wakes first
accepts a whole burst of new connections. 64 keep-alive connections opened at once split 62 / 2
between two workers here, and a keep-alive connection stays on the worker that accepted it for its
whole life, so one worker ran at twice the load of the other (p99 49.8 ms against 26-28 ms for an even
split; docs/scaling.md). With one ``SO_REUSEPORT`` socket per worker *slot*, all bound to the same
address, the kernel hashes every new connection to one slot's socket: the split follows the hash, not
who woke first.

What stays as uvicorn does it: this is uvicorn's own supervisor (health pings, restart of a dead or
hung worker, ``SIGHUP`` rolling restart, ``SIGTTIN``/``SIGTTOU``, graceful ``SIGTERM``) with one
change, that worker *i* serves socket *i*. The supervisor keeps every slot's socket open and
listening for the life of the server, so connections the kernel queued on a slot whose worker died or
is being replaced wait there for its successor (the accept queue survives) instead of being reset.

Two guards that a shared socket gave for free:
- ``SO_REUSEPORT`` would let a second instance started on the same port by mistake share its
  traffic silently. Before binding the group the port is claimed once *without* ``SO_REUSEPORT``, so
  a port in use still fails with "address already in use" and exit status 3 (the kernel also only
  lets sockets of the same user join a group).
- Where the platform has no ``SO_REUSEPORT``, or with ``WEB_WORKER_SOCKETS=shared``, uvicorn's
  shared socket is used unchanged.
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.supervisors.multiprocess import Multiprocess, Process

logger = logging.getLogger("uvicorn.error")


def reuseport_available() -> bool:
    """Whether this platform can hash connections over several listening sockets."""
    return hasattr(socket, "SO_REUSEPORT") and sys.platform.startswith("linux")


def serve(app: str, *, worker_sockets: str, **options: Any) -> None:
    """Run ``app`` with uvicorn ``options``: several workers get a socket each (``worker_sockets`` =
    ``reuseport``, on Linux), otherwise ``uvicorn.run`` as it is."""
    if options.get("workers", 1) > 1 and worker_sockets == "reuseport" and reuseport_available():
        SlotSupervisor(uvicorn.Config(app, **options)).run()
    else:
        uvicorn.run(app, **options)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def claim_port(host: str, port: int) -> int:
    """Bind ``host:port`` once without ``SO_REUSEPORT`` and release it: the port actually free (0 picks
    one). Exits with uvicorn's startup-failure status when another process holds it."""
    probe = socket.socket(_family(host), socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is no obstacle
        probe.bind((host, port))
        return int(probe.getsockname()[1])
    except OSError as exc:
        logger.error(exc)
        sys.exit(STARTUP_FAILURE)
    finally:
        probe.close()


def bind_slot_socket(host: str, port: int, backlog: int) -> socket.socket:
    """One member of the ``SO_REUSEPORT`` group on ``host:port``, already listening (connections queue
    on it while its worker starts)."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        logger.error(exc)
        sys.exit(STARTUP_FAILURE)
    sock.set_inheritable(True)
    return sock


class SlotSupervisor(Multiprocess):
    """uvicorn's ``Multiprocess`` supervisor in which worker *i* always serves socket *i*."""

    def __init__(self, config: Config) -> None:
        self.host, self.backlog = config.host, config.backlog
        self.port = claim_port(self.host, config.port)
        self.slot_sockets = [self._bind() for _ in range(config.workers)]
        super().__init__(config, sockets=self.slot_sockets)
        self.startup_failed = False
        logger.info(
            "Uvicorn running on %s://%s:%d, %d listening sockets (SO_REUSEPORT, one per worker)",
            "https" if config.is_ssl else "http",
            self.host,
            self.port,
            config.workers,
        )

    def _bind(self) -> socket.socket:
        return bind_slot_socket(self.host, self.port, self.backlog)

    def _spawn(self, slot: int) -> Process:
        process = Process(self.config, [self.slot_sockets[slot]])
        process.start()
        return process

    def init_processes(self) -> None:
        for slot in range(self.processes_num):
            self.processes.append(self._spawn(slot))

    def restart_all(self) -> None:
        """``SIGHUP``: each slot's replacement serves before its old worker is retired (as uvicorn)."""
        for slot, old_process in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new_process = self._spawn(slot)
            if not new_process.wait_until_ready(self.config.timeout_worker_healthcheck, self.should_exit):
                new_process.kill()
                new_process.join()
                if not self.should_exit.is_set():
                    logger.error(
                        f"New child process [{new_process.pid}] was not ready in time; "
                        f"keeping worker [{old_process.pid}] and aborting the restart."
                    )
                return
            old_process.terminate()
            old_process.join()
            self.processes[slot] = new_process

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return
        for slot, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()  # hung: kill it
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                # It failed before serving: the app or its configuration is broken and a restart would
                # fail the same way (uvicorn's rule).
                logger.error(f"Child process [{process.pid}] failed to start, stopping the parent process.")
                self.startup_failed = True
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            logger.info(f"Child process [{process.pid}] died")
            self.processes[slot] = self._spawn(slot)

    def handle_ttin(self) -> None:
        logger.info("Received SIGTTIN, increasing the number of processes.")
        self.slot_sockets.append(self._bind())
        self.processes_num += 1
        self.processes.append(self._spawn(len(self.processes)))

    def handle_ttou(self) -> None:
        logger.info("Received SIGTTOU, decreasing number of processes.")
        if self.processes_num <= 1:
            logger.info("Already reached one process, cannot decrease the number of processes anymore.")
            return
        self.processes_num -= 1
        process = self.processes.pop()
        process.terminate()
        process.join()
        # The slot leaves the group: new connections hash over the remaining sockets.
        self.slot_sockets.pop().close()

    def run(self) -> None:
        try:
            super().run()
        finally:
            for sock in self.slot_sockets:
                sock.close()
        if self.startup_failed:
            sys.exit(STARTUP_FAILURE)
