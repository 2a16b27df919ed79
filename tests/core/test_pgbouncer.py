"""Behind PgBouncer in transaction mode (docs/scaling.md): a real PgBouncer (Debian's ``pgbouncer`` package;
``.ci/run`` installs it, elsewhere these tests are skipped without it) in front of the test PostgreSQL, with
few server connections, so transactions of different app connections take turns on them.

* Prepared statements: with the default ``DB_STATEMENT_CACHE_SIZE`` the app's database layer fails
  ("prepared statement … does not exist") as soon as several connections share the server connections; with
  0 the same work — transactions and single-statement units side by side — runs without an error.
* A transaction queued in PgBouncer past ``query_wait_timeout`` is answered with a quick 503 (the app's
  ``DB_POOL_TIMEOUT`` cannot see that queue), and the next request gets a fresh connection.
* The two server-side limits the app sends as startup parameters: PgBouncer refuses the connection unless
  they are in ``ignore_startup_parameters``, and then drops them; set on the server side (here the
  database entry's ``connect_query``), every connection has them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app.core.db import Database
from tests.core.test_readiness import _wait_until_running
from tests.support import db as dbsupport
from tests.support.problems import assert_problem
from tests.support.routes import router as support_router
from tests.support.servers import eventually, free_port
from tests.support.settings import make_settings

pytestmark = pytest.mark.slow

LIMITS = "statement_timeout,idle_in_transaction_session_timeout"


def _pgbouncer() -> str:
    path = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer") if os.access(p, os.X_OK)), None
    )
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("pgbouncer is not installed; CI must run the PgBouncer tests (.ci/run installs it)")
        pytest.skip("pgbouncer not installed (Debian: apt-get install pgbouncer)")
    return path


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _configure(
    workdir: Path, database_url: str, port: int, pool_size: int, connect_query: str, settings: dict[str, str]
) -> Path:
    """pgbouncer.ini and its users file in ``workdir``, readable by the unprivileged user it may run as."""
    target = make_url(dbsupport.sqlalchemy_url(database_url))
    host = target.host or str(target.query.get("host", "127.0.0.1"))
    users = workdir / "users.txt"
    users.write_text(f'"{target.username}" "{target.password or ""}"\n')
    query = f" connect_query='{connect_query}'" if connect_query else ""
    extra = "".join(f"{k} = {v}\n" for k, v in settings.items())
    config = workdir / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"* = host={host} port={target.port or 5432}{query}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {users}\n"
        f"pool_mode = transaction\ndefault_pool_size = {pool_size}\nmax_client_conn = 100\n" + extra
    )
    for path in (workdir, users, config):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return config


def _spawn(config: Path, log: Path) -> subprocess.Popen[bytes]:
    user = ["-u", "nobody"] if os.geteuid() == 0 else []  # it refuses to run as root
    with log.open("wb") as out:
        return subprocess.Popen([_pgbouncer(), *user, str(config)], stdout=out, stderr=subprocess.STDOUT)


@contextlib.asynccontextmanager
async def pgbouncer(
    database_url: str, *, pool_size: int = 2, connect_query: str = "", **settings: str
) -> AsyncIterator[str]:
    """A transaction-mode PgBouncer with ``pool_size`` server connections in front of ``database_url``'s server;
    yields ``database_url`` pointed at it. ``settings`` are added to its ``[pgbouncer]`` section."""
    _pgbouncer()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="tradedesk-pgbouncer-") as tmp:
        log = Path(tmp) / "pgbouncer.log"
        proc = _spawn(_configure(Path(tmp), database_url, port, pool_size, connect_query, settings), log)
        try:
            try:
                await eventually(
                    lambda: proc.poll() is not None or _accepts(port), within=10, what="pgbouncer"
                )
                assert proc.poll() is None, f"pgbouncer exited {proc.returncode}"
            except AssertionError as exc:
                exc.add_note(log.read_text(errors="replace")[-3000:])
                raise
            url = make_url(dbsupport.sqlalchemy_url(database_url))
            yield url.set(host="127.0.0.1", port=port, query={}).render_as_string(hide_password=False)
        finally:
            proc.terminate()
            await asyncio.to_thread(proc.wait, 10)


async def run_side_by_side(db: Database, workers: int = 10, rounds: int = 5) -> list[BaseException]:
    """Transactions and single-statement units from ``workers`` connections at once; the failures."""

    async def work(i: int) -> None:
        for j in range(rounds):
            async with db.own_transaction() as session:
                assert (
                    await session.execute(text("SELECT CAST(:x AS int) + 1"), {"x": i})
                ).scalar_one() == i + 1
                await session.execute(
                    text("SELECT count(*) FROM pg_class WHERE relname = :n"), {"n": f"t{j}"}
                )
            async with db.own_transaction(single_statement=True) as session:
                assert (
                    await session.execute(text("SELECT CAST(:x AS int) * 2"), {"x": j})
                ).scalar_one() == j * 2

    results = await asyncio.gather(*(work(i) for i in range(workers)), return_exceptions=True)
    return [r for r in results if isinstance(r, BaseException)]


@pytest.mark.parametrize("cache_size", [100, 0], ids=["default-cache", "caches-off"])
async def test_transaction_mode_needs_the_statement_caches_off(database_url: str, cache_size: int) -> None:
    async with pgbouncer(database_url, ignore_startup_parameters=LIMITS) as url:
        settings = make_settings(url, db_statement_cache_size=cache_size, db_pool_size=10, db_max_overflow=0)
        db = Database.for_settings(settings)
        try:
            failures = await run_side_by_side(db)
        finally:
            await db.dispose()
    if cache_size:
        assert failures, "the default statement caches worked behind transaction pooling"
        assert all("prepared statement" in str(f) for f in failures), [str(f)[:200] for f in failures]
    else:
        assert failures == [], [str(f)[:300] for f in failures]


async def test_a_transaction_queued_past_query_wait_timeout_is_a_quick_503(
    make_client, database_url: str
) -> None:
    """The app's DB_POOL_TIMEOUT cannot see PgBouncer's own queue; its ``query_wait_timeout`` bounds it, and
    the request is answered 503 ``db-unavailable`` (not a 500), the next one served on a fresh connection."""
    async with pgbouncer(
        database_url, pool_size=1, ignore_startup_parameters=LIMITS, query_wait_timeout="1"
    ) as url:
        client = await make_client(routers=[support_router], database_url=url, db_statement_cache_size=0)
        assert (await client.get("/v1/_test/db-sleep", params={"seconds": 0})).status_code == 200
        # The hold request takes PgBouncer's one server connection for 4 s (its timeout checks run about
        # once a second, so the hold outlasts a 1 s wait with room to spare).
        holding = asyncio.create_task(client.get("/v1/_test/db-sleep", params={"seconds": 4}))
        await _wait_until_running(database_url, "SELECT pg_sleep")
        started = time.monotonic()
        queued = await client.get("/v1/_test/db-sleep", params={"seconds": 0})
        waited = time.monotonic() - started
        assert assert_problem(queued, 503)["type"].endswith("/db-unavailable"), queued.text
        assert queued.headers["retry-after"] == "1"
        assert waited < 3, f"answered after {waited:.2f} s: not by query_wait_timeout (1 s)"
        assert (await holding).status_code == 200
        assert (await client.get("/v1/_test/db-sleep", params={"seconds": 0})).status_code == 200


async def test_the_startup_limits_are_refused_then_dropped_then_set_by_the_server_side(
    database_url: str,
) -> None:
    settings = dict(db_statement_cache_size=0, db_statement_timeout_seconds=2.5)

    async def show(url: str) -> tuple[str, str]:
        db = Database.for_settings(make_settings(url, **settings))
        try:
            async with db.own_transaction() as session:
                timeout = (await session.execute(text("SHOW statement_timeout"))).scalar_one()
                idle = (await session.execute(text("SHOW idle_in_transaction_session_timeout"))).scalar_one()
                return timeout, idle
        finally:
            await db.dispose()

    direct = await show(database_url)
    assert direct == ("2500ms", "1min"), direct  # straight to PostgreSQL: the app's limits

    async with pgbouncer(database_url) as url:  # PgBouncer refuses what it cannot track
        with pytest.raises(Exception, match="unsupported startup parameter"):
            await show(url)

    async with pgbouncer(database_url, ignore_startup_parameters=LIMITS) as url:  # accepted, and dropped
        dropped = await show(url)
    assert dropped != direct and "2500ms" not in dropped, dropped

    server_side = "SET statement_timeout = 2500; SET idle_in_transaction_session_timeout = 60000"
    async with pgbouncer(database_url, connect_query=server_side, ignore_startup_parameters=LIMITS) as url:
        assert await show(url) == direct
