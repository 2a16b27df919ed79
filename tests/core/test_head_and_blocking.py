"""HEAD answered like GET on every GET route (uptime monitors: UptimeRobot's default monitor sends
HEAD, and ``HEAD /healthz`` used to answer 405), and the emergency network block (BLOCKED_NETWORKS,
the rate-limit-attack runbook's "enable IP-based blocking")."""

from __future__ import annotations

import re

import httpx
import pytest

from app.core.config import ConfigurationError
from tests.support.metrics import grew, scrape
from tests.support.settings import make_settings

_PARAM = re.compile(r"\{[^}]+\}")


async def test_head_healthz_is_200_without_a_body(client: httpx.AsyncClient) -> None:
    get = await client.get("/healthz")
    head = await client.head("/healthz")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == get.headers["content-length"] != "0"
    assert head.headers["content-type"] == get.headers["content-type"]
    assert head.headers["x-request-id"]


async def test_every_get_route_answers_head_like_get(client: httpx.AsyncClient) -> None:
    schema = client.app.openapi()  # type: ignore[attr-defined]
    templates = [path for path, operations in schema["paths"].items() if "get" in operations]
    templates += ["/docs", "/redoc", "/openapi.json"]  # not in the schema themselves
    paths = sorted({_PARAM.sub("00000000-0000-0000-0000-000000000000", t) for t in templates})
    assert "/healthz" in paths and len(paths) > 15
    for path in paths:
        get = await client.get(path)
        head = await client.head(path)
        assert head.status_code == get.status_code != 405, path
        assert head.headers.get("content-type") == get.headers.get("content-type"), path
        assert head.content == b"", path


async def test_head_where_get_is_not_allowed_answers_like_get(client: httpx.AsyncClient) -> None:
    get = await client.get("/v1/auth/login")  # POST only
    head = await client.head("/v1/auth/login")
    assert head.status_code == get.status_code == 405
    assert head.headers["allow"] == get.headers["allow"]
    assert head.content == b""


async def test_head_is_counted_as_head_on_the_route_template(client: httpx.AsyncClient) -> None:
    before = await scrape(client)
    await client.head("/healthz")
    after = await scrape(client)
    assert grew(before, after, "http_requests_total", method="HEAD", route="/healthz", status="200") == 1


@pytest.mark.parametrize(
    ("client_ip", "headers", "blocked"),
    [
        ("203.0.113.7", {}, True),
        ("::ffff:203.0.113.8", {}, True),  # an IPv4-mapped address is the IPv4 address
        ("2001:db8:dead:beef::1", {}, True),
        ("198.51.100.1", {}, False),
        ("10.0.0.5", {"X-Forwarded-For": "203.0.113.9"}, True),  # through the trusted proxy
        ("10.0.0.5", {"X-Forwarded-For": "198.51.100.2"}, False),
        ("198.51.100.3", {"X-Forwarded-For": "192.0.2.1"}, False),  # untrusted peer: XFF ignored
    ],
)
async def test_blocked_networks_get_403_on_every_route(make_client, client_ip, headers, blocked) -> None:
    client = await make_client(
        client_ip=client_ip,
        blocked_networks="203.0.113.0/24, 2001:db8:dead::/48, 192.0.2.1",
        trusted_proxies="10.0.0.0/8",
    )
    before = await scrape(client) if not blocked else None
    for path in ("/healthz", "/v1/market-data/quotes/AAPL", "/v1/auth/me"):
        resp = await client.get(path, headers=headers)
        if blocked:
            assert resp.status_code == 403, (path, resp.text)
            assert resp.headers["content-type"].startswith("application/problem+json")
            assert resp.json()["type"].endswith("/problems/blocked")
            assert resp.headers["x-request-id"]
        else:
            assert resp.status_code != 403, (path, resp.text)
    if before is not None:
        assert grew(before, await scrape(client), "http_blocked_requests_total") == 0


async def test_a_block_is_counted(make_client) -> None:
    probe = await make_client()
    before = await scrape(probe)
    blocked = await make_client(client_ip="203.0.113.7", blocked_networks="203.0.113.0/24")
    assert (await blocked.post("/v1/auth/login", json={})).status_code == 403
    assert grew(before, await scrape(probe), "http_blocked_requests_total") == 1


def test_a_malformed_network_is_a_configuration_error_naming_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="BLOCKED_NETWORKS"):
        make_settings("postgresql://u@127.0.0.1/db", blocked_networks="203.0.113.0/24, not-a-network")
