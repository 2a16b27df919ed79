"""/readyz cannot be used to drain the pool: one database check per second per process, shared."""

from __future__ import annotations

import asyncio

from fastapi import Request
from prometheus_client import REGISTRY

from app.ops.deps import get_readiness
from app.ops.readiness import ReadinessProbe


def _checks(outcome: str) -> float:
    return REGISTRY.get_sample_value("readiness_checks_total", {"outcome": outcome}) or 0.0


async def test_a_flood_of_readyz_costs_one_database_check_per_second(make_client) -> None:
    now = [1000.0]
    probes: list[ReadinessProbe] = []

    async def readiness(request: Request) -> ReadinessProbe:  # the app's own probe, on a clock the test owns
        if not probes:
            probes.append(ReadinessProbe(request.app.state.database, clock=lambda: now[0]))
        return probes[0]

    client = await make_client(
        app_hook=lambda app: app.dependency_overrides.update({get_readiness: readiness})
    )
    before = _checks("ok")
    answers = await asyncio.gather(*(client.get("/readyz") for _ in range(50)))
    assert [r.status_code for r in answers] == [200] * 50
    assert _checks("ok") - before == 1  # fifty callers, one SELECT 1
    now[0] += 0.9
    assert (await client.get("/readyz")).status_code == 200
    assert _checks("ok") - before == 1  # still within the second: cached
    now[0] += 0.2
    assert (await client.get("/readyz")).status_code == 200
    assert _checks("ok") - before == 2  # a second later: checked again


async def test_the_default_probe_is_shared_by_concurrent_callers(make_client) -> None:
    client = await make_client()
    before = _checks("ok")
    answers = await asyncio.gather(*(client.get("/readyz") for _ in range(20)))
    assert all(r.status_code == 200 for r in answers)
    assert _checks("ok") - before <= 3  # one per second of this burst (it may straddle a tick or two)
