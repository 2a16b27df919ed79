"""Issue 11 benchmark: order placement on the paper broker through the full stack, 2 workers, real PostgreSQL.

* Unique keys: 64 users (signed up and logged in over HTTP first), wrk at 64 connections, every request a
  market order under a new Idempotency-Key (``bench/orders.lua``). Target: >= 800 orders/s with p99 <
  100 ms, every answer 201, in two rounds interleaved with the baseline. Afterwards the database must hold
  one ``orders`` row (filled) and one ``paper_orders`` row per 201, plus at most one per connection for
  requests still in flight when wrk stopped.
* Replays: each user repeats one key whose order the bench placed first: every answer must be the stored
  one with ``Idempotent-Replayed: true`` (reported: replays/s and p99).
* Baseline (same run, for the ratio): the bare FastAPI ``/healthz`` app of ``bench_http`` under the same
  wrk load, interleaved with the two order rounds; full-stack ``GET /healthz`` on the orders server is
  reported beside it. CPU per order (app workers, PostgreSQL, Redis, wrk) is read from /proc around the
  measured runs.
* Round trips per order: an in-process app (``create_app``, lifespan, ``httpx.ASGITransport``) places
  orders one at a time with SQLAlchemy engine and pool events attached, its PostgreSQL traffic through a
  counting proxy (frontend messages: each Sync or simple Query is one round trip) and its Redis commands
  counted; a second pass without the proxy times each statement.
* Profile (when py-spy is installed; it is not a project dependency): ``py-spy record`` on one worker
  during an extra, unscored run; the flat profile (self and inclusive samples) is printed.

Rate limits are raised through the environment (orders, default, signup, login) so that none refuses;
the limiter still runs on every request. Settings as ``bench_webhooks``, but a DB pool of 32 + 8 per
worker: it fits the 32 requests a worker has in flight, so no overflow connection is opened and closed
per burst.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import re
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    RESULTS,
    ROOT,
    WrkResult,
    bench_database_url,
    bench_settings_env,
    http_request,
    redis_url_if_reachable,
    run_wrk,
    save,
    serve,
    signup_and_login,
)
from bench.instrument import Counters, instrument, labeller, per_request  # noqa: E402

LUA = str(Path(__file__).resolve().parent / "orders.lua")
TARGET_OPS = 800
TARGET_P99_MS = 100
SYMBOLS = ["AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "TSLA", "META", "SPY"]  # as in orders.lua
PASSWORD = "bench-orders-password-0123"
HIGH_LIMIT = "10000000/minute"


def order_body(symbol: str) -> str:
    """Byte for byte the body orders.lua sends (a replay must match the first request's fingerprint)."""
    return f'{{"symbol":"{symbol}","qty":"1","side":"buy","type":"market","time_in_force":"day"}}'


def replay_key(run: str, user: int) -> str:
    return f"replay-{run}-{user}"  # user is 1-based, as in orders.lua


def replay_symbol(user: int) -> str:
    return SYMBOLS[(user - 1) % len(SYMBOLS)]


# ------------------------------------------------------------------------------------------ HTTP helpers
def _post(url: str, body: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    return http_request("POST", url, body.encode(), headers)


def create_users(base: str, count: int, tag: str) -> list[str]:
    """Sign up and log in ``count`` users over HTTP; their bearer tokens."""

    def one(i: int) -> str:
        return signup_and_login(base, f"bench-orders-{tag}-{i}@example.com", PASSWORD)

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def place_replay_orders(base: str, tokens: list[str], run: str) -> None:
    """The first request of every replay key (201), so that every request wrk sends is a replay."""
    for user, token in enumerate(tokens, start=1):
        status, _, body = _post(
            base + "/v1/orders",
            order_body(replay_symbol(user)),
            {"Authorization": f"Bearer {token}", "Idempotency-Key": replay_key(run, user)},
        )
        if status != 201:
            raise RuntimeError(f"placing the replay order answered {status}: {body[:200]!r}")


# ------------------------------------------------------------------------------------------ processes, CPU
_TICK = os.sysconf("SC_CLK_TCK")


def _pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state is [0], ppid [1], utime [11], stime [12])."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rsplit(")", 1)[1].split()


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def server_pids(base: str) -> tuple[int, list[int]]:
    """The server (``bench.serve``'s supervisor, or a plain uvicorn) serving ``base`` and its worker processes
    (from /proc)."""
    port = base.rsplit(":", 1)[1]
    pids = _pids()
    for pid in pids:
        cmd = _cmdline(pid)
        served = "bench.serve" in cmd or "uvicorn" in cmd
        if served and "--port" in cmd and cmd[cmd.index("--port") + 1] == port:
            workers = [
                child
                for child in pids
                if (st := _stat(child)) is not None
                and st[1] == str(pid)
                and "spawn_main" in " ".join(_cmdline(child))
                and "resource_tracker" not in " ".join(_cmdline(child))
            ]
            return pid, workers
    raise RuntimeError(f"no server process found for {base}")


