"""Login brute force: RATE_LIMIT_LOGIN per email and, separately, per client IP, enforced before the
password is checked (the right password after the limit trips is still a 429), shared across
processes through Redis, counted in rate_limit_hits_total, and restored after the window."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from tests.auth.helpers import PASSWORD, assert_problem, login, peer, signup, unique_email

WRONG = "not the right password"


def _hits(metrics: str) -> float:
    m = re.search(r'^rate_limit_hits_total\{route="/v1/auth/login"\} ([0-9.e+]+)$', metrics, re.M)
    return float(m.group(1)) if m else 0.0


def _assert_429(r: httpx.Response) -> dict:
    body = assert_problem(r, 429)
    assert 1 <= int(r.headers["retry-after"]) <= 120
    assert r.headers["x-ratelimit-remaining"] == "0"
    assert r.headers["x-ratelimit-limit"] == "5"
    assert "access_token" not in r.text
    return body


async def test_sixth_attempt_for_one_email_is_429_even_with_the_right_password(make_client) -> None:
    client = await make_client(rate_limit_login="5/minute")
    email = unique_email("target")
    assert (await signup(client, email)).status_code == 201
    hits_before = _hits((await client.get("/metrics")).text)
    # Each attempt from a different IP: only the per-email limit can trip.
    for i in range(5):
        async with peer(client, f"10.1.0.{i + 1}") as attacker:
            assert (await login(attacker, email, WRONG)).status_code == 401
    async with peer(client, "10.1.0.99") as owner:
        r = await login(owner, email, PASSWORD)
        body = _assert_429(r)
        assert "login-email" in body["detail"]
        # Case and whitespace variants of the address share the budget.
        _assert_429(await login(owner, f"  {email.upper()} ", PASSWORD))
    assert _hits((await client.get("/metrics")).text) - hits_before == 2
    # Another account is unaffected.
    other = unique_email("bystander")
    await signup(client, other)
    async with peer(client, "10.1.0.100") as bystander:
        assert (await login(bystander, other)).status_code == 200


async def test_six_emails_from_one_ip_trip_the_ip_limit(make_client) -> None:
    client = await make_client(rate_limit_login="5/minute", client_ip="192.0.2.10")
    email = unique_email("real")
    await signup(client, email)
    for i in range(5):
        assert (await login(client, unique_email(f"spray{i}"), WRONG)).status_code == 401
    # Sixth, with a real account and its right password: refused by the per-IP limit.
    body = _assert_429(await login(client, email, PASSWORD))
    assert "login-ip" in body["detail"]
    # Another client IP can still log in to that account.
    async with peer(client, "192.0.2.11") as elsewhere:
        assert (await login(elsewhere, email)).status_code == 200


async def test_limit_holds_under_a_concurrent_burst(make_client) -> None:
    client = await make_client(rate_limit_login="5/minute")
    email = unique_email("burst")
    await signup(client, email)
    peers = [peer(client, f"10.2.0.{i}") for i in range(1, 13)]
    try:
        responses = await asyncio.gather(*(login(p, email, PASSWORD) for p in peers))
    finally:
        for p in peers:
            await p.aclose()
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 5 + [429] * 7


async def test_limit_resets_after_the_window(make_client) -> None:
    # A short window keeps the test fast. The limiter is a sliding-window counter: the previous
    # window's hits weigh in for up to one more window, so the full budget is back after two.
    client = await make_client(rate_limit_login="5/1 second")
    email = unique_email("patient")
    await signup(client, email)
    # Concurrent attempts reach the limiter within milliseconds (it runs before any Argon2 work),
    # so the limit trips inside one window however slow the machine is.
    first = await asyncio.gather(*(login(client, email, PASSWORD) for _ in range(8)))
    assert sorted(r.status_code for r in first) == [200] * 5 + [429] * 3
    for r in first:
        if r.status_code == 429:
            _assert_429(r)
    await asyncio.sleep(2.1)  # waiting out the window is the behaviour under test
    again = await asyncio.gather(*(login(client, email, PASSWORD) for _ in range(5)))
    assert [r.status_code for r in again] == [200] * 5


@pytest.mark.redis
async def test_limits_hold_across_two_app_instances_via_redis(make_client, require_redis) -> None:
    one = await make_client(rate_limit_login="5/minute", use_redis=True)
    two = await make_client(rate_limit_login="5/minute", use_redis=True)
    email = unique_email("shared")
    await signup(one, email)

    # Per email: attempts alternate between the two processes and come from different IPs.
    statuses = []
    for i in range(5):
        app_client = one if i % 2 == 0 else two
        async with peer(app_client, f"10.3.0.{i + 1}") as attacker:
            statuses.append((await login(attacker, email, WRONG)).status_code)
    assert statuses == [401] * 5
    async with peer(two, "10.3.0.50") as owner_two, peer(one, "10.3.0.51") as owner_one:
        _assert_429(await login(owner_two, email, PASSWORD))
        _assert_429(await login(owner_one, email, PASSWORD))

    # Per IP: one client address spraying emails across both processes.
    target = unique_email("shared-ip")
    await signup(one, target)
    for i in range(5):
        app_client = one if i % 2 == 0 else two
        async with peer(app_client, "198.51.100.7") as sprayer:
            assert (await login(sprayer, unique_email(f"spray{i}"), WRONG)).status_code == 401
    async with peer(two, "198.51.100.7") as sprayer:
        body = _assert_429(await login(sprayer, target, PASSWORD))
        assert "login-ip" in body["detail"]


async def test_successful_logins_carry_rate_limit_headers(make_client) -> None:
    client = await make_client(rate_limit_login="5/minute")
    email = unique_email()
    await signup(client, email)
    r = await login(client, email)
    assert r.status_code == 200
    assert r.headers["x-ratelimit-limit"] == "5" and r.headers["x-ratelimit-remaining"] == "4"


async def test_login_limits_hold_per_process_when_redis_is_down(make_client) -> None:
    """The default limit fails open when Redis fails; the login limits must not: they fall back to
    per-process counting (nothing listens on port 1, so every Redis call fails)."""
    client = await make_client(rate_limit_login="5/minute", redis_url="redis://127.0.0.1:1/0")
    email = unique_email("redis-down")
    assert (await signup(client, email)).status_code == 201
    for i in range(5):
        async with peer(client, f"10.7.0.{i + 1}") as attacker:
            assert (await login(attacker, email, WRONG)).status_code == 401
    async with peer(client, "10.7.0.99") as owner:
        _assert_429(await login(owner, email, PASSWORD))
    metrics = (await client.get("/metrics")).text
    assert 'rate_limit_storage_skipped_total{limit="login-email"}' in metrics  # served without Redis
