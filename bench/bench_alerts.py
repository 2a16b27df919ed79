"""Issue 12 benchmark: Discord alerts through the full stack, 2 workers, real PostgreSQL, a fake Discord.

* Enqueue: 64 users (signed up, logged in and given a webhook over HTTP first), wrk at 64 connections,
  every request ``POST /v1/alerts/discord`` with a content of its own (``bench/alerts.lua``), so none is
  deduplicated. Target: >= 1,000 alerts/s with p99 < 100 ms, every answer 202 ``queued``. Each round is
  measured twice on the same server:

  - *dispatcher idle*: every webhook's ``blocked_until`` is set a day ahead (SQL) before the run, so the
    dispatcher running in each worker claims nothing (it still polls: two queue queries per 0.5 s);
  - *dispatcher active* (scored: what production runs): the webhooks unblocked, the dispatcher sends the
    queue to a loopback fake Discord (``tests/support/fake_discord.py``, 5 requests per 2 s per webhook)
    running in a thread of this process, under its own cap (``ALERT_DISPATCH_RATE``, 40/s), competing
    with the requests for CPU and PostgreSQL.

  The queue is emptied (rows marked ``failed``, ``last_error`` "bench: cleared") before every run, so each
  starts from an empty queue. Afterwards the database must hold one ``alerts`` row and one
  ``alert_dedup`` row per 202, plus at most one per connection for requests still in flight when wrk
  stopped; in the idle runs every row is still ``queued``; in the active runs the fake must have received
  each delivered alert once. Two rounds, interleaved with the **baseline**: the bare FastAPI ``/healthz``
  app of ``bench_http`` under the same wrk load; full-stack ``GET /healthz`` on the alerts server beside
  it. CPU per answer (app workers, PostgreSQL, Redis, wrk, this process = the fake) is read from /proc.
* Dispatch efficiency: a fresh app (2 workers, both dispatching) against a fresh fake Discord. N webhooks
  (default 4), M alerts each (default 25: five bucket windows) queued through the API while the webhooks
  are blocked (SQL), then unblocked at once. Per webhook, from the first to the last delivery: delivered/s
  = M / (last - first + per), against the bucket's allowed rate limit/per (2.5/s). The ideal schedule
  delivers M messages in ceil(M/limit) windows, the last window opening (ceil(M/limit) - 1) x per after
  the first delivery; counting that last window whole, it delivers exactly limit/per. Target: within
  10 % (>= 2.25/s) for every webhook, at most one 429 in any bucket window (windows rebuilt from the
  fake's log by its own rule), every alert delivered once, in the user's order. A wider unscored run (16
  webhooks: 40/s allowed in total, the dispatcher's own cap) is reported beside it.
* Round trips: an in-process app (``create_app``, lifespan, ``httpx.ASGITransport``; its dispatcher
  stopped so that only the measured work is counted) enqueues alerts one at a time, then repeats one
  content (deduplicated), then sends the queue one alert per ``Dispatcher.run_once`` to an in-process
  fake Discord without a limit; SQLAlchemy engine and pool events, PostgreSQL's frontend messages through
  a counting proxy, Redis commands; a second pass without the proxy times them.
* Profile (when py-spy is installed; not a project dependency): ``py-spy record`` on one worker during an
  extra, unscored dispatcher-active run; the flat profile is printed.

Rate limits are raised through the environment (alerts, default, signup, login) so that none refuses; the
limiter still runs. Settings as ``bench_orders`` (DB pool 32 + 8 per worker), whose process, CPU, profile
and wire-counting helpers are reused.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_orders import (  # noqa: E402
    CpuSnapshot,
    PgWireCounter,
    _proxied,
    cpu_per_request,
    flat_profile,
    profiling,
    py_spy,
    server_pids,
)
from bench.common import (  # noqa: E402
    RESULTS,
    WrkResult,
    bench_database_url,
    bench_settings_env,
    http_request,
    redis_url_if_reachable,
    run_wrk,
    save,
    serve,
    signup_and_login,
    sql,
    sql_async,
)
from bench.instrument import Counters, instrument, labeller, per_request  # noqa: E402
from tests.support.fake_discord import FakeDiscord  # noqa: E402

LUA = str(Path(__file__).resolve().parent / "alerts.lua")
TARGET_OPS = 1000
TARGET_P99_MS = 100
TARGET_RATE_SHARE = 0.90  # delivered/s at least 90 % of the bucket's allowed rate
PASSWORD = "bench-alerts-password-0123"
HIGH_LIMIT = "10000000/minute"
T = TypeVar("T")


# ------------------------------------------------------------------------------------------ fake Discord
class FakeDiscordThread:
    """A ``FakeDiscord`` on its own event loop in a thread of this process, so it answers while the main
    thread waits for wrk. Its arrival times are ``time.monotonic()`` of this process."""

    def __init__(self, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-discord", daemon=True)
        self.fake = FakeDiscord(**kwargs)

    def __enter__(self) -> FakeDiscordThread:
        self.thread.start()
        self.call(self.fake.start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.call(self.fake.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def snapshot(self) -> tuple[list[Any], list[Any]]:
        """Copies of (posted messages, hits), taken on the fake's loop."""

        async def take() -> tuple[list[Any], list[Any]]:
            return list(self.fake.posted), list(self.fake.log)

        return self.call(take())

    @property
    def base_url(self) -> str:
        return self.fake.base_url


