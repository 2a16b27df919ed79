"""/readyz follows the database for real: cut the connection, then restore it."""

from __future__ import annotations

import asyncio

from sqlalchemy.engine import make_url

from tests.support.routes import router as support_router
from tests.support.tcpproxy import TcpProxy


async def _proxied(database_url: str) -> tuple[TcpProxy, str]:
    """A started loopback proxy in front of the test database (TCP or unix socket), and its URL."""
    url = make_url(database_url)
    socket_dir = (url.query.get("host") or None) if url.host is None else None
    if isinstance(socket_dir, tuple):
        socket_dir = socket_dir[0]
    proxy = TcpProxy(
        url.host,
        url.port or 5432,
        upstream_socket=f"{socket_dir}/.s.PGSQL.{url.port or 5432}" if socket_dir else None,
    )
    await proxy.start()
    return proxy, url.set(host="127.0.0.1", port=proxy.port, query={}).render_as_string(hide_password=False)


async def test_readyz_503_when_database_unreachable_then_200_when_back(
    make_client, database_url: str
) -> None:
    proxy, proxied = await _proxied(database_url)
    client = await make_client(database_url=proxied)
    client.app.state.readiness.ttl = 0.0  # type: ignore[attr-defined]  # follow the database, not the 1 s cache
    try:
        assert (await client.get("/readyz")).status_code == 200

        await proxy.stop()
        down = await client.get("/readyz")
        assert down.status_code == 503
        assert down.headers["content-type"].startswith("application/problem+json")
        assert int(down.headers["retry-after"]) >= 1
        assert (await client.get("/healthz")).status_code == 200  # the process keeps serving

        await proxy.start()  # same port
        assert (await client.get("/readyz")).status_code == 200
    finally:
        await proxy.stop()


async def test_dead_pooled_connections_are_replaced_before_use(make_client, database_url: str) -> None:
    """A database restart kills pooled connections; the next request must not fail on one (the
    pre-ping on checkout finds it dead and the pool connects again)."""
    proxy, proxied = await _proxied(database_url)
    client = await make_client(database_url=proxied, routers=[support_router])
    try:
        assert (await client.get("/v1/_test/db-sleep", params={"seconds": 0})).status_code == 200
        await proxy.stop()  # severs the pooled connection, as a database restart would
        await proxy.start()
        assert (await client.get("/v1/_test/db-sleep", params={"seconds": 0})).status_code == 200
    finally:
        await proxy.stop()


async def test_connection_lost_mid_request_is_503_not_500(make_client, database_url: str) -> None:
    proxy, proxied = await _proxied(database_url)
    client = await make_client(database_url=proxied, routers=[support_router])
    try:
        slow = asyncio.create_task(client.get("/v1/_test/db-sleep", params={"seconds": 3}))
        await _wait_until_running(database_url, "SELECT pg_sleep")  # the request's query is in flight
        await proxy.stop()
        r = await slow
        assert r.status_code == 503, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.headers["retry-after"] == "1"
        await proxy.start()
        assert (await client.get("/v1/_test/db-sleep", params={"seconds": 0})).status_code == 200
    finally:
        await proxy.stop()


async def _wait_until_running(database_url: str, query_prefix: str) -> None:
    """Poll pg_stat_activity (directly, not through the proxy) until a query is active; bounded."""
    import asyncpg

    from tests.support import db as dbsupport

    conn = await asyncpg.connect(dbsupport.asyncpg_dsn(database_url))
    try:
        async with asyncio.timeout(10):
            # Only this run's database: the server may be shared (other workers, other projects' tests).
            while not await conn.fetchval(  # noqa: ASYNC110 - polling another process's state
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = $2 AND state = 'active' AND query LIKE $1 || '%'",
                query_prefix,
                make_url(database_url).database,
            ):
                await asyncio.sleep(0.02)
    finally:
        await conn.close()
