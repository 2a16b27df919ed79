"""docs/runbooks/: every step is a real command or setting of this project, and this runs them.

* ``env`` blocks: each variable is a setting (``Settings``), its value validates, and some other test
  exercises it (its field name or variable appears in a test that overrides it);
* ``sh`` blocks: ``python -m app.cli …`` runs as a child process against the test database (a dry run
  on an empty database: it must succeed); ``curl …  # expect NNN`` runs against a real server started
  with the runbook's settings up to that step, and must print NNN;
* ``sql`` blocks run against the test database; the pool runbook's queries are run against real
  long-running and lock-holding sessions named like the app's, and must find and end them. The only
  change made to a query is its age threshold (``interval '10 seconds'`` → ``'0 seconds'``), so the
  test does not wait ten seconds.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from app.core.config import Settings
from tests.support import db as dbsupport
from tests.support.cli import cli_env, run_cli
from tests.support.servers import ROOT, Servers
from tests.support.settings import make_settings

RUNBOOKS = ROOT / "docs" / "runbooks"
EMERGENCIES = (
    "payment-webhook-compromised",
    "rate-limit-attack",
    "database-pool-exhausted",
    "broker-outage",
    "discord-ban",
)
_BLOCK = re.compile(r"^```(env|sh|sql)\n(.*?)^```", re.S | re.M)
_EXPECT = re.compile(r"\s+#\s*expect\s+(\S+)\s*$")
_AGE = "interval '10 seconds'"


@dataclass
class Block:
    kind: str
    text: str
    env: dict[str, str]  # the runbook's settings up to and including this block


def blocks(name: str) -> list[Block]:
    out, env = [], {}
    for kind, body in _BLOCK.findall((RUNBOOKS / f"{name}.md").read_text()):
        if kind == "env":
            for line in body.splitlines():
                if line.strip() and not line.startswith("#"):
                    key, _, value = line.partition("=")
                    env[key.strip()] = value.strip()
        out.append(Block(kind, body, dict(env)))
    return out


def commands(kind: str) -> list[tuple[str, str, Block]]:
    found = []
    for name in EMERGENCIES:
        for block in blocks(name):
            if block.kind == kind:
                found += [(name, line.strip(), block) for line in block.text.splitlines() if line.strip()]
    return found


def test_every_emergency_has_a_runbook_listed_in_the_index() -> None:
    index = (RUNBOOKS / "README.md").read_text()
    for name in EMERGENCIES:
        assert (RUNBOOKS / f"{name}.md").is_file(), name
        assert f"({name}.md)" in index, name
        kinds = {b.kind for b in blocks(name)}
        assert "env" in kinds and kinds & {"sh", "sql"}, (name, kinds)


def _exercised(field: str, variable: str) -> bool:
    me = Path(__file__).resolve()
    pattern = re.compile(rf"\b{field}\s*=|\b{variable}\b")
    return any(
        pattern.search(p.read_text()) for p in (ROOT / "tests").rglob("test_*.py") if p.resolve() != me
    )


@pytest.mark.parametrize(
    ("name", "line"), [(n, line) for n, line, _ in commands("env") if not line.startswith("#")]
)
def test_every_setting_is_real_valid_and_exercised_by_a_test(name: str, line: str) -> None:
    variable, _, value = line.partition("=")
    field = variable.lower()
    assert field in Settings.model_fields, f"{name}: {variable} is not a setting"
    if not (value.startswith("<") and value.endswith(">")):  # <new key>: a placeholder for a secret
        settings = make_settings("postgresql://u@127.0.0.1/db", **{field: value})
        assert getattr(settings, field) is not None
    assert _exercised(field, variable), f"{name}: no test exercises {variable}"


CLI_LINES = [(n, line) for n, line, _ in commands("sh") if line.startswith("python -m app.cli")]


def test_the_runbooks_use_the_operator_commands() -> None:
    used = {shlex.split(line)[3] for _, line in CLI_LINES}
    assert {
        "audit-payments",
        "reconcile-now",
        "alerts",
        "rotate-token-keys",
        "purge-oauth-states",
        "purge-idempotency-keys",
    } <= used


@pytest.mark.parametrize(("name", "line"), CLI_LINES)
async def test_every_cli_command_runs(name: str, line: str, database_url: str) -> None:
    args = shlex.split(line)[3:]
    code, out, err = await run_cli(database_url, *args)
    assert code == 0, f"{name}: {line!r} exited {code}\n{err}"
    assert out is not None and out["command"] == args[0], out


CURL_LINES = [(n, line, b.env) for n, line, b in commands("sh") if line.startswith("curl ")]


def test_every_curl_says_what_it_expects() -> None:
    assert len(CURL_LINES) >= 4
    for name, line, _ in CURL_LINES:
        assert _EXPECT.search(line), f"{name}: {line!r} has no '# expect ...'"


async def test_every_curl_answers_as_the_runbook_says(database_url: str, tmp_path: Path) -> None:
    env = cli_env(database_url)
    servers = Servers(env, tmp_path)
    started: dict[tuple[tuple[str, str], ...], str] = {}
    try:
        with servers.diagnosed():
            for name, line, settings in CURL_LINES:
                key = tuple(sorted(settings.items()))
                if key not in started:
                    started[key] = (await servers.start(**settings)).base
                expected = _EXPECT.search(line)
                assert expected is not None
                command = _EXPECT.sub("", line)
                proc = await asyncio.to_thread(
                    subprocess.run,
                    ["bash", "-c", command],
                    env={**os.environ, "TRADEDESK_URL": started[key]},
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                assert proc.stdout.strip() == expected.group(1), (
                    f"{name}: {command!r} printed {proc.stdout!r} {proc.stderr!r}"
                )
    finally:
        await servers.stop_all()


SQL_BLOCKS = [(n, b.text) for n in EMERGENCIES for b in blocks(n) if b.kind == "sql"]


@pytest.mark.parametrize(("name", "query"), SQL_BLOCKS)
async def test_every_query_runs_on_the_schema(name: str, query: str, database_url: str) -> None:
    conn = await asyncpg.connect(dbsupport.asyncpg_dsn(database_url))
    try:
        await conn.fetch(query)
    finally:
        await conn.close()


def _pool_queries() -> tuple[str, str, str, str]:
    sql = [b.text for b in blocks("database-pool-exhausted") if b.kind == "sql"]
    find, blocking, cancel, terminate = (q for q in sql if "max_connections" not in q)
    for q in (find, cancel, terminate):
        assert _AGE in q  # the one thing the scenario changes
    return find, blocking, cancel, terminate


async def _app_like(database_url: str) -> asyncpg.Connection:
    return await asyncpg.connect(
        dbsupport.asyncpg_dsn(database_url), server_settings={"application_name": "tradedesk"}
    )


async def _until(conn: asyncpg.Connection, query: str, *args: object, deadline: float = 10) -> None:
    end = time.monotonic() + deadline
    while not await conn.fetchval(query, *args):
        assert time.monotonic() < end, query
        await asyncio.sleep(0.02)  # polling PostgreSQL's view of another session, bounded


async def test_the_pool_runbook_finds_and_ends_long_runners_and_lock_holders(database_url: str) -> None:
    find, blocking, cancel, terminate = (q.replace(_AGE, "interval '0 seconds'") for q in _pool_queries())
    operator = await asyncpg.connect(dbsupport.asyncpg_dsn(database_url))
    sleeper, holder, waiter = [await _app_like(database_url) for _ in range(3)]
    active = "SELECT count(*) = 1 FROM pg_stat_activity WHERE pid = $1 AND state = 'active' AND query LIKE $2"
    try:
        # a long-running statement: found, then cancelled (its connection survives)
        sleeping = asyncio.create_task(sleeper.fetchval("SELECT pg_sleep(60)"))
        await _until(operator, active, sleeper.get_server_pid(), "%pg_sleep%")
        assert sleeper.get_server_pid() in {r["pid"] for r in await operator.fetch(find)}
        assert {r["pid"] for r in await operator.fetch(cancel) if r["cancelled"]} >= {
            sleeper.get_server_pid()
        }
        with pytest.raises(asyncpg.QueryCanceledError):
            await asyncio.wait_for(sleeping, 10)
        assert await sleeper.fetchval("SELECT 1") == 1

        # a transaction left open holding a lock, and a session waiting on it: shown, then ended
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT pg_advisory_xact_lock(424242)")
        # the waiter sleeps once it has the lock: ending the holder first can hand it the lock before its
        # own termination lands, and its statement must still be running then, not already answered
        waiting = asyncio.create_task(waiter.execute("SELECT pg_advisory_xact_lock(424242), pg_sleep(60)"))
        await _until(operator, active, waiter.get_server_pid(), "%advisory%")
        rows = await operator.fetch(blocking)
        assert {(r["pid"], tuple(r["blocked_by"])) for r in rows} >= {
            (waiter.get_server_pid(), (holder.get_server_pid(),))
        }
        ended = {r["pid"] for r in await operator.fetch(terminate) if r["terminated"]}
        assert {holder.get_server_pid(), waiter.get_server_pid()} <= ended
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
            await asyncio.wait_for(waiting, 10)
        gone = "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $1"
        await _until(operator, gone, holder.get_server_pid())
        await _until(operator, gone, waiter.get_server_pid())
        # and the lock is free again
        assert await operator.fetchval("SELECT pg_try_advisory_lock(424242)") is True
    finally:
        for conn in (operator, sleeper, holder, waiter):
            conn.terminate()