def _cpu_by_pid(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each of ``pids`` still alive."""
    return {pid: (int(st[11]) + int(st[12])) / _TICK for pid in pids if (st := _stat(pid)) is not None}


def _delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used in between by the processes alive at both ends (one that exited meanwhile is left out)."""
    return sum(after[pid] - before[pid] for pid in after.keys() & before.keys())


def _named(name: str) -> list[int]:
    out = []
    for pid in _pids():
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                out.append(pid)
    return out


def _box_busy() -> float:
    """CPU seconds the whole machine spent busy (user, nice, system, irq, softirq, steal)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


@dataclass
class CpuSnapshot:
    wall: float
    workers: dict[int, float]
    postgres: dict[int, float]
    redis: dict[int, float]
    children: float  # waited-for children of this process: wrk
    box_busy: float

    @classmethod
    def take(cls, workers: list[int]) -> CpuSnapshot:
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return cls(
            time.monotonic(),
            _cpu_by_pid(workers),
            _cpu_by_pid(_named("postgres")),
            _cpu_by_pid(_named("redis-server")),
            kids.ru_utime + kids.ru_stime,
            _box_busy(),
        )


def cpu_per_request(before: CpuSnapshot, after: CpuSnapshot, requests: int) -> dict[str, float]:
    """CPU milliseconds per request by consumer, and the whole box's busy cores over the run."""
    n = max(requests, 1)
    parts = {
        "app workers": _delta(before.workers, after.workers),
        "postgres": _delta(before.postgres, after.postgres),
        "redis": _delta(before.redis, after.redis),
        "wrk": after.children - before.children,
    }
    box = after.box_busy - before.box_busy
    out = {f"{k} ms": v * 1000 / n for k, v in parts.items()}
    out["other processes ms"] = max(0.0, box - sum(parts.values())) * 1000 / n
    out["box busy cores"] = box / (after.wall - before.wall)
    return out


# ------------------------------------------------------------------------------------------ wrk runs
@dataclass
class OrdersRun:
    wrk: WrkResult
    statuses: dict[str, int]
    replayed: int
    cpu: dict[str, float] = field(default_factory=dict)
    verify: dict[str, Any] = field(default_factory=dict)

    @property
    def responses(self) -> int:
        return sum(self.statuses.values())

    @property
    def created(self) -> int:
        return self.statuses.get("201", 0)

    @property
    def non_201(self) -> int:
        return self.responses - self.created

    def per_s(self, wanted: int) -> float:
        """wrk's requests/s scaled to the answers of interest (201s, or replays)."""
        return self.wrk.requests_per_s * wanted / self.responses if self.responses else 0.0


def wrk_orders(
    label: str,
    base: str,
    *,
    mode: str,
    run: str,
    tokens_file: Path,
    stats_dir: Path,
    connections: int,
    duration: int,
    workers: list[int] | None = None,
) -> OrdersRun:
    stats = stats_dir / f"stats-{run}.json"
    os.environ.update(
        ORDERS_TOKENS=str(tokens_file),
        ORDERS_MODE=mode,
        ORDERS_RUN=run,
        ORDERS_STATS=str(stats),
        WRK_THREADS="2",
    )
    before = CpuSnapshot.take(workers or [])
    result = run_wrk(
        label, base + "/v1/orders", connections=connections, duration=duration, script=LUA, warmup=0
    )
    after = CpuSnapshot.take(workers or [])
    data = json.loads(stats.read_text())
    out = OrdersRun(result, {str(k): int(v) for k, v in data["status"].items()}, int(data["replayed"]))
    if workers:
        out.cpu = cpu_per_request(before, after, out.responses)
    return out


async def verify_rows(database_url: str, run: str) -> dict[str, Any]:
    """What the database holds for one unique-key run (keys ``bench-<run>-…``)."""
    import asyncpg

    from tests.support.db import asyncpg_dsn

    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        pattern = f"bench-{run}-%"
        orders = await conn.fetchrow(
            "SELECT count(*) AS rows, count(*) FILTER (WHERE status = 'filled') AS filled "
            "FROM orders WHERE idempotency_key LIKE $1",
            pattern,
        )
        paper = await conn.fetchval(
            "SELECT count(*) FROM paper_orders p JOIN orders o "
            "ON o.client_order_id = p.client_order_id AND p.account = o.user_id::text "
            "WHERE o.idempotency_key LIKE $1",
            pattern,
        )
        completed = await conn.fetchval(
            "SELECT count(*) FROM idempotency_keys WHERE key LIKE $1 AND state = 'completed'", pattern
        )
        events = await conn.fetchval(
            "SELECT count(*) FROM order_events e JOIN orders o ON o.id = e.order_id "
            "WHERE o.idempotency_key LIKE $1",
            pattern,
        )
    finally:
        await conn.close()
    return {
        "orders_rows": orders["rows"],
        "orders_filled": orders["filled"],
        "paper_orders_rows": paper,
        "idempotency_completed": completed,
        "order_events_rows": events,
    }


async def settled_rows(database_url: str, run: str) -> dict[str, Any]:
    """``verify_rows`` once the requests wrk stopped waiting for have finished (two equal readings, 15 s
    at most)."""
    last = await verify_rows(database_url, run)
    deadline = time.monotonic() + 15
    now = last
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = await verify_rows(database_url, run)
        if now == last and now["orders_filled"] == now["orders_rows"]:
            break
        last = now
    return now


def check_rows(run: OrdersRun, connections: int) -> bool:
    """One filled order, paper order and completed key per 201 (and two order events); the excess — answers
    wrk never read because the run ended — at most one per connection."""
    v = run.verify
    excess = v["orders_rows"] - run.created
    v["excess_over_201s"] = excess
    v["ok"] = (
        0 <= excess <= connections
        and v["orders_filled"] == v["orders_rows"]
        and v["paper_orders_rows"] == v["orders_rows"]
        and v["idempotency_completed"] == v["orders_rows"]
        and v["order_events_rows"] == 2 * v["orders_rows"]
    )
    return bool(v["ok"])


# ------------------------------------------------------------------------------------------ profile
def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


@contextlib.contextmanager
def profiling(pid: int, seconds: int, out: Path) -> Iterator[None]:
    spy = py_spy()
    proc = None
    if spy:
        proc = subprocess.Popen(
            [
                spy,
                "record",
                "-p",
                str(pid),
                "-d",
                str(seconds),
                "-r",
                "200",
                "-F",
                "-f",
                "raw",
                "-o",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    try:
        yield
    finally:
        if proc is not None:
            try:
                _, err = proc.communicate(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if proc.returncode:
                print(f"[bench] py-spy failed: {err.decode(errors='replace')[-500:]}", file=sys.stderr)


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::\d+)?\)$")


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3", str(ROOT) + "/"):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3" and "/" in tail else tail
    return path


def _area(path: str) -> str:
    short = _short(path)
    if short.startswith("app/"):
        return "app/" + short.split("/")[1]
    top = short.split("/")[0].removesuffix(".py")
    return top or "?"


def flat_profile(raw: Path, top: int = 15) -> dict[str, Any]:
    """Self (leaf) and inclusive samples per function from py-spy's collapsed stacks, for the event loop's
    thread; samples of other threads (uvicorn's supervisor ping thread, blocked in a pipe read that py-spy
    does not count as idle; Argon2's pool) are counted apart."""
    self_: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    other_threads: collections.Counter[str] = collections.Counter()
    total = greenlet = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = []
        for frame in stack.split(";"):
            m = _FRAME.match(frame)
            frames.append((m["func"], m["file"]) if m else (frame, ""))
        names = [f"{func} ({_short(file)})" for func, file in frames]
        if frames[0][1].endswith("threading.py"):  # a thread started by threading, not the event loop
            other_threads[names[-1]] += n
            continue
        total += n
        if frames[0][0] != "<module>":  # SQLAlchemy's sync side, run in a greenlet: a stack of its own
            greenlet += n
        self_[names[-1]] += n
        areas[_area(frames[-1][1])] += n
        for name in set(names):
            incl[name] += n
    app_incl = [(k, v) for k, v in incl.most_common() if "(app/" in k]
    return {
        "samples": total,
        "greenlet_samples": greenlet,
        "other_thread_samples": sum(other_threads.values()),
        "other_threads": other_threads.most_common(3),
        "self": self_.most_common(top),
        "inclusive_app": app_incl[:top],
        "self_by_area": areas.most_common(12),
    }


# ------------------------------------------------------------------------------------------ round trips
class PgWireCounter:
    """A loopback proxy to PostgreSQL that counts the frontend messages by type (refusing TLS so it can
    read them): each Sync ('S') or simple Query ('Q') is one round trip the client waits for."""

    def __init__(self, host: str | None, port: int, socket_path: str | None) -> None:
        self.host, self.port, self.socket_path = host, port, socket_path
        self.listen_port = 0
        self.counts: collections.Counter[str] = collections.Counter()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.listen_port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.socket_path:
            up_reader, up_writer = await asyncio.open_unix_connection(self.socket_path)
        else:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)

        async def upstream() -> None:
            with contextlib.suppress(Exception):
                while True:
                    head = await reader.readexactly(8)
                    length, code = struct.unpack("!ii", head)
                    if length == 8 and code in (80877103, 80877104):  # SSLRequest / GSSENCRequest: no
                        writer.write(b"N")
                        await writer.drain()
                        continue
                    up_writer.write(head + await reader.readexactly(length - 8))
                    break
                while True:
                    head = await reader.readexactly(5)
                    (length,) = struct.unpack("!i", head[1:])
                    payload = await reader.readexactly(length - 4)
                    self.counts[chr(head[0])] += 1
                    up_writer.write(head + payload)
                    await up_writer.drain()
            up_writer.close()

        async def downstream() -> None:
            with contextlib.suppress(Exception):
                while data := await up_reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.close()

        await asyncio.gather(upstream(), downstream())


_SQL_LABELS = (
    ("FROM users", "user read (auth)"),
    ("INSERT INTO idempotency_keys", "idempotency claim"),
    ("INSERT INTO orders", "phase (a): order + event"),
    ("INSERT INTO paper_orders", "paper broker: insert"),
    ("UPDATE orders SET", "phase (c): order change + event"),
    ("UPDATE idempotency_keys", "phase (c): store response"),
)


_label = labeller(_SQL_LABELS)


def _proxied(database_url: str) -> tuple[Any, PgWireCounter] | None:
    """The database URL (host and port still to set) and a counting proxy to its server."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    host = url.host or url.query.get("host")
    if isinstance(host, tuple):
        host = host[0]
    if not host:
        return None
    port = url.port or 5432
    socket_path = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else None
    proxy = PgWireCounter(None if socket_path else host, port, socket_path)
    query = {k: v for k, v in url.query.items() if k != "host"}
    return url.set(host="127.0.0.1", query=query), proxy


async def diagnose(env: dict[str, str], *, orders: int, through_proxy: bool) -> dict[str, Any]:
    """Place ``orders`` orders, then as many replays, one at a time in-process; per-request counts."""
    import httpx
    from asgi_lifespan import LifespanManager

    from app.core.config import load_settings
    from app.main import create_app

    values: dict[str, Any] = {k.lower(): v for k, v in env.items()}
    values.update(log_level="WARNING", reconcile_interval_seconds=3600)  # no background passes in between
    proxy: PgWireCounter | None = None
    if through_proxy:
        proxied = _proxied(values["database_url"])
        if proxied is None:
            return {"skipped": "database URL has no host to proxy"}
        url, proxy = proxied
        await proxy.start()
        values["database_url"] = url.set(port=proxy.listen_port).render_as_string(hide_password=False)
    counters = Counters()
    app = create_app(load_settings(_env_file=None, **values))
    result: dict[str, Any] = {}
    try:
        async with LifespanManager(app, startup_timeout=30) as manager:
            transport = httpx.ASGITransport(app=manager.app, client=("127.0.0.1", 50000))
            async with httpx.AsyncClient(transport=transport, base_url="https://testserver", timeout=30) as c:
                email = f"bench-diag-{uuid.uuid4().hex[:8]}@example.com"
                creds = {"email": email, "password": PASSWORD}
                assert (await c.post("/v1/auth/signup", json=creds)).status_code == 201
                token = (await c.post("/v1/auth/login", json=creds)).json()["access_token"]
                auth = {"Authorization": f"Bearer {token}"}
                broker = app.state.broker
                instrument(
                    app,
                    counters,
                    label=_label,
                    timed=(
                        (broker, "submit_order", "phase (b): broker.submit_order"),
                        (broker.quotes, "latest_quote", "  of which the synthetic quote"),
                    ),
                )

                async def place(key: str, symbol: str) -> httpx.Response:
                    return await c.post(
                        "/v1/orders",
                        content=order_body(symbol),
                        headers={**auth, "Idempotency-Key": key, "Content-Type": "application/json"},
                    )

                for i in range(20):  # warm: pool connection, prepared statements, script loaded
                    assert (await place(f"diag-warm-{i:04d}", SYMBOLS[i % 8])).status_code == 201
                replay = f"diag-replay-{uuid.uuid4().hex[:8]}"
                assert (await place(replay, "AAPL")).status_code == 201
                assert (await place(replay, "AAPL")).headers.get("Idempotent-Replayed") == "true"
                for phase, make_key in (
                    ("order", lambda i: f"diag-order-{i:05d}"),
                    ("replay", lambda i: replay),
                ):
                    await asyncio.sleep(0.2)
                    counters.reset()
                    if proxy:
                        proxy.counts.clear()
                    t0, cpu0 = time.perf_counter(), time.process_time()
                    for i in range(orders):
                        r = await place(make_key(i), "AAPL" if phase == "replay" else SYMBOLS[i % 8])
                        expected = (r.status_code == 201) and (
                            (r.headers.get("Idempotent-Replayed") == "true") == (phase == "replay")
                        )
                        if not expected:
                            raise RuntimeError(f"diagnostic {phase} answered {r.status_code}: {r.text[:200]}")
                    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
                    result[phase] = per_request(counters, proxy, orders, elapsed)
                    result[phase]["cpu_ms"] = cpu * 1000 / orders
    finally:
        if proxy:
            await proxy.stop()
    return result


def print_round_trips(diag: dict[str, Any], timing: dict[str, Any]) -> None:
    """Per-request counts (proxied pass) and sequential in-process times (direct pass)."""
    if "skipped" in diag or "skipped" in timing:
        print(f"round-trip diagnostic skipped: {diag.get('skipped') or timing.get('skipped')}")
        return
    phases = [p for p in ("order", "replay") if p in diag]
    print("\n| per request (in-process, sequential) | " + " | ".join(phases) + " |")
    print("|---|" + "---|" * len(phases))

    def row(label: str, values: list[Any]) -> None:
        cells = [v if isinstance(v, str) else f"{v:.2f}".rstrip("0").rstrip(".") for v in values]
        print(f"| {label} | " + " | ".join(cells) + " |")

    labels = list(dict.fromkeys(k for p in phases for k in diag[p]["statements"]))
    for label in labels:
        row(f"SQL: {label}", [diag[p]["statements"].get(label, 0) for p in phases])
    row("**SQL statements**", [diag[p]["statements_total"] for p in phases])
    row("pool checkouts (= pre-ping `SELECT 1`)", [diag[p]["pool_checkouts_pre_pings"] for p in phases])
    row("BEGIN + COMMIT (real transactions)", [2 * diag[p]["begin"].get("transaction", 0) for p in phases])
    row("autocommit units (no BEGIN/COMMIT sent)", [diag[p]["begin"].get("autocommit", 0) for p in phases])
    row(
        "**PostgreSQL round trips on the wire** (Sync + Query)", [diag[p]["wire_round_trips"] for p in phases]
    )
    row("wire messages", [json.dumps(diag[p]["wire_messages"]) for p in phases])
    row("Redis commands", [json.dumps(diag[p]["redis_commands"]) for p in phases])
    row("time per request, ms (direct, no proxy)", [timing[p]["request_ms"] for p in phases])
    row("  CPU of the process (app + test client), ms", [timing[p]["cpu_ms"] for p in phases])
    for label in labels:
        row(f"  ms in: {label}", [timing[p]["statement_ms"].get(label, 0) for p in phases])
    row("  ms in: pre-pings", [timing[p]["pre_ping_ms"] for p in phases])
    for label in timing["order"]["timers_ms"]:
        row(f"  ms in: {label.strip()}", [timing[p]["timers_ms"].get(label, 0) for p in phases])


# ------------------------------------------------------------------------------------------ main
def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=15, help="seconds per measured order run")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--diag-orders", type=int, default=200, help="orders in the round-trip diagnostic")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy run")
    args = parser.parse_args()

    redis_url = redis_url_if_reachable()
    database_url = bench_database_url()
    env = bench_settings_env(
        database_url,
        redis_url,
        BROKER_PROVIDER="paper",
        MARKET_DATA_PROVIDER="synthetic",
        RATE_LIMIT_ORDERS=HIGH_LIMIT,
        RATE_LIMIT_DEFAULT=HIGH_LIMIT,
        RATE_LIMIT_SIGNUP=HIGH_LIMIT,
        RATE_LIMIT_LOGIN=HIGH_LIMIT,
        ACCESS_TOKEN_TTL_SECONDS="3600",
        WEB_CONCURRENCY="2",
        # 32 concurrent requests per worker, each holding at most one connection at a time: a pool that
        # fits them, so no overflow connection is opened and closed per burst.
        DB_POOL_SIZE="32",
        DB_MAX_OVERFLOW="8",
    )
    conns, tag = args.connections, uuid.uuid4().hex[:6]
    print(f"[bench] Redis: {'on' if redis_url else 'off (limiter in memory per worker)'}", flush=True)
    baseline: list[WrkResult] = []
    healthz: WrkResult | None = None
    rounds: list[OrdersRun] = []
    warmups: list[OrdersRun] = []
    replays: OrdersRun | None = None
    profiled: OrdersRun | None = None
    profile: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        tokens_file = tmp / "tokens.txt"
        for round_ in (1, 2):  # interleaved so drift on a shared machine hits both equally
            with serve("bench.bare_app:app", {}) as base:
                baseline.append(
                    run_wrk(f"bare FastAPI /healthz (round {round_})", base + "/healthz", connections=conns)
                )
            with serve("app.main:app", env) as base:
                _, workers = server_pids(base)
                if round_ == 1:
                    tokens = create_users(base, args.users, tag)
                    tokens_file.write_text("\n".join(tokens) + "\n")
                    healthz = run_wrk(
                        "full stack /healthz (orders server)", base + "/healthz", connections=conns
                    )
                common = {"tokens_file": tokens_file, "stats_dir": tmp, "connections": conns}
                warmups.append(
                    wrk_orders(
                        f"warm-up {round_}",
                        base,
                        mode="unique",
                        run=f"w{round_}",
                        duration=args.warmup,
                        **common,
                    )
                )
                run = f"m{round_}"
                measured = wrk_orders(
                    f"orders, unique keys (round {round_})",
                    base,
                    mode="unique",
                    run=run,
                    duration=args.duration,
                    workers=workers,
                    **common,
                )
                measured.verify = asyncio.run(settled_rows(database_url, run))
                check_rows(measured, conns)
                rounds.append(measured)
                if round_ == 2:
                    place_replay_orders(base, tokens, tag)
                    wrk_orders("replay warm-up", base, mode="replay", run=tag, duration=2, **common)
                    replays = wrk_orders(
                        "replays (same key per user)",
                        base,
                        mode="replay",
                        run=tag,
                        duration=10,
                        workers=workers,
                        **common,
                    )
                    if not args.no_profile and py_spy():
                        raw = tmp / "profile.txt"
                        with profiling(workers[0], 10, raw):
                            time.sleep(0.5)
                            profiled = wrk_orders(
                                "orders, py-spy on worker 1 (not scored)",
                                base,
                                mode="unique",
                                run="p2",
                                duration=10,
                                **common,
                            )
                        if raw.exists():
                            profile = flat_profile(raw)
                            RESULTS.mkdir(parents=True, exist_ok=True)
                            shutil.copy(raw, RESULTS / "orders-pyspy.txt")

    print("\n[bench] round-trip diagnostic (in-process, one request at a time)", flush=True)
    diag = asyncio.run(diagnose(env, orders=args.diag_orders, through_proxy=True))
    timing = asyncio.run(diagnose(env, orders=args.diag_orders, through_proxy=False))

    # ------------------------------------------------------------------ report
    bare_rps = sum(r.requests_per_s for r in baseline) / len(baseline)
    ops = sum(r.per_s(r.created) for r in rounds) / len(rounds)
    worst_p99 = max(r.wrk.p99_ms for r in rounds)
    non201 = sum(r.non_201 for r in rounds)
    sock = sum(r.wrk.errors for r in rounds)
    verified = all(r.verify.get("ok") for r in rounds)
    print(
        "\n| run (64 connections, 2 workers) | req/s | p50 ms | p99 ms | answers | non-201 | socket errors |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in baseline + ([healthz] if healthz else []):
        print(
            f"| {r.label} | {r.requests_per_s:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | | {r.non_2xx} | {r.errors} |"
        )
    for o in [*warmups, *rounds, *([replays] if replays else []), *([profiled] if profiled else [])]:
        others = {k: v for k, v in o.statuses.items() if k != "201"}
        extra = f" (replayed: {o.replayed})" if o.replayed else ""
        print(
            f"| {o.wrk.label}{extra} | {o.wrk.requests_per_s:,.0f} | {o.wrk.p50_ms:.2f} | {o.wrk.p99_ms:.2f} "
            f"| {o.responses} | {o.non_201}{' ' + json.dumps(others) if others else ''} | {o.wrk.errors} |"
        )
    print("\nrows written by each measured run (after wrk stopped):")
    for r in rounds:
        print(f"  {r.wrk.label}: 201s {r.created}, {json.dumps(r.verify)}")
    print("\nCPU per answer during the measured runs (ms; /proc):")
    for o in [*rounds, *([replays] if replays else [])]:
        print(f"  {o.wrk.label}: " + ", ".join(f"{k} {v:.2f}" for k, v in o.cpu.items()))
    print_round_trips(diag, timing)
    if profile:
        print(
            f"\npy-spy on one worker, 200 Hz, {profile['samples']} non-idle samples of the event loop's thread "
            f"(+{profile['other_thread_samples']} in other threads: {profile['other_threads']}); "
            "raw stacks in bench/results/orders-pyspy.txt. Top self (leaf) functions:"
        )
        for name, n in profile["self"]:
            print(f"  {100 * n / profile['samples']:5.1f}%  {name}")
        print("self samples by package / app module:")
        print(
            "  " + ", ".join(f"{a} {100 * n / profile['samples']:.1f}%" for a, n in profile["self_by_area"])
        )
        print(
            "inclusive, app code (lower bounds: the "
            f"{100 * profile['greenlet_samples'] / profile['samples']:.1f}% of samples in SQLAlchemy's greenlet "
            "stacks, rooted at Session.execute/get/commit, are not under their app caller):"
        )
        for name, n in profile["inclusive_app"]:
            print(f"  {100 * n / profile['samples']:5.1f}%  {name}")
    elif not args.no_profile:
        print("\npy-spy not installed: profile skipped (`.venv/bin/pip install py-spy` for a one-off run)")

    replay_ops = replays.per_s(replays.replayed) if replays else 0.0
    ok = ops >= TARGET_OPS and worst_p99 < TARGET_P99_MS and non201 == 0 and sock == 0 and verified
    print(
        f"\norders: {ops:,.0f}/s (target >= {TARGET_OPS}), worst p99 {worst_p99:.1f} ms (target < "
        f"{TARGET_P99_MS} ms), non-201 {non201}, socket errors {sock}, rows verified {verified}; "
        f"baseline bare /healthz {bare_rps:,.0f} req/s, orders/bare {ops / bare_rps:.3f}"
        + (f", orders/full-stack healthz {ops / healthz.requests_per_s:.3f}" if healthz else "")
        + (f"; replays {replay_ops:,.0f}/s p99 {replays.wrk.p99_ms:.1f} ms" if replays else "")
        + f" -> {'PASS' if ok else 'MISS'}"
    )
    save(
        "orders",
        {
            "baseline": baseline,
            "healthz_full": healthz,
            "warmups": warmups,
            "rounds": rounds,
            "replays": replays,
            "profiled": profiled,
            "profile": profile,
            "round_trips": diag,
            "timings": timing,
            "orders_per_s": ops,
            "p99_ms": worst_p99,
            "ratio_to_bare": ops / bare_rps,
            "replays_per_s": replay_ops,
            "pass": ok,
        },
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
