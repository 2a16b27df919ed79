"""Discord alerts across REAL operating-system processes: uvicorn servers (separate interpreters, event
loops, database pools and dispatcher loops) on the test PostgreSQL database and one Redis database, in
front of the loopback fake Discord (tests/support/fake_discord.py: 5 requests per 2 s per webhook, real
``X-RateLimit-*`` headers and 429 bodies), which records every message it accepted. The in-process tests
(test_dispatch.py) run one dispatcher in one event loop; these show what only separate processes can:

* a server stopped with SIGTERM while alerts wait behind a 429 and behind learnt bucket resets: its
  running pass is recorded, the process exits 0, and a NEW process on the same database delivers the
  rest — every alert exactly once, each user's in order, no request before a 429's ``retry_after``;
* the same with SIGKILL, landing when nothing is in flight (no alert ``sending``, every pending webhook
  blocked for a while): nothing is lost or repeated;
* the one documented window (app/alerts/dispatch.py, "The unavoidable window"), made deterministic: the
  fake posts a message and holds its answer, the process is SIGKILLed, the alert stays ``sending`` under
  its lease (a new process leaves it, and that user's later alerts, alone), and once the lease is over —
  here ended by hand in the database instead of waiting the 60 s ``LEASE`` — exactly that one message is
  sent again, and nothing else.

Two processes dispatching side by side from the start (each alert goes to one of them, each user's order
holds across both) is proven with the other cross-instance guarantees in tests/core/test_two_instances.py.
The fake Discord with its ``hold`` knob and the helpers are in tests/alerts/helpers.py.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.alerts.helpers import (
    HoldingDiscord,
    Subscriber,
    all_ended,
    assert_each_delivered_once_in_order,
    contents_for,
    enqueue,
    quiet_moment,
    statuses,
    subscriber,
    use_bucket_up,
)
from tests.auth.helpers import fetch
from tests.support.servers import Server, Servers, eventually, flush_redis, server_env
from tests.support.settings import TEST_FERNET_KEY, TEST_JWT_SECRET, TEST_WEBHOOK_SECRET

pytestmark = [pytest.mark.redis, pytest.mark.slow]

STOP_SECONDS = 15.0  # SIGTERM: uvicorn's graceful shutdown (3 s) plus the lifespan (the dispatcher's pass)
HTTP_TIMEOUT_SECONDS = 2.0


# ---------------------------------------------------------------------------------- real servers


@pytest.fixture
async def discord() -> AsyncIterator[HoldingDiscord]:
    fake = HoldingDiscord()
    async with fake:
        yield fake


@pytest.fixture
async def servers(
    require_redis: str, database_url: str, discord: HoldingDiscord, tmp_path: Path
) -> AsyncIterator[Servers]:
    """Start servers with ``await servers.start()``; every one is stopped (or killed) at teardown."""
    await flush_redis(require_redis)  # limits and breaker state of another run never leak in
    env = server_env(
        DATABASE_URL=database_url,
        REDIS_URL=require_redis,
        FRONTEND_URL="http://localhost:3000",
        JWT_SECRET=TEST_JWT_SECRET,
        STRIPE_WEBHOOK_SECRET=TEST_WEBHOOK_SECRET,
        TOKEN_ENCRYPTION_KEY=TEST_FERNET_KEY,
        APP_ENV="test",
        LOG_LEVEL="INFO",  # "alert sent" / "discord rate limited" lines, for the failure messages
        DISCORD_API_BASE_URL=discord.base_url,
        ALERT_RETRY_BASE_SECONDS="0.05",
        HTTP_TIMEOUT_SECONDS=str(HTTP_TIMEOUT_SECONDS),
        RATE_LIMIT_ALERTS="100000/minute",
        RATE_LIMIT_DEFAULT="100000/minute",
        RATE_LIMIT_LOGIN="1000/minute",
        RATE_LIMIT_SIGNUP="1000/hour",
    )
    workdir = tmp_path / "servers"
    workdir.mkdir()
    group = Servers(env, workdir, discord.summary, stop_seconds=STOP_SECONDS)
    try:
        yield group
    finally:
        try:
            await group.stop_all()
        finally:
            await flush_redis(require_redis)


# ---------------------------------------------------------------------------------- restarts
USERS = 3
PER_USER = 12  # more than two bucket windows of 5


async def _queue_behind_a_429(servers: Servers, discord: HoldingDiscord) -> tuple[Server, list[Subscriber]]:
    """One server, three users with webhooks; the first webhook's bucket is used up by another sender
    (so its alerts wait behind a 429), then 12 alerts per user are enqueued at once over HTTP."""
    first = await servers.start()
    subs = [await subscriber(first, f"71{u:016d}") for u in range(USERS)]
    await use_bucket_up(discord, subs[0])
    await asyncio.gather(*(enqueue([first], s, contents_for(u, PER_USER)) for u, s in enumerate(subs)))
    return first, subs


def _some_delivered_and_a_429(discord: HoldingDiscord, sub: Subscriber) -> bool:
    return len(discord.delivered()) >= 6 and discord.count_429(sub.webhook_id) >= 1


async def _finish_on_a_new_server(
    servers: Servers, discord: HoldingDiscord, database_url: str, subs: list[Subscriber]
) -> None:
    """A NEW process on the same database delivers the rest: each alert once, in order; the 429's
    ``retry_after`` (persisted as the webhook's ``blocked_until``) is honoured across the restart, and the
    learnt buckets mean no other 429 than the one provoked."""
    await servers.start()
    counts = await all_ended(database_url, USERS * PER_USER)
    assert counts == {"sent": USERS * PER_USER}, counts
    await assert_each_delivered_once_in_order(database_url, discord, subs)
    assert len(discord.throttled) == 1, f"only the provoked 429 was expected: {discord.throttled}"
    (throttled,) = discord.throttled
    assert throttled.webhook_id == subs[0].webhook_id and throttled.retry_after is not None
    after = [h for h in discord.hits(subs[0].webhook_id) if h.arrived > throttled.arrived]
    assert after, "nothing reached the throttled webhook after its 429"
    assert after[0].arrived >= throttled.arrived + throttled.retry_after - 0.01, (
        f"a request {after[0].arrived - throttled.arrived:.3f} s after a 429 with retry_after "
        f"{throttled.retry_after}"
    )


async def test_sigterm_with_alerts_queued_behind_a_429_then_a_new_process_delivers_each_once_in_order(
    servers: Servers, discord: HoldingDiscord, database_url: str
) -> None:
    in_flight = "user 2 alert 03"  # posted at once, answered 1.5 s later: SIGTERM lands in between
    discord.delay_answer(in_flight, 1.5)
    with servers.diagnosed():
        first, subs = await _queue_behind_a_429(servers, discord)
        await eventually(
            lambda: in_flight in discord.answer_due and _some_delivered_and_a_429(discord, subs[0]),
            within=10,
            what="some alerts delivered, the used-up webhook answered 429, a send in flight",
        )
        signalled = time.monotonic()
        assert signalled < discord.answer_due[in_flight], "too late: the answer was already out"
        # A graceful exit: the lifespan ran to its end ("shutdown" is its last line). uvicorn >= 0.29
        # re-raises the captured SIGTERM once it has shut down, so the status is -SIGTERM (0 before).
        code = await servers.terminate(first)
        assert code in (0, -signal.SIGTERM), f"SIGTERM: exit status {code}"
        assert first.log_messages("shutdown") == 1, "the lifespan did not finish its shutdown"

        # The stop let the running pass finish: nothing left under a lease, every message the fake
        # accepted is recorded as sent, and some alerts are still queued for the next process.
        counts = await statuses(database_url)
        assert counts["sending"] == 0, counts
        assert counts["sent"] == len(discord.delivered()), counts
        assert 0 < counts["queued"] < USERS * PER_USER, counts
        (row,) = await fetch(
            database_url, "SELECT status, attempts FROM alerts WHERE content = $1", in_flight
        )
        assert (row["status"], row["attempts"]) == ("sent", 1), dict(row)

        await _finish_on_a_new_server(servers, discord, database_url, subs)


async def test_sigkill_with_nothing_in_flight_then_a_new_process_delivers_each_once_in_order(
    servers: Servers, discord: HoldingDiscord, database_url: str
) -> None:
    with servers.diagnosed():
        first, subs = await _queue_behind_a_429(servers, discord)
        await eventually(
            lambda: _some_delivered_and_a_429(discord, subs[0]),
            within=10,
            what="some alerts delivered and the used-up webhook answered 429",
        )

        # Kill when no alert is 'sending' and every pending webhook waits for its bucket reset or its
        # 429's retry_after: nothing is in flight, so the documented window is closed.
        async def quiet() -> Any:
            row = await quiet_moment(database_url)
            return row if row["sending"] == 0 and row["queued"] > 0 and row["all_blocked"] else None

        moment = await eventually(quiet, within=10, what="no alert sending, every pending webhook blocked")
        await servers.kill(first)
        assert first.proc.returncode == -signal.SIGKILL

        counts = await statuses(database_url)
        assert counts["sending"] == 0, counts
        assert counts["sent"] == moment["sent"] == len(discord.delivered()), (counts, dict(moment))
        assert counts["queued"] > 0, counts

        await _finish_on_a_new_server(servers, discord, database_url, subs)


# ---------------------------------------------------------------------------------- the window
async def test_the_documented_window_a_kill_after_discord_accepted_repeats_only_that_message(
    servers: Servers, discord: HoldingDiscord, database_url: str
) -> None:
    first = await servers.start()
    with servers.diagnosed():
        held = await subscriber(first, "730000000000000001")
        other = await subscriber(first, "730000000000000002")
        discord.hold(held.webhook_id)  # its first message is posted, and the answer never comes
        await enqueue([first], held, ["window 1", "window 2", "window 3"])
        await eventually(lambda: discord.held, within=10, what="Discord accepted the first message")
        await servers.kill(first)  # long before HTTP_TIMEOUT_SECONDS: the "sent" statement never ran

        rows = await fetch(database_url, "SELECT content, status, attempts FROM alerts ORDER BY seq")
        assert [(r["content"], r["status"], r["attempts"]) for r in rows] == [
            ("window 1", "sending", 0),
            ("window 2", "queued", 0),
            ("window 3", "queued", 0),
        ]
        assert discord.contents(held.webhook_id) == ["window 1"]

        # A new process honours the lease: it dispatches (another user's alert is sent) but leaves the
        # leased alert, and — the user's order — the alerts behind it, alone.
        second = await servers.start()
        await enqueue([second], other, ["another user"])
        await eventually(
            lambda: discord.contents(other.webhook_id) == ["another user"],
            within=10,
            what="the new process dispatches",
        )
        assert discord.contents(held.webhook_id) == ["window 1"]
        (leased,) = await fetch(database_url, "SELECT status FROM alerts WHERE content = 'window 1'")
        assert leased["status"] == "sending"

        # The lease runs out (LEASE is 60 s; ended here by hand): the alert is claimed and sent again —
        # the one repeat the window allows — and nothing else is repeated or reordered.
        await fetch(database_url, "UPDATE alerts SET locked_until = now() WHERE status = 'sending'")
        counts = await all_ended(database_url, 4)
        assert counts == {"sent": 4}, counts
        assert discord.contents(held.webhook_id) == ["window 1", "window 1", "window 2", "window 3"]
        assert discord.contents(other.webhook_id) == ["another user"]
