"""The suite's own isolation (``tests/conftest.py``): what the cleanup between tests leaves behind.

Every test starts from empty tables with every identity restarted; the cleanup does it with one
transaction of DELETEs and ``setval`` calls instead of ``TRUNCATE … RESTART IDENTITY CASCADE`` (the
same end state, a fraction of the time). This checks that end state against rows in a parent table, a
child table and rows holding identity values."""

from __future__ import annotations

import asyncpg

from app.models import metadata
from tests.conftest import _EMPTY_TABLES
from tests.support import db as dbsupport

IDENTITIES = [(t.name, c.name) for t in metadata.sorted_tables for c in t.columns if c.identity is not None]


async def test_the_cleanup_empties_every_table_and_restarts_every_identity(database_url: str) -> None:
    assert IDENTITIES, "no identity column left: the setval part of the cleanup has nothing to check"
    conn = await asyncpg.connect(dbsupport.asyncpg_dsn(database_url))
    try:
        user = await conn.fetchval(
            "INSERT INTO users (email, email_normalized, password_hash)"
            " VALUES ('a@example.com', 'a@example.com', 'x') RETURNING id"
        )
        await conn.execute(
            "INSERT INTO tool_calls (user_id, tool, arguments_digest, outcome, duration_ms, via)"
            " VALUES ($1, 'greeks', 'd', 'ok', 1, 'http')",
            user,
        )
        for table, column in IDENTITIES:
            await conn.fetchval("SELECT nextval(pg_get_serial_sequence($1, $2))", f'"{table}"', column)

        await conn.execute(_EMPTY_TABLES)

        for table in metadata.sorted_tables:
            assert await conn.fetchval(f'SELECT count(*) FROM "{table.name}"') == 0, table.name  # nosec B608
        for table, column in IDENTITIES:
            assert (
                await conn.fetchval("SELECT nextval(pg_get_serial_sequence($1, $2))", f'"{table}"', column)
                == 1
            ), (table, column)
    finally:
        await conn.close()
