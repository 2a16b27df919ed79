"""Account-linking CSRF: the OAuth state is bound to the browser that started the flow (the
td_oauth_binding cookie) or to its owner's bearer token; anyone else is refused before any code exchange."""

from __future__ import annotations

from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.brokers.test_oauth_link import FRONTEND, FakeTokenEndpoint, _app, _user

CALLBACK = "/v1/oauth/alpaca/callback"


def browser(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """Another browser on the same app: its own cookie jar."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=client.app, client=("192.0.2.50", 40000)),  # type: ignore[attr-defined]
        base_url="https://testserver",
        timeout=30,
    )


async def _start(client: httpx.AsyncClient, auth: dict[str, str]) -> tuple[str, httpx.Response]:
    r = await client.get("/v1/oauth/alpaca/authorize", headers=auth)
    assert r.status_code == 200, r.text
    return parse_qs(urlsplit(r.json()["authorize_url"]).query)["state"][0], r


async def _connected(client: httpx.AsyncClient, auth: dict[str, str]) -> bool:
    return (await client.get("/v1/broker/connection", headers=auth)).json()["connected"]


async def test_authorize_sets_the_binding_cookie_with_the_contract_attributes(make_client) -> None:
    client = await _app(make_client, FakeTokenEndpoint())
    _, auth = await _user(client)
    _, r = await _start(client, auth)
    header = r.headers["set-cookie"]
    cookie = SimpleCookie(header)["td_oauth_binding"]
    assert len(cookie.value) >= 43
    assert cookie["path"] == "/v1/oauth/alpaca" and cookie["max-age"] == "600"
    assert cookie["httponly"] and cookie["samesite"].lower() == "lax"
    assert cookie["secure"]  # APP_ENV=test: Secure everywhere but development

    dev = await _app(make_client, FakeTokenEndpoint(), app_env="development")
    _, dev_auth = await _user(dev)
    _, r = await _start(dev, dev_auth)
    assert not SimpleCookie(r.headers["set-cookie"])["td_oauth_binding"]["secure"]


async def test_the_attack_a_victim_completing_the_attackers_state_is_refused_without_exchange(
    make_client,
) -> None:
    fake = FakeTokenEndpoint()
    attacker = await _app(make_client, fake)
    _, attacker_auth = await _user(attacker)
    state, _ = await _start(attacker, attacker_auth)  # the attacker's browser holds the binding cookie

    _, victim_auth = await _user(attacker)
    async with browser(attacker) as victim:  # the victim's browser: no binding cookie
        # The victim consented at Alpaca with the attacker's link; Alpaca redirects the victim's browser here.
        r = await victim.get(CALLBACK, params={"code": "victims-code", "state": state})
        assert r.status_code == 400 and r.headers["content-type"].startswith("application/problem+json")
        # Even signed in (a front end that forwards the victim's token), it is not the state's owner.
        r = await victim.get(CALLBACK, params={"code": "victims-code", "state": state}, headers=victim_auth)
        assert r.status_code == 400
    assert fake.requests == []  # the token server was never called: no account of the victim's was linked
    assert not await _connected(attacker, attacker_auth)

    # The state was not burnt: its owner's own browser can still use it.
    ok = await attacker.get(CALLBACK, params={"code": "own-code", "state": state})
    assert ok.status_code == 302 and ok.headers["location"] == f"{FRONTEND}/settings/broker?status=connected"
    assert [parse_qs(req.content.decode())["code"] for req in fake.requests] == [["own-code"]]


async def test_the_owners_browser_links_and_the_cookie_is_cleared(make_client) -> None:
    fake = FakeTokenEndpoint()
    client = await _app(make_client, fake)
    _, auth = await _user(client)
    state, _ = await _start(client, auth)
    r = await client.get(CALLBACK, params={"code": "c", "state": state})  # cookie only, no token
    assert r.status_code == 302 and r.headers["location"].endswith("status=connected")
    cleared = SimpleCookie(r.headers["set-cookie"])["td_oauth_binding"]
    assert cleared["max-age"] == "0" and cleared["path"] == "/v1/oauth/alpaca"
    assert await _connected(client, auth)


async def test_a_binding_cookie_from_another_flow_does_not_open_this_state(make_client) -> None:
    fake = FakeTokenEndpoint()
    attacker = await _app(make_client, fake)
    _, attacker_auth = await _user(attacker)
    _, victim_auth = await _user(attacker)
    async with browser(attacker) as victim:
        victim_state, _ = await _start(victim, victim_auth)  # the victim's own cookie, for their own state
        attacker_state, _ = await _start(attacker, attacker_auth)
        r = await victim.get(CALLBACK, params={"code": "victims-code", "state": attacker_state})
        assert r.status_code == 400
        assert fake.requests == []
        assert (await victim.get(CALLBACK, params={"code": "c", "state": victim_state})).status_code == 302


async def test_the_owners_bearer_from_another_device_links(make_client) -> None:
    fake = FakeTokenEndpoint()
    laptop = await _app(make_client, fake)
    _, auth = await _user(laptop)
    state, _ = await _start(laptop, auth)
    async with browser(laptop) as phone:  # no cookie here, but the owner's token
        r = await phone.get(CALLBACK, params={"code": "c", "state": state}, headers=auth)
    assert r.status_code == 302 and r.headers["location"].endswith("status=connected")
    assert await _connected(laptop, auth)


async def test_complete_links_for_the_owner_and_refuses_anyone_else(make_client) -> None:
    fake = FakeTokenEndpoint()
    client = await _app(make_client, fake)
    _, owner = await _user(client)
    _, other = await _user(client)
    state, _ = await _start(client, owner)
    async with browser(client) as front_end:  # another site's page: no cookie, only tokens
        refused = await front_end.post(
            "/v1/oauth/alpaca/complete", json={"code": "c", "state": state}, headers=other
        )
        assert refused.status_code == 400
        assert {e["field"] for e in refused.json()["errors"]} == {"state"}
        assert fake.requests == []
        unauthenticated = await front_end.post(
            "/v1/oauth/alpaca/complete", json={"code": "c", "state": state}
        )
        assert unauthenticated.status_code == 401
        done = await front_end.post(
            "/v1/oauth/alpaca/complete", json={"code": "c", "state": state}, headers=owner
        )
        assert done.status_code == 204, done.text
        again = await front_end.post(
            "/v1/oauth/alpaca/complete", json={"code": "c", "state": state}, headers=owner
        )
        assert again.status_code == 400  # single-use
    assert len(fake.requests) == 1
    assert await _connected(client, owner) and not await _connected(client, other)


async def test_complete_reports_a_provider_failure_and_stores_nothing(make_client) -> None:
    client = await _app(make_client, FakeTokenEndpoint("400"))
    _, owner = await _user(client)
    state, _ = await _start(client, owner)
    r = await client.post("/v1/oauth/alpaca/complete", json={"code": "bad", "state": state}, headers=owner)
    assert r.status_code == 502 and r.headers["content-type"].startswith("application/problem+json")
    assert not await _connected(client, owner)
    bad = await client.post(
        "/v1/oauth/alpaca/complete", json={"code": "c", "state": state, "x": 1}, headers=owner
    )
    assert bad.status_code == 422


async def test_cors_lets_the_front_end_send_and_receive_the_cookie(make_client) -> None:
    client = await _app(make_client, FakeTokenEndpoint())
    _, auth = await _user(client)
    preflight = await client.options(
        "/v1/oauth/alpaca/authorize",
        headers={
            "Origin": FRONTEND,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == FRONTEND
    assert preflight.headers["access-control-allow-credentials"] == "true"
    r = await client.get("/v1/oauth/alpaca/authorize", headers={**auth, "Origin": FRONTEND})
    assert r.headers["access-control-allow-origin"] == FRONTEND
    assert r.headers["access-control-allow-credentials"] == "true"
    assert "td_oauth_binding" in r.headers["set-cookie"]
    other = await client.get("/v1/oauth/alpaca/authorize", headers={**auth, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
