"""/readyz follows the database for real: cut the connection, then restore it."""

from __future__ import annotations

from sqlalchemy.engine import make_url

from tests.support.tcpproxy import TcpProxy


async def test_readyz_503_when_database_unreachable_then_200_when_back(make_client, database_url: str) -> None:
    url = make_url(database_url)
    socket_dir = (url.query.get("host") or None) if url.host is None else None
    if isinstance(socket_dir, tuple):
        socket_dir = socket_dir[0]
    proxy = TcpProxy(
        url.host, url.port or 5432,
        upstream_socket=f"{socket_dir}/.s.PGSQL.{url.port or 5432}" if socket_dir else None,
    )
    await proxy.start()
    proxied = url.set(host="127.0.0.1", port=proxy.port, query={}).render_as_string(hide_password=False)
    client = await make_client(database_url=proxied)
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




async def test_dead_idle_connections_are_replaced_before_use(make_client, database_url: str) -> None:
    """A database restart kills pooled connections; the next request after they sat idle must not
    fail on one (app/core/db.py validates connections idle for over VALIDATE_IF_IDLE_SECONDS)."""
    import asyncio

    from app.core import db as core_db

    url = make_url(database_url)
    socket_dir = (url.query.get("host") or None) if url.host is None else None
    if isinstance(socket_dir, tuple):
        socket_dir = socket_dir[0]
    proxy = TcpProxy(url.host, url.port or 5432,
                     upstream_socket=f"{socket_dir}/.s.PGSQL.{url.port or 5432}" if socket_dir else None)
    await proxy.start()
    proxied = url.set(host="127.0.0.1", port=proxy.port, query={}).render_as_string(hide_password=False)
    client = await make_client(database_url=proxied)
    try:
        assert (await client.get("/readyz")).status_code == 200  # one pooled connection now exists
        await proxy.stop()  # severs it, as a database restart would
        await proxy.start()
        await asyncio.sleep(core_db.VALIDATE_IF_IDLE_SECONDS + 0.2)  # let it count as idle
        assert (await client.get("/readyz")).status_code == 200  # replaced, not used dead
    finally:
        await proxy.stop()
