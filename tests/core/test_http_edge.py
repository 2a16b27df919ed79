"""The HTTP edge: CORS, problem+json everywhere, body cap, transactions, pool exhaustion."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx

from tests.support import db as dbsupport
from tests.support.metrics import grew, scrape
from tests.support.problems import assert_problem
from tests.support.routes import router as support_router

ALLOWED = "http://localhost:3000"


async def test_preflight_from_frontend_origin_allowed(client: httpx.AsyncClient) -> None:
    r = await client.options(
        "/v1/orders",
        headers={
            "Origin": ALLOWED,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,idempotency-key",
        },
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ALLOWED
    assert "*" not in r.headers["access-control-allow-origin"]


async def test_allowed_preflight_is_unchanged(client: httpx.AsyncClient) -> None:
    r = await client.options(
        "/v1/orders",
        headers={
            "Origin": ALLOWED,
            "Access-Control-Request-Method": "DELETE",
            "Access-Control-Request-Headers": "X-Request-ID",
        },
    )
    assert r.status_code == 200 and r.text == "OK"
    assert r.headers["content-type"].startswith("text/plain")
    assert r.headers["access-control-allow-origin"] == ALLOWED
    assert r.headers["access-control-allow-credentials"] == "true"
    assert "DELETE" in r.headers["access-control-allow-methods"]
    assert "x-request-id" in r.headers["access-control-allow-headers"].lower()


async def test_refused_preflight_is_problem_json_naming_what_was_disallowed(
    client: httpx.AsyncClient,
) -> None:
    def preflight(origin: str, method: str = "POST", headers: str | None = None):
        h = {"Origin": origin, "Access-Control-Request-Method": method}
        if headers:
            h["Access-Control-Request-Headers"] = headers
        return client.options("/v1/orders", headers=h)

    evil = assert_problem(await preflight("https://evil.example"), 400)
    assert evil["type"].endswith("/cors-preflight-refused")
    assert evil["disallowed"] == ["origin"] and "origin" in evil["detail"]
    r = await preflight("https://evil.example")
    assert "access-control-allow-origin" not in r.headers

    header = await preflight(ALLOWED, headers="content-type, X-Evil-Header")
    body = assert_problem(header, 400)
    assert body["disallowed"] == ["headers"] and "headers" in body["detail"]

    method = assert_problem(await preflight(ALLOWED, method="TRACE"), 400)
    assert method["disallowed"] == ["method"] and "method" in method["detail"]

    everything = assert_problem(
        await preflight("https://evil.example", method="TRACE", headers="X-Evil"), 400
    )
    assert everything["disallowed"] == ["origin", "method", "headers"]


async def test_preflight_from_other_origin_gets_no_allow_origin(client: httpx.AsyncClient) -> None:
    r = await client.options(
        "/v1/orders", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in r.headers
    simple = await client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in simple.headers
    ok = await client.get("/healthz", headers={"Origin": ALLOWED})
    assert ok.headers["access-control-allow-origin"] == ALLOWED


async def test_problem_json_for_404_405_422_500(make_client) -> None:
    client = await make_client(routers=[support_router])
    assert_problem(await client.get("/v1/does-not-exist"), 404)
    body405 = assert_problem(await client.delete("/healthz"), 405)
    assert "DELETE" in body405["detail"]
    body422 = assert_problem(
        await client.post("/v1/_test/items", json={"name": "", "qty": "many", "extra": 1}), 422
    )
    fields = {e["field"] for e in body422["errors"]}
    assert {"name", "qty"} <= fields
    assert all(e["message"] for e in body422["errors"])
    malformed = assert_problem(
        await client.post(
            "/v1/_test/items", content=b"{not json", headers={"content-type": "application/json"}
        ),
        422,
    )
    assert malformed["errors"]
    body500 = assert_problem(await client.get("/v1/_test/boom"), 500)
    assert "SELECT" not in str(body500) and "Traceback" not in str(body500) and "secret" not in str(body500)


async def test_body_over_limit_is_413_declared_and_chunked(make_client) -> None:
    client = await make_client(routers=[support_router], max_body_bytes=2048)
    small = await client.post("/v1/_test/echo-size", json={"a": "x" * 100})
    assert small.status_code == 200
    big = b'{"a": "' + b"x" * 5000 + b'"}'
    assert_problem(
        await client.post("/v1/_test/echo-size", content=big, headers={"content-type": "application/json"}),
        413,
    )

    async def chunks():
        for _ in range(10):
            yield b"x" * 1000  # no Content-Length: Transfer-Encoding: chunked

    r = await client.post(
        "/v1/_test/echo-size", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_problem(r, 413)


async def test_session_rolls_back_on_error_and_commits_on_success(make_client, database_url: str) -> None:
    client = await make_client(routers=[support_router])
    assert (await client.post("/v1/_test/write-then-fail")).status_code == 500
    assert (await client.post("/v1/_test/write")).status_code == 200
    conn = await asyncpg.connect(dbsupport.asyncpg_dsn(database_url))
    try:
        emails = {r["email"] for r in await conn.fetch("SELECT email FROM users")}
    finally:
        await conn.close()
    assert emails == {"b@x.io"}


async def test_pool_exhaustion_answers_503_fast_never_500(make_client) -> None:
    client = await make_client(routers=[support_router], db_pool_size=1, db_max_overflow=0, db_pool_timeout=1)
    before = await scrape(client)

    async def one() -> tuple[httpx.Response, float]:
        start = time.perf_counter()
        r = await client.get("/v1/_test/db-sleep", params={"seconds": 0.3})
        return r, time.perf_counter() - start

    results = await asyncio.gather(*(one() for _ in range(20)))
    statuses = [r.status_code for r, _ in results]
    assert set(statuses) <= {200, 503}, statuses
    assert 200 in statuses and 503 in statuses
    for r, elapsed in results:
        assert elapsed < 2.5, elapsed
        if r.status_code == 503:
            assert_problem(r, 503)
            assert int(r.headers["retry-after"]) >= 1
    # Each 503 was a pool checkout that timed out, counted once.
    assert grew(before, await scrape(client), "db_pool_timeouts_total") == statuses.count(503)


async def test_database_errors_never_log_bound_values(make_client, capfd) -> None:
    client = await make_client(routers=[support_router], log_level="INFO")
    secret = "secret-bound-" + "value-4242"
    r = await client.get("/v1/_test/db-error", params={"value": secret})
    assert_problem(r, 500)
    out, err = capfd.readouterr()
    assert "unhandled exception" in err  # the failure itself is logged, with its request id
    assert r.headers["x-request-id"] in err
    assert secret not in err + out + r.text


async def test_failed_commit_is_reported_before_the_response(make_client, database_url: str) -> None:
    """The session dependency commits before the response is sent (Depends(scope="function")): a
    commit that fails — here a deferred constraint — answers 500, never a success that was not kept."""
    client = await make_client(routers=[support_router])
    conn = await asyncpg.connect(dbsupport.asyncpg_dsn(database_url))
    await conn.execute("""
        CREATE FUNCTION fail_at_commit() RETURNS trigger AS $$
        BEGIN RAISE EXCEPTION 'refused at commit'; END $$ LANGUAGE plpgsql;
        CREATE CONSTRAINT TRIGGER fail_at_commit AFTER INSERT ON users
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fail_at_commit();
    """)
    try:
        r = await client.post("/v1/_test/write")
        assert_problem(r, 500)
        assert await conn.fetch("SELECT 1 FROM users") == []
    finally:
        await conn.execute("DROP TRIGGER fail_at_commit ON users; DROP FUNCTION fail_at_commit();")
        await conn.close()
    assert (await client.post("/v1/_test/write")).status_code == 200
