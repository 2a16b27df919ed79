"""The reconciler on the paper broker: an order whose request died between phases (b) and (c) — the
broker filled it, nothing recorded the result — is settled by ``python -m app.cli reconcile-now`` (a real
subprocess) and by the app's loop, and its Idempotency-Key then replays the settled order."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.auth.helpers import fetch
from tests.orders.helpers import events, market, new_key, place, trader
from tests.support.settings import TEST_FERNET_KEY, TEST_JWT_SECRET, TEST_WEBHOOK_SECRET

pytestmark = pytest.mark.asyncio
ROOT = Path(__file__).resolve().parents[2]


async def interrupted_order(client, database_url: str) -> tuple[dict, dict, str]:
    """A filled paper order put back as its request left it when it died after the broker call: the
    order ``submitting`` and due, its key in flight under the order's claim."""
    _, auth = await trader(client)
    key = new_key()
    order = (await place(client, auth, market(), key)).json()
    await fetch(
        database_url,
        "UPDATE orders SET status = 'submitting', broker_order_id = NULL, filled_qty = 0, "
        "filled_avg_price = NULL, next_reconcile_at = now()",
    )
    await fetch(
        database_url,
        "UPDATE idempotency_keys k SET state = 'in_flight', locked_at = now(), claim_token = o.idempotency_claim, "
        "response_status = NULL, response_headers = NULL, response_body = NULL FROM orders o "
        "WHERE o.user_id = k.user_id AND o.idempotency_key = k.key",
    )
    return auth, order, key


async def test_reconcile_now_settles_an_interrupted_order_and_completes_its_key(
    make_client, database_url
) -> None:
    client = await make_client(reconcile_interval_seconds=3600)
    auth, order, key = await interrupted_order(client, database_url)
    retry = await place(client, auth, market(), key)
    assert retry.status_code == 409  # in flight: nobody may run it again

    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "FRONTEND_URL": "http://localhost:3000",
        "JWT_SECRET": TEST_JWT_SECRET,
        "STRIPE_WEBHOOK_SECRET": TEST_WEBHOOK_SECRET,
        "TOKEN_ENCRYPTION_KEY": TEST_FERNET_KEY,
        "PYTHONPATH": str(ROOT),
    }
    env.pop("REDIS_URL", None)
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli", "reconcile-now"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["command"] == "reconcile-now"
    assert (report["looked_at"], report["settled"], report["pending"]) == (1, 1, 0)

    got = (await client.get(f"/v1/orders/{order['id']}", headers=auth)).json()
    assert (got["status"], got["filled_qty"], got["broker_order_id"]) == (
        "filled",
        "10",
        order["broker_order_id"],
    )
    assert (await events(database_url, order["id"]))[-1] == ("submitting", "filled", "reconciled")
    replay = await place(client, auth, market(), key)
    assert replay.status_code == 201 and replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == got
    assert len(await fetch(database_url, "SELECT 1 FROM paper_orders")) == 1  # never placed twice


async def test_the_apps_loop_settles_it_on_its_own(make_client, database_url) -> None:
    client = await make_client(reconcile_interval_seconds=3600)
    auth, order, key = await interrupted_order(client, database_url)
    reconciler = client.app.state.reconciler
    runs = reconciler.runs
    # The loop is waiting for its next interval; restart it as a fresh process would at startup.
    await reconciler.stop()
    reconciler.start()
    await asyncio.wait_for(reconciler.wait_for_runs(runs + 1), timeout=10)
    assert (await client.get(f"/v1/orders/{order['id']}", headers=auth)).json()["status"] == "filled"
    assert (await place(client, auth, market(), key)).headers["idempotent-replayed"] == "true"