# ------------------------------------------------------------------------------------------ HTTP helpers
def _request(
    method: str, url: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    return http_request(method, url, json.dumps(body).encode(), headers)


@dataclass(frozen=True)
class BenchUser:
    token: str
    webhook_id: str


def create_users(base: str, count: int, tag: str) -> list[BenchUser]:
    """Sign up and log in ``count`` users over HTTP and give each a webhook of its own (own bucket)."""
    prefix = str(uuid.uuid4().int)[:12]

    def one(i: int) -> BenchUser:
        token = signup_and_login(base, f"bench-alerts-{tag}-{i}@example.com", PASSWORD)
        webhook_id = f"1{prefix}{i:06d}"  # 19 digits, like a snowflake
        hook = {"webhook_id": webhook_id, "webhook_token": f"bench-{tag}-{i}_tok"}
        status, _, body = _request(
            "PUT", base + "/v1/alerts/discord/webhook", hook, {"Authorization": f"Bearer {token}"}
        )
        if status != 204:
            raise RuntimeError(f"setting the webhook answered {status}: {body[:200]!r}")
        return BenchUser(token, webhook_id)

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


# ------------------------------------------------------------------------------------------ SQL helpers
def block_webhooks(database_url: str, webhook_ids: list[str], blocked: bool) -> None:
    """Blocked a day ahead (the dispatcher claims nothing for them) or unblocked (NULL)."""
    value = "now() + interval '1 day'" if blocked else "NULL"
    sql(
        database_url,
        f"UPDATE discord_webhooks SET blocked_until = {value} WHERE webhook_id = ANY($1::varchar[])",
        webhook_ids,
    )


def clear_queue(database_url: str) -> int:
    """Every pending alert out of the queue (marked failed), so the next run starts from an empty queue."""
    result = sql(
        database_url,
        "UPDATE alerts SET status = 'failed', last_error = 'bench: cleared', locked_until = NULL, "
        "updated_at = now() WHERE status IN ('queued', 'sending')",
    )
    return int(result.split()[-1])


def pauses(database_url: str) -> list[dict[str, Any]]:
    rows = sql(database_url, "SELECT scope, paused_until, reason FROM alert_dispatch_pauses", fetch=True)
    return [
        {"scope": r["scope"], "until": r["paused_until"].isoformat(), "reason": r["reason"]} for r in rows
    ]


async def verify_rows(database_url: str, run: str) -> dict[str, Any]:
    """What the database holds for one run's alerts (content ``bench <run> t…``)."""
    pattern = f"bench {run} t%"
    rows = await sql_async(
        database_url,
        "SELECT count(*) AS rows, "
        "count(*) FILTER (WHERE status = 'queued') AS queued, "
        "count(*) FILTER (WHERE status = 'sending') AS sending, "
        "count(*) FILTER (WHERE status = 'sent') AS sent, "
        "count(*) FILTER (WHERE status = 'failed') AS failed, "
        "count(DISTINCT content) AS distinct_contents "
        "FROM alerts WHERE content LIKE $1",
        pattern,
        fetch=True,
    )
    dedup = await sql_async(
        database_url,
        "SELECT count(*) AS n FROM alert_dedup d JOIN alerts a ON a.id = d.alert_id WHERE a.content LIKE $1",
        pattern,
        fetch=True,
    )
    return {**dict(rows[0]), "alert_dedup_rows": dedup[0]["n"]}


async def settled_rows(database_url: str, run: str) -> dict[str, Any]:
    """``verify_rows`` once the requests wrk stopped waiting for have finished (two equal row counts,
    15 s at most; statuses may still move while the dispatcher runs)."""
    last = await verify_rows(database_url, run)
    deadline = time.monotonic() + 15
    now = last
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = await verify_rows(database_url, run)
        if (now["rows"], now["alert_dedup_rows"]) == (last["rows"], last["alert_dedup_rows"]):
            break
        last = now
    return now


# ------------------------------------------------------------------------------------------ wrk runs
@dataclass
class AlertsRun:
    wrk: WrkResult
    statuses: dict[str, int]
    deduplicated: int
    dispatcher: str  # "idle" | "active"
    cpu: dict[str, float] = field(default_factory=dict)
    verify: dict[str, Any] = field(default_factory=dict)
    delivery: dict[str, Any] = field(default_factory=dict)

    @property
    def responses(self) -> int:
        return sum(self.statuses.values())

    @property
    def accepted(self) -> int:
        return self.statuses.get("202", 0)

    @property
    def non_202(self) -> int:
        return self.responses - self.accepted

    def per_s(self, wanted: int) -> float:
        return self.wrk.requests_per_s * wanted / self.responses if self.responses else 0.0


def wrk_alerts(
    label: str,
    base: str,
    *,
    run: str,
    dispatcher: str,
    tokens_file: Path,
    stats_dir: Path,
    connections: int,
    duration: int,
    fake: FakeDiscordThread,
    workers: list[int] | None = None,
) -> AlertsRun:
    stats = stats_dir / f"stats-{run}.json"
    os.environ.update(
        ALERTS_TOKENS=str(tokens_file), ALERTS_RUN=run, ALERTS_STATS=str(stats), WRK_THREADS="2"
    )
    posted0, hits0 = fake.snapshot()
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    before = CpuSnapshot.take(workers or [])
    t0 = time.monotonic()
    result = run_wrk(
        label, base + "/v1/alerts/discord", connections=connections, duration=duration, script=LUA, warmup=0
    )
    t1 = time.monotonic()
    after = CpuSnapshot.take(workers or [])
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    posted1, hits1 = fake.snapshot()
    data = json.loads(stats.read_text())
    out = AlertsRun(
        result, {str(k): int(v) for k, v in data["status"].items()}, int(data["deduplicated"]), dispatcher
    )
    if workers:
        out.cpu = cpu_per_request(before, after, out.responses)
        own = (
            (self1.ru_utime + self1.ru_stime - self0.ru_utime - self0.ru_stime) * 1000 / max(out.responses, 1)
        )
        out.cpu["bench process (fake Discord) ms"] = own
        out.cpu["other processes ms"] = max(0.0, out.cpu["other processes ms"] - own)
    new_posts = posted1[len(posted0) :]
    new_hits = hits1[len(hits0) :]
    mine = [m for m in new_posts if isinstance(m.content, str) and m.content.startswith(f"bench {run} t")]
    out.delivery = {
        "delivered_during_run": len(mine),
        "delivered_per_s": len(mine) / (t1 - t0),
        "distinct_delivered": len({m.content for m in mine}),
        "requests_to_fake": len(new_hits),
        "fake_429s": sum(1 for h in new_hits if h.status == 429),
        "webhooks_reached": len({m.webhook_id for m in mine}),
    }
    return out


def check_rows(run: AlertsRun, connections: int) -> bool:
    """One alert row and one dedup slot per 202, all contents distinct; the excess — answers wrk never read
    because the run ended — at most one per connection. Idle: every row still queued. Active: nothing
    failed, nothing delivered twice."""
    v = run.verify
    excess = v["rows"] - run.accepted
    v["excess_over_202s"] = excess
    ok = (
        0 <= excess <= connections
        and v["alert_dedup_rows"] == v["rows"]
        and v["distinct_contents"] == v["rows"]
        and v["failed"] == 0
        and run.deduplicated == 0
    )
    if run.dispatcher == "idle":
        ok = ok and v["queued"] == v["rows"] and run.delivery["delivered_during_run"] == 0
    else:
        d = run.delivery
        ok = (
            ok
            and d["distinct_delivered"] == d["delivered_during_run"]
            and v["sent"] >= d["delivered_during_run"]
        )
    v["ok"] = ok
    return bool(ok)


# ------------------------------------------------------------------------------------------ dispatch
def _windows(hits: list[Any], per: float) -> list[list[Any]]:
    """The fake's bucket windows for one webhook, rebuilt by its rule: the first request opens a window,
    which ends ``per`` seconds later; the next request after that opens the next."""
    windows: list[list[Any]] = []
    opened: float | None = None
    for hit in hits:
        if opened is None or hit.arrived >= opened + per:
            opened = hit.arrived
            windows.append([])
        windows[-1].append(hit)
    return windows


def dispatch_efficiency(
    env: dict[str, str],
    database_url: str,
    *,
    label: str,
    webhooks: int,
    per_webhook: int,
    workers: int,
    scored: bool,
    deadline: float = 120.0,
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    cleared = clear_queue(database_url)
    with FakeDiscordThread() as fake:
        limit, per = fake.fake.limit, fake.fake.per
        server_env = {**env, "DISCORD_API_BASE_URL": fake.base_url, "WEB_CONCURRENCY": str(workers)}
        with serve("app.main:app", server_env, workers=workers) as base:
            users = create_users(base, webhooks, f"d{tag}")
            ids = [u.webhook_id for u in users]
            block_webhooks(database_url, ids, True)

            def queue(i: int) -> list[str]:
                contents = [f"dispatch {tag} w{i} #{n:03d}" for n in range(per_webhook)]
                for content in contents:
                    status, _, body = _request(
                        "POST",
                        base + "/v1/alerts/discord",
                        {"content": content},
                        {"Authorization": f"Bearer {users[i].token}"},
                    )
                    if status != 202 or json.loads(body)["status"] != "queued":
                        raise RuntimeError(f"queueing answered {status}: {body[:200]!r}")
                return contents

            with ThreadPoolExecutor(8) as pool:
                expected = list(pool.map(queue, range(webhooks)))
            time.sleep(0.5)
            _, early_hits = fake.snapshot()
            unblocked = time.monotonic()
            block_webhooks(database_url, ids, False)
            total = webhooks * per_webhook
            ends = unblocked + deadline
            rows: list[Any] = []
            while time.monotonic() < ends:
                rows = sql(
                    database_url,
                    "SELECT a.status, a.attempts FROM alerts a WHERE a.content LIKE $1",
                    f"dispatch {tag} %",
                    fetch=True,
                )
                if sum(1 for r in rows if r["status"] in ("sent", "failed")) >= total:
                    break
                time.sleep(0.1)
            finished = time.monotonic()
            time.sleep(0.3)  # anything sent late or twice would show up now
            posted, hits = fake.snapshot()
            still_paused = pauses(database_url)

    per_hook = []
    for user, contents in zip(users, expected, strict=True):
        got = [m for m in posted if m.webhook_id == user.webhook_id]
        mine = [h for h in hits if h.webhook_id == user.webhook_id]
        windows = _windows(mine, per)
        first = got[0].arrived if got else float("nan")
        last = got[-1].arrived if got else float("nan")
        span = last - first
        ideal_windows = math.ceil(per_webhook / limit)
        ideal_span = (ideal_windows - 1) * per
        rate = len(got) / (span + per) if got else 0.0
        per_hook.append(
            {
                "webhook_id": user.webhook_id,
                "delivered": len(got),
                "in_order_once": [m.content for m in got] == contents,
                "first_after_unblock_s": first - unblocked,
                "span_s": span,
                "ideal_span_s": ideal_span,
                "lag_s": span - ideal_span,
                "delivered_per_s": rate,
                "share_of_allowed": rate / (limit / per),
                "requests": len(mine),
                "429s": sum(1 for h in mine if h.status == 429),
                "windows": len(windows),
                "bucket_resets": max(len(windows) - 1, 0),
                "max_429_per_window": max((sum(1 for h in w if h.status == 429) for w in windows), default=0),
                "window_sizes": [sum(1 for h in w if h.status != 429) for w in windows],
            }
        )
    statuses = collections.Counter(r["status"] for r in rows)
    attempts = collections.Counter(int(r["attempts"]) for r in rows)
    worst = min((h["share_of_allowed"] for h in per_hook), default=0.0)
    ok = (
        statuses.get("sent", 0) == webhooks * per_webhook
        and all(h["in_order_once"] and h["delivered"] == per_webhook for h in per_hook)
        and all(h["max_429_per_window"] <= 1 for h in per_hook)
        and worst >= TARGET_RATE_SHARE
        and not early_hits
    )
    return {
        "label": label,
        "scored": scored,
        "workers": workers,
        "webhooks": webhooks,
        "per_webhook": per_webhook,
        "bucket": f"{limit} per {per:g} s",
        "allowed_per_s_per_webhook": limit / per,
        "cleared_before": cleared,
        "requests_before_unblock": len(early_hits),
        "all_settled_s": finished - unblocked,
        "statuses": dict(statuses),
        "attempts": {str(k): v for k, v in sorted(attempts.items())},
        "pauses_left": still_paused,
        "total_429s": sum(h["429s"] for h in per_hook),
        "aggregate_delivered_per_s": sum(h["delivered"] for h in per_hook)
        / (max((u["span_s"] for u in per_hook), default=0.0) + per),
        "worst_share_of_allowed": worst,
        "per_webhook_detail": per_hook,
        "ok": ok,
    }


# ------------------------------------------------------------------------------------------ round trips
_SQL_LABELS = (
    ("SET status = 'sending'", "dispatch: claim (lease the heads)"),
    ("SET status = 'sent'", "dispatch: record sent + learn bucket"),
    ("FROM alerts WHERE status IN", "dispatch: queue depth (1/s)"),
    ("INSERT INTO alert_dedup", "enqueue: dedup slot + alert"),
    ("FROM users", "caller check (auth)"),
    ("discord_webhooks", "webhook read"),
)


_label = labeller(_SQL_LABELS)


async def diagnose(env: dict[str, str], *, alerts: int, through_proxy: bool) -> dict[str, Any]:
    """Enqueue ``alerts`` alerts, then as many duplicates, then send ``alerts`` of the queue, one at a
    time in-process; per-alert counts."""
    import httpx
    from asgi_lifespan import LifespanManager

    from app.core.config import load_settings
    from app.main import create_app

    values: dict[str, Any] = {k.lower(): v for k, v in env.items()}
    # No background passes in between; the dispatcher's own cap (40/s) lifted: one alert at a time in-process
    # goes faster than that, and the wait would be counted as the send's time.
    values.update(log_level="WARNING", reconcile_interval_seconds=3600, alert_dispatch_rate="1000000/second")
    proxy: PgWireCounter | None = None
    if through_proxy:
        proxied = _proxied(values["database_url"])
        if proxied is None:
            return {"skipped": "database URL has no host to proxy"}
        url, proxy = proxied
        await proxy.start()
        values["database_url"] = url.set(port=proxy.listen_port).render_as_string(hide_password=False)
    counters = Counters()
    result: dict[str, Any] = {}
    fake = await FakeDiscord(limit=10_000_000, per=2.0).start()  # no bucket: measure the send path alone
    values["discord_api_base_url"] = fake.base_url
    app = create_app(load_settings(_env_file=None, **values))
    try:
        async with LifespanManager(app, startup_timeout=30) as manager:
            await app.state.alerts.stop()  # the loop would poll in between; passes are run by hand below
            dispatcher = app.state.alerts.dispatcher
            transport = httpx.ASGITransport(app=manager.app, client=("127.0.0.1", 50000))
            async with httpx.AsyncClient(transport=transport, base_url="https://testserver", timeout=30) as c:
                email = f"bench-alerts-diag-{uuid.uuid4().hex[:8]}@example.com"
                creds = {"email": email, "password": PASSWORD}
                assert (await c.post("/v1/auth/signup", json=creds)).status_code == 201
                token = (await c.post("/v1/auth/login", json=creds)).json()["access_token"]
                auth = {"Authorization": f"Bearer {token}"}
                hook = {"webhook_id": "1234567890123456789", "webhook_token": "bench-diag_token"}
                assert (await c.put("/v1/alerts/discord/webhook", json=hook, headers=auth)).status_code == 204
                instrument(
                    app,
                    counters,
                    label=_label,
                    timed=(
                        (app.state.discord, "execute", "Discord call (HTTP to the in-process fake)"),
                        (dispatcher, "_take_send_token", "dispatch rate cap (limiter)"),
                    ),
                )

                async def post(content: str, expected: str) -> None:
                    r = await c.post("/v1/alerts/discord", json={"content": content}, headers=auth)
                    if r.status_code != 202 or r.json()["status"] != expected:
                        raise RuntimeError(f"diagnostic enqueue answered {r.status_code}: {r.text[:200]}")

                for i in range(20):  # warm: pool connections, prepared statements, script loaded
                    await post(f"diag warm {i}", "queued")
                for _ in range(20):
                    assert (await dispatcher.run_once()).sent == 1
                await post("diag duplicate", "queued")
                await post("diag duplicate", "deduplicated")

                async def dispatch_one(i: int) -> None:
                    report = await dispatcher.run_once()
                    if report.sent != 1:
                        raise RuntimeError(f"diagnostic dispatch pass {i}: {report}")

                phases = (
                    ("enqueue", lambda i: post(f"diag alert {i:05d}", "queued")),
                    ("duplicate", lambda i: post("diag duplicate", "deduplicated")),
                    ("dispatch", dispatch_one),
                )
                for phase, step in phases:
                    await asyncio.sleep(0.2)
                    counters.reset()
                    if proxy:
                        proxy.counts.clear()
                    hits0 = len(fake.log)
                    t0, cpu0 = time.perf_counter(), time.process_time()
                    for i in range(alerts):
                        await step(i)
                    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
                    result[phase] = per_request(counters, proxy, alerts, elapsed)
                    result[phase]["cpu_ms"] = cpu * 1000 / alerts
                    result[phase]["discord_requests"] = (len(fake.log) - hits0) / alerts
    finally:
        await fake.stop()
        if proxy:
            await proxy.stop()
    return result


def print_round_trips(diag: dict[str, Any], timing: dict[str, Any]) -> None:
    if "skipped" in diag or "skipped" in timing:
        print(f"round-trip diagnostic skipped: {diag.get('skipped') or timing.get('skipped')}")
        return
    phases = [p for p in ("enqueue", "duplicate", "dispatch") if p in diag]
    print("\n| per alert (in-process, sequential) | " + " | ".join(phases) + " |")
    print("|---|" + "---|" * len(phases))

    def row(label: str, values: list[Any]) -> None:
        cells = [v if isinstance(v, str) else f"{v:.2f}".rstrip("0").rstrip(".") for v in values]
        print(f"| {label} | " + " | ".join(cells) + " |")

    labels = list(dict.fromkeys(k for p in phases for k in diag[p]["statements"]))
    for label in labels:
        row(f"SQL: {label}", [diag[p]["statements"].get(label, 0) for p in phases])
    row("**SQL statements**", [diag[p]["statements_total"] for p in phases])
    row("pool checkouts", [diag[p]["pool_checkouts_pre_pings"] for p in phases])
    row("BEGIN + COMMIT (real transactions)", [2 * diag[p]["begin"].get("transaction", 0) for p in phases])
    row("autocommit units (no BEGIN/COMMIT sent)", [diag[p]["begin"].get("autocommit", 0) for p in phases])
    row(
        "**PostgreSQL round trips on the wire** (Sync + Query)", [diag[p]["wire_round_trips"] for p in phases]
    )
    row("wire messages", [json.dumps(diag[p]["wire_messages"]) for p in phases])
    row("Redis commands", [json.dumps(diag[p]["redis_commands"]) for p in phases])
    row("Discord requests", [diag[p]["discord_requests"] for p in phases])
    row("time per alert, ms (direct, no proxy)", [timing[p]["request_ms"] for p in phases])
    row("  CPU of the process (app + client + fake), ms", [timing[p]["cpu_ms"] for p in phases])
    for label in labels:
        row(f"  ms in: {label}", [timing[p]["statement_ms"].get(label, 0) for p in phases])
    row("  ms in: pool checkout (pre-ping)", [timing[p]["pre_ping_ms"] for p in phases])
    timers = list(dict.fromkeys(k for p in phases for k in timing[p]["timers_ms"]))
    for label in timers:
        row(f"  ms in: {label}", [timing[p]["timers_ms"].get(label, 0) for p in phases])


# ------------------------------------------------------------------------------------------ main
def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=15, help="seconds per measured enqueue run")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--webhooks", type=int, default=4, help="webhooks in the scored dispatch run")
    parser.add_argument("--per-webhook", type=int, default=25, help="alerts per webhook in the dispatch runs")
    parser.add_argument(
        "--wide-webhooks", type=int, default=16, help="webhooks in the unscored run (0: skip)"
    )
    parser.add_argument("--diag-alerts", type=int, default=200, help="alerts in the round-trip diagnostic")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy run")
    args = parser.parse_args()

    redis_url = redis_url_if_reachable()
    database_url = bench_database_url()
    env = bench_settings_env(
        database_url,
        redis_url,
        BROKER_PROVIDER="paper",
        MARKET_DATA_PROVIDER="synthetic",
        RATE_LIMIT_ALERTS=HIGH_LIMIT,
        RATE_LIMIT_DEFAULT=HIGH_LIMIT,
        RATE_LIMIT_SIGNUP=HIGH_LIMIT,
        RATE_LIMIT_LOGIN=HIGH_LIMIT,
        ACCESS_TOKEN_TTL_SECONDS="3600",
        WEB_CONCURRENCY="2",
        HTTP_TIMEOUT_SECONDS="5",
        DB_POOL_SIZE="32",
        DB_MAX_OVERFLOW="8",
    )
    conns, tag = args.connections, uuid.uuid4().hex[:6]
    print(f"[bench] Redis: {'on' if redis_url else 'off (limiter in memory per worker)'}", flush=True)
    baseline: list[WrkResult] = []
    healthz: WrkResult | None = None
    rounds: list[AlertsRun] = []
    warmups: list[AlertsRun] = []
    profiled: AlertsRun | None = None
    profile: dict[str, Any] | None = None
    users: list[BenchUser] = []
    with tempfile.TemporaryDirectory() as tmp_, FakeDiscordThread() as fake:
        tmp = Path(tmp_)
        tokens_file = tmp / "tokens.txt"
        app_env = {**env, "DISCORD_API_BASE_URL": fake.base_url}
        for round_ in (1, 2):  # interleaved so drift on a shared machine hits both equally
            with serve("bench.bare_app:app", {}) as base:
                baseline.append(
                    run_wrk(f"bare FastAPI /healthz (round {round_})", base + "/healthz", connections=conns)
                )
            with serve("app.main:app", app_env) as base:
                _, workers = server_pids(base)
                if round_ == 1:
                    users = create_users(base, args.users, tag)
                    tokens_file.write_text("\n".join(u.token for u in users) + "\n")
                    healthz = run_wrk(
                        "full stack /healthz (alerts server)", base + "/healthz", connections=conns
                    )
                ids = [u.webhook_id for u in users]
                common = {"tokens_file": tokens_file, "stats_dir": tmp, "connections": conns, "fake": fake}
                block_webhooks(database_url, ids, True)
                clear_queue(database_url)
                warmups.append(
                    wrk_alerts(
                        f"warm-up {round_} (dispatcher idle)",
                        base,
                        run=f"w{round_}",
                        dispatcher="idle",
                        duration=args.warmup,
                        **common,
                    )
                )
                for mode in ("idle", "active"):
                    clear_queue(database_url)
                    block_webhooks(database_url, ids, mode == "idle")
                    run = f"{mode[0]}{round_}"
                    measured = wrk_alerts(
                        f"alerts, dispatcher {mode} (round {round_})",
                        base,
                        run=run,
                        dispatcher=mode,
                        duration=args.duration,
                        workers=workers,
                        **common,
                    )
                    block_webhooks(database_url, ids, True)  # the backlog waits; the next run starts empty
                    measured.verify = asyncio.run(settled_rows(database_url, run))
                    check_rows(measured, conns)
                    rounds.append(measured)
                if round_ == 2 and not args.no_profile and py_spy():
                    clear_queue(database_url)
                    block_webhooks(database_url, ids, False)
                    raw = tmp / "profile.txt"
                    with profiling(workers[0], 10, raw):
                        time.sleep(0.5)
                        profiled = wrk_alerts(
                            "alerts, dispatcher active, py-spy on worker 1 (not scored)",
                            base,
                            run="p2",
                            dispatcher="active",
                            duration=10,
                            **common,
                        )
                    block_webhooks(database_url, ids, True)
                    if raw.exists():
                        profile = flat_profile(raw)
                        RESULTS.mkdir(parents=True, exist_ok=True)
                        shutil.copy(raw, RESULTS / "alerts-pyspy.txt")
        enqueue_pauses = pauses(database_url)

    print("\n[bench] dispatch efficiency against the fake Discord", flush=True)
    dispatch = [
        dispatch_efficiency(
            env,
            database_url,
            label=f"{args.webhooks} webhooks x {args.per_webhook} alerts, 2 workers",
            webhooks=args.webhooks,
            per_webhook=args.per_webhook,
            workers=2,
            scored=True,
        )
    ]
    if args.wide_webhooks:
        dispatch.append(
            dispatch_efficiency(
                env,
                database_url,
                label=f"{args.wide_webhooks} webhooks x {args.per_webhook} alerts, 2 workers (not scored)",
                webhooks=args.wide_webhooks,
                per_webhook=args.per_webhook,
                workers=2,
                scored=False,
            )
        )

    print("\n[bench] round-trip diagnostic (in-process, one alert at a time)", flush=True)
    clear_queue(database_url)
    diag = asyncio.run(diagnose(env, alerts=args.diag_alerts, through_proxy=True))
    clear_queue(database_url)  # its leftover would be claimed beside the next pass's alerts
    timing = asyncio.run(diagnose(env, alerts=args.diag_alerts, through_proxy=False))

    # ------------------------------------------------------------------ report
    bare_rps = sum(r.requests_per_s for r in baseline) / len(baseline)
    active = [r for r in rounds if r.dispatcher == "active"]
    idle = [r for r in rounds if r.dispatcher == "idle"]
    ops = sum(r.per_s(r.accepted) for r in active) / len(active)
    idle_ops = sum(r.per_s(r.accepted) for r in idle) / len(idle)
    worst_p99 = max(r.wrk.p99_ms for r in active)
    idle_p99 = max(r.wrk.p99_ms for r in idle)
    non202 = sum(r.non_202 for r in rounds)
    sock = sum(r.wrk.errors for r in rounds)
    verified = all(r.verify.get("ok") for r in rounds)
    print(
        "\n| run (64 connections, 2 workers) | req/s | p50 ms | p99 ms | answers | non-202 | socket errors |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in baseline + ([healthz] if healthz else []):
        print(
            f"| {r.label} | {r.requests_per_s:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | | {r.non_2xx} | {r.errors} |"
        )
    for o in [*warmups, *rounds, *([profiled] if profiled else [])]:
        others = {k: v for k, v in o.statuses.items() if k != "202"}
        extra = f" (deduplicated: {o.deduplicated})" if o.deduplicated else ""
        print(
            f"| {o.wrk.label}{extra} | {o.wrk.requests_per_s:,.0f} | {o.wrk.p50_ms:.2f} | {o.wrk.p99_ms:.2f} "
            f"| {o.responses} | {o.non_202}{' ' + json.dumps(others) if others else ''} | {o.wrk.errors} |"
        )
    print("\nrows written by each measured run (after wrk stopped) and what the fake Discord received:")
    for r in rounds:
        print(f"  {r.wrk.label}: 202s {r.accepted}, {json.dumps(r.verify)}")
        print(f"    delivered during the run: {json.dumps(r.delivery)}")
    if enqueue_pauses:
        print(f"  dispatch pauses left after the enqueue runs: {enqueue_pauses}")
    print("\nCPU per answer during the measured runs (ms; /proc):")
    for o in rounds:
        print(f"  {o.wrk.label}: " + ", ".join(f"{k} {v:.2f}" for k, v in o.cpu.items()))

    print("\ndispatch efficiency (per webhook: delivered/s = M / (last - first + per)):")
    for d in dispatch:
        print(
            f"  {d['label']}: bucket {d['bucket']} ({d['allowed_per_s_per_webhook']:g}/s per webhook), "
            f"settled in {d['all_settled_s']:.2f} s after unblocking, statuses {d['statuses']}, attempts "
            f"{d['attempts']}, 429s {d['total_429s']}, requests before unblocking {d['requests_before_unblock']}, "
            f"aggregate {d['aggregate_delivered_per_s']:.2f}/s, worst share {d['worst_share_of_allowed']:.3f}"
            f"{', pauses left ' + str(d['pauses_left']) if d['pauses_left'] else ''} -> "
            f"{'ok' if d['ok'] else 'MISS'}{'' if d['scored'] else ' (not scored)'}"
        )
        print(
            "  | webhook | delivered | once, in order | first after unblock s | span s | ideal s | "
            "delivered/s | share | 429s | windows | max 429/window | sent per window |"
        )
        print("  |---|---|---|---|---|---|---|---|---|---|---|---|")
        for h in d["per_webhook_detail"]:
            print(
                f"  | …{h['webhook_id'][-4:]} | {h['delivered']} | {h['in_order_once']} | "
                f"{h['first_after_unblock_s']:.3f} | {h['span_s']:.3f} | {h['ideal_span_s']:.1f} | "
                f"{h['delivered_per_s']:.3f} | {h['share_of_allowed']:.3f} | {h['429s']} | {h['windows']} | "
                f"{h['max_429_per_window']} | {h['window_sizes']} |"
            )

    print_round_trips(diag, timing)
    if profile:
        print(
            f"\npy-spy on one worker, 200 Hz, {profile['samples']} non-idle samples of the event loop's thread "
            f"(+{profile['other_thread_samples']} in other threads: {profile['other_threads']}); "
            "raw stacks in bench/results/alerts-pyspy.txt. Top self (leaf) functions:"
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

    scored = dispatch[0]
    enqueue_ok = ops >= TARGET_OPS and worst_p99 < TARGET_P99_MS and non202 == 0 and sock == 0 and verified
    ok = enqueue_ok and scored["ok"]
    print(
        f"\nalerts enqueue, dispatcher active: {ops:,.0f}/s (target >= {TARGET_OPS}), worst p99 "
        f"{worst_p99:.1f} ms (target < {TARGET_P99_MS} ms); dispatcher idle: {idle_ops:,.0f}/s, worst p99 "
        f"{idle_p99:.1f} ms; non-202 {non202}, socket errors {sock}, rows verified {verified}; baseline bare "
        f"/healthz {bare_rps:,.0f} req/s, alerts/bare {ops / bare_rps:.3f}"
        + (f", alerts/full-stack healthz {ops / healthz.requests_per_s:.3f}" if healthz else "")
        + f"; dispatch: worst webhook {scored['worst_share_of_allowed']:.3f} of the allowed rate (target >= "
        f"{TARGET_RATE_SHARE}), max 429s per bucket window "
        f"{max(h['max_429_per_window'] for h in scored['per_webhook_detail'])} (target <= 1)"
        f" -> {'PASS' if ok else 'MISS'}"
    )
    save(
        "alerts",
        {
            "baseline": baseline,
            "healthz_full": healthz,
            "warmups": warmups,
            "rounds": rounds,
            "profiled": profiled,
            "profile": profile,
            "dispatch": dispatch,
            "round_trips": diag,
            "timings": timing,
            "alerts_per_s_active": ops,
            "alerts_per_s_idle": idle_ops,
            "p99_ms_active": worst_p99,
            "p99_ms_idle": idle_p99,
            "ratio_to_bare": ops / bare_rps,
            "pass": ok,
        },
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
