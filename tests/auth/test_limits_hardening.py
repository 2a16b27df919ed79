"""Limits an attacker cannot sidestep: per-IP limits key an IPv6 client by its /64 and an IPv4-mapped
address as IPv4; signup has its own limit before any hashing; a signup flood cannot make logins 503;
the email in Redis keys and logs is an HMAC with a server-side key, not a bare (reversible) hash."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json

import pytest
import redis.asyncio as aioredis

from app.core.deps import get_password_hashing
from app.core.ratelimit import network_key
from app.core.security import PasswordHashing
from tests.auth.helpers import PASSWORD, assert_problem, login, peer, signup, unique_email
from tests.auth.test_login_limits import LIMIT
from tests.support.settings import TEST_JWT_SECRET

WRONG = "not the right password"


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("testclient", "testclient"),
    ],
)
def test_network_key(address: str, key: str) -> None:
    assert network_key(address) == key


async def test_addresses_of_one_ipv6_64_share_one_login_budget(make_client) -> None:
    client = await make_client(rate_limit_login=LIMIT)
    statuses = []
    for i in range(
        6
    ):  # six hosts' worth of addresses, one /64: a fresh email each, so only the IP limit counts
        async with peer(client, f"2001:db8:77:1::{i + 1:x}") as attacker:
            statuses.append((await login(attacker, unique_email("v6"), WRONG)).status_code)
    assert statuses == [401] * 5 + [429]
    async with peer(client, "2001:db8:77:2::1") as neighbour:  # the next /64 is another client
        assert (await login(neighbour, unique_email("v6"), WRONG)).status_code == 401


async def test_an_ipv4_mapped_address_counts_as_its_ipv4_address(make_client) -> None:
    client = await make_client(rate_limit_login=LIMIT)
    statuses = []
    for i in range(6):
        address = "198.51.100.9" if i % 2 else "::ffff:198.51.100.9"
        async with peer(client, address) as attacker:
            statuses.append((await login(attacker, unique_email("mapped"), WRONG)).status_code)
    assert statuses == [401] * 5 + [429]


async def test_signup_has_its_own_limit_per_ip_checked_before_hashing(make_client) -> None:
    client = await make_client(rate_limit_signup="3/50 years", client_ip="192.0.2.30")
    hashed_before = client.app.state.passwords._pending  # type: ignore[attr-defined]
    assert [(await signup(client)).status_code for _ in range(3)] == [201] * 3
    refused = await signup(client)
    body = assert_problem(refused, 429)
    assert "signup" in body["detail"] and refused.headers["retry-after"]
    assert client.app.state.passwords._pending == hashed_before  # type: ignore[attr-defined]
    async with peer(client, "192.0.2.31") as elsewhere:  # per IP
        assert (await signup(elsewhere)).status_code == 201


async def test_the_signup_limit_is_checked_before_any_hashing(make_client) -> None:
    calls: list[str] = []

    class CountingHashing(PasswordHashing):
        async def hash(self, password: str, *, signup: bool = False) -> str:
            calls.append("hash")
            return await super().hash(password, signup=signup)

    counting = CountingHashing(time_cost=1, memory_cost=8 * 1024, max_workers=1)

    async def hashing() -> PasswordHashing:
        return counting

    try:
        client = await make_client(
            rate_limit_signup="1/50 years",
            app_hook=lambda app: app.dependency_overrides.update({get_password_hashing: hashing}),
        )
        assert (await signup(client)).status_code == 201
        assert (await signup(client)).status_code == 429
        assert calls == ["hash"]  # the refused signup never reached Argon2
    finally:
        counting.close()


async def test_a_signup_flood_cannot_make_logins_answer_503(make_client) -> None:
    """One hashing worker, a queue of 8: forty concurrent signups fill what signups may use (a quarter)
    and are shed; the logins that arrive meanwhile still get a place and run before waiting signups."""
    small = PasswordHashing(max_workers=1, max_pending=8)

    async def hashing() -> PasswordHashing:
        return small

    try:
        client = await make_client(
            rate_limit_signup="1000/minute",
            rate_limit_login="1000/minute",
            app_hook=lambda app: app.dependency_overrides.update({get_password_hashing: hashing}),
        )
        email = unique_email("victim")
        assert (await signup(client, email)).status_code == 201
        signups = [asyncio.create_task(signup(client)) for _ in range(40)]
        await asyncio.sleep(0)  # let the flood get in first
        logins = await asyncio.gather(*(login(client, email, PASSWORD if i % 2 else WRONG) for i in range(5)))
        flood = await asyncio.gather(*signups)
    finally:
        small.close()
    assert sorted(r.status_code for r in logins) == [200, 200, 401, 401, 401]  # none shed
    codes = [r.status_code for r in flood]
    assert 503 in codes and 201 in codes  # signups were shed, first
    shed = [r for r in flood if r.status_code == 503]
    assert all(r.headers["retry-after"] for r in shed)


@pytest.mark.redis
async def test_the_email_in_redis_keys_and_logs_is_an_hmac_not_a_bare_hash(
    make_client, require_redis, capfd: pytest.CaptureFixture[str]
) -> None:
    client = await make_client(rate_limit_login=LIMIT, use_redis=True, log_level="INFO")
    email = unique_email("private")
    capfd.readouterr()
    assert (await login(client, email, WRONG)).status_code == 401
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
    bare = hashlib.sha256(email.encode()).hexdigest()[:32]
    key = hmac.new(TEST_JWT_SECRET.encode(), b"tradedesk/pseudonym/v1", hashlib.sha256).digest()
    expected = hmac.new(key, email.encode(), hashlib.sha256).hexdigest()[:32]
    r = aioredis.from_url(require_redis)
    try:
        keys = [k.decode() for k in await r.keys("*login-email*")]
    finally:
        await r.aclose()
    assert keys and all(bare not in k for k in keys)
    assert any(expected in k for k in keys)
    logged = [line.get("email_hash") for line in lines if line.get("msg") == "login failed"]
    assert logged == [expected]
    text = json.dumps(lines)
    assert email not in text and bare not in text
