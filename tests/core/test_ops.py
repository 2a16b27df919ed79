from __future__ import annotations

import httpx


async def test_healthz_and_request_id(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert len(r.headers["x-request-id"]) >= 16
    echoed = await client.get("/healthz", headers={"X-Request-ID": "abc-123.req"})
    assert echoed.headers["x-request-id"] == "abc-123.req"
    # A hostile request id (header injection, absurd length) is replaced, not echoed.
    hostile = await client.get("/healthz", headers={"X-Request-ID": "x" * 500})
    assert hostile.headers["x-request-id"] != "x" * 500


async def test_security_headers(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert "strict-transport-security" not in r.headers  # only in production


async def test_hsts_in_production(make_client) -> None:
    client = await make_client(app_env="production", frontend_url="https://app.example.com")
    r = await client.get("/healthz")
    assert r.headers["strict-transport-security"].startswith("max-age=")


async def test_metrics_exposes_contract_names(client: httpx.AsyncClient) -> None:
    await client.get("/readyz")
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in ("http_requests_total", "http_request_duration_seconds_bucket", "db_pool_checked_out",
                 "db_pool_size", "db_pool_timeouts_total", "rate_limit_hits_total"):
        assert name in text, name
    assert 'route="/readyz"' in text


async def test_metrics_label_routes_by_template_not_raw_path(client: httpx.AsyncClient) -> None:
    for i in range(3):
        await client.get(f"/no/such/path/{i}")
    text = (await client.get("/metrics")).text
    assert "/no/such/path/" not in text
    assert 'route="<unmatched>"' in text
