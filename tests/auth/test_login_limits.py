"""Login brute force: RATE_LIMIT_LOGIN per email and, separately, per client IP, enforced before the
password is checked (the right password after the limit trips is still a 429), shared across
processes through Redis, counted in rate_limit_hits_total, and restored after the window."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from limits import parse

from tests.auth.helpers import PASSWORD, assert_problem, login, peer, signup, unique_email
from tests.support.metrics import grew, sample, scrape

WRONG = "not the right password"

# The login limit of the tests that count attempts against it. Without Redis (and while Redis is down)
# the limiter is limits' in-memory sliding-window counter, which files hits under int(time.time() /
# window): its windows are aligned to the epoch. With "5/minute" a wall-clock minute turning between
# the first and the sixth attempt weighs the five earlier hits at just under 5 (floor: 4) and lets the
# sixth through (reproduced: fifth attempt at :59.80, sixth at :00.00, answered 200 with a token).
# Windows of a day, or of any multiple of one, all end at midnight UTC, when nightly CI runs. 50 years
# (limits' year is 360 days): the current window runs from 2019-04-14 to 2068-07-25, so no test run
# straddles a boundary. It must stay shorter than the time since the epoch: with "5/100 years" the
# current and the previous window are the same bucket and only 4 attempts pass. (On Redis a window
# starts at its first hit, not at a clock boundary; the Redis burst test uses this window too.)
LIMIT = "5/50 years"
LIMIT_SECONDS = parse(LIMIT).get_expiry()


def _hits(metrics: str) -> float:
    return sample(metrics, "rate_limit_hits_total", route="/v1/auth/login")


def _assert_429(r: httpx.Response, window_seconds: int = LIMIT_SECONDS) -> dict:
    body = assert_problem(r, 429)
    # A sliding window frees a unit within one window of the refused attempt.
    assert 1 <= int(r.headers["retry-after"]) <= window_seconds
    assert r.headers["x-ratelimit-remaining"] == "0"
    assert r.headers["x-ratelimit-limit"] == "5"
    assert "access_token" not in r.text
    return body


async def test_sixth_attempt_for_one_email_is_429_even_with_the_right_password(make_client) -> None:
    client = await make_client(rate_limit_login=LIMIT)
    email = unique_email("target")
    assert (await signup(client, email)).status_code == 201
    hits_before = _hits(await scrape(client))
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
    assert _hits(await scrape(client)) - hits_before == 2
    # Another account is unaffected.
    other = unique_email("bystander")
    await signup(client, other)
    async with peer(client, "10.1.0.100") as bystander:
        assert (await login(bystander, other)).status_code == 200


async def test_six_emails_from_one_ip_trip_the_ip_limit(make_client) -> None:
    client = await make_client(rate_limit_login=LIMIT, client_ip="192.0.2.10")
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


@pytest.mark.redis
async def test_limit_holds_under_a_concurrent_burst(make_client, require_redis) -> None:
    """Twenty attempts at once on one account, from twenty addresses, through two app instances sharing
    Redis: each Redis round trip is a point where the other requests run, so a limiter that read the
    count and wrote it back in two steps would let more than five through. Exactly five pass."""
    one = await make_client(rate_limit_login=LIMIT, use_redis=True)
    two = await make_client(rate_limit_login=LIMIT, use_redis=True)
    email = unique_email("burst")
    await signup(one, email)
    peers = [peer(one if i % 2 else two, f"10.2.0.{i}") for i in range(1, 21)]
    before = await scrape(one)
    try:
        responses = await asyncio.gather(*(login(p, email, PASSWORD) for p in peers))
    finally:
        for p in peers:
            await p.aclose()
    after = await scrape(one)
    # Every check was decided by the shared count: none fell back to a per-process one (a storage call
    # that ran past the limiter's timeout, e.g. on an overloaded machine, would be decided locally).
    for counter in ("rate_limit_storage_errors_total", "rate_limit_storage_skipped_total"):
        assert grew(before, after, counter, limit="login-email") == 0, counter
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 5 + [429] * 15
    for r in responses:
        if r.status_code == 429:
            assert "login-email" in _assert_429(r)["detail"]


@pytest.mark.redis
async def test_limit_resets_after_the_window(make_client, require_redis) -> None:
    # A short window keeps the test fast. The limiter is a sliding-window counter: the previous
    # window's hits weigh in for up to one more window, so the full budget is back after two.
    # On Redis, where a window starts at its first hit: limits' in-memory windows are aligned to the
    # epoch, and a burst that straddled a second boundary there would let a sixth attempt through.
    client = await make_client(rate_limit_login="5/1 second", use_redis=True)
    email = unique_email("patient")
    await signup(client, email)
    # Concurrent attempts reach the limiter within milliseconds (it runs before any Argon2 work), and
    # the window starts with the first of them, so the limit trips inside that one window.
    first = await asyncio.gather(*(login(client, email, PASSWORD) for _ in range(8)))
    assert sorted(r.status_code for r in first) == [200] * 5 + [429] * 3
    for r in first:
        if r.status_code == 429:
            _assert_429(r, window_seconds=1)
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
        _assert_429(await login(owner_two, email, PASSWORD), window_seconds=60)
        _assert_429(await login(owner_one, email, PASSWORD), window_seconds=60)

    # Per IP: one client address spraying emails across both processes.
    target = unique_email("shared-ip")
    await signup(one, target)
    for i in range(5):
        app_client = one if i % 2 == 0 else two
        async with peer(app_client, "198.51.100.7") as sprayer:
            assert (await login(sprayer, unique_email(f"spray{i}"), WRONG)).status_code == 401
    async with peer(two, "198.51.100.7") as sprayer:
        body = _assert_429(await login(sprayer, target, PASSWORD), window_seconds=60)
        assert "login-ip" in body["detail"]


async def test_successful_logins_carry_rate_limit_headers(make_client) -> None:
    client = await make_client(rate_limit_login=LIMIT)
    email = unique_email()
    await signup(client, email)
    r = await login(client, email)
    assert r.status_code == 200
    assert r.headers["x-ratelimit-limit"] == "5" and r.headers["x-ratelimit-remaining"] == "4"


async def test_login_limits_hold_per_process_when_redis_is_down(make_client) -> None:
    """The default limit fails open when Redis fails; the login limits must not: they fall back to
    per-process counting (nothing listens on port 1, so every Redis call fails)."""
    client = await make_client(rate_limit_login=LIMIT, redis_url="redis://127.0.0.1:1/0")
    email = unique_email("redis-down")
    assert (await signup(client, email)).status_code == 201
    before = await scrape(client)
    for i in range(5):
        async with peer(client, f"10.7.0.{i + 1}") as attacker:
            assert (await login(attacker, email, WRONG)).status_code == 401
    async with peer(client, "10.7.0.99") as owner:
        body = _assert_429(await login(owner, email, PASSWORD))
        assert "login-email" in body["detail"]
    after = await scrape(client)
    # Served without Redis: each of the six per-email checks either tried Redis and failed (at most
    # one per cooldown) or skipped it during the cooldown, and was decided by the per-process fallback.
    skipped = grew(before, after, "rate_limit_storage_skipped_total", limit="login-email")
    failed = grew(before, after, "rate_limit_storage_errors_total", limit="login-email")
    assert skipped >= 1 and skipped + failed == 6, (skipped, failed)
