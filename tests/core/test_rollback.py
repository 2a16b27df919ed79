"""Rollback with data in place: every migration's downgrade works on a filled database and keeps what
it does not own.

One scratch database walks the migrations one revision at a time. On the way up each step is rolled
back and replayed before the revision's rows are written (tests/support/migration_data.py), and the
tables the step did not touch must come back row for row. At head every table must hold rows. Then
every downgrade runs, one step at a time, with all of that data present, down to base; and
``upgrade head`` must give the schema the models describe, which the app can write to again.
docs/rollback.md is the operator's side of the same story.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from dataclasses import dataclass

import asyncpg
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from app.alerts.repository import AlertRepository, enqueue_alert
from app.alerts.service import content_hash
from app.auth.repository import UserRepository
from app.billing.repository import BillingRepository, DeliveryLedger
from app.core.db import Database
from app.models import metadata
from tests.support import db as dbsupport
from tests.support import migration_data


@dataclass(frozen=True)
class Table:
    columns: tuple[tuple[str, ...], ...]  # name, type, nullability, default: what a step may change
    rows: tuple[str, ...]  # every row as JSON text, sorted


Snapshot = dict[str, Table]


def _revisions() -> list[str]:
    """Base to head; the chain must be linear for one-step rollbacks to mean anything."""
    script = ScriptDirectory.from_config(dbsupport.alembic_config("postgresql://unused/unused"))
    assert len(script.get_heads()) == 1, f"migrations have several heads: {script.get_heads()}"
    return [r.revision for r in reversed(list(script.walk_revisions()))]


async def _connect(url: str) -> asyncpg.Connection:
    # No statement cache: the schema changes under this connection between queries.
    return await asyncpg.connect(dbsupport.asyncpg_dsn(url), statement_cache_size=0)


_COLUMNS = """
SELECT c.relname AS table, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       coalesce(pg_get_expr(d.adbin, d.adrelid), '')
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
WHERE c.relkind = 'r' AND c.relname <> 'alembic_version'
ORDER BY 1, 2
"""


async def _snapshot(conn: asyncpg.Connection) -> Snapshot:
    """Every application table's columns and rows, in two queries."""
    columns: dict[str, list[tuple[str, ...]]] = {}
    for r in await conn.fetch(_COLUMNS):
        columns.setdefault(r["table"], []).append(tuple(str(v) for v in r.values()))
    rows: dict[str, list[str]] = {t: [] for t in columns}
    if columns:
        union = " UNION ALL ".join(
            f"SELECT '{t}' AS t, to_jsonb(x)::text AS r FROM \"{t}\" x" for t in columns
        )
        for r in await conn.fetch(f"{union} ORDER BY 1, 2"):
            rows[r["t"]].append(r["r"])
    return {t: Table(tuple(columns[t]), tuple(rows[t])) for t in columns}


def _untouched(newer: Snapshot, older: Snapshot) -> list[str]:
    """Tables that exist on both sides of a step with the same columns: the step did not touch them."""
    return [t for t in newer if t in older and newer[t].columns == older[t].columns]


def _assert_kept(expected: Snapshot, actual: Snapshot, tables: list[str], what: str) -> None:
    changed = [t for t in tables if expected[t].rows != actual[t].rows]
    assert not changed, f"{what} changed the rows of tables it does not touch: {changed}"


def _assert_all_filled(snapshot: Snapshot, where: str) -> None:
    empty = sorted(t for t, table in snapshot.items() if not table.rows)
    assert not empty, (
        f"{where}: no rows in {empty}; give each table its rows in tests/support/migration_data.py "
        "so its downgrade is tested with data"
    )


async def _upgrade(url: str, revision: str) -> None:
    await asyncio.to_thread(dbsupport.migrate, url, revision)


async def _downgrade(url: str, revision: str, *, step: str) -> None:
    try:
        await asyncio.to_thread(dbsupport.downgrade, url, revision)
    except Exception as exc:
        raise AssertionError(f"downgrade {step} failed with rows in place: {exc}") from exc


async def _models_match(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), metadata))
    finally:
        await engine.dispose()
    assert diff == [], f"models and migrations disagree after the rollback round trip: {diff}"


async def _app_writes(url: str) -> None:
    """The app's own repositories read the rows the seed wrote (tag ``again``) and write their own."""
    engine = create_async_engine(url)
    now = dt.datetime.now(dt.UTC)
    try:
        async with AsyncSession(engine, expire_on_commit=False) as session:
            users = UserRepository(session)
            seeded = await users.get_credentials("trader.again@example.com")
            assert seeded is not None
            speaking = await BillingRepository(session).subscription_for_user(
                user_id=seeded.user_id, speaking_first={"active", "trialing"}
            )
            assert speaking is not None and speaking[0] == "active", speaking

            user = await users.add(
                email="After.Rollback@Example.com",
                email_normalized="after.rollback@example.com",
                password_hash="$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
                display_name="After rollback",
            )
            billing = BillingRepository(session)
            assert await DeliveryLedger(Database(engine)).claim_and_pay(
                event_id="evt_after_rollback",
                type_="invoice.paid",
                created=now,
                invoice_id="in_after_rollback",
                customer_id="cus_after_rollback",
                amount_minor=2900,
                currency="usd",
                paid_at=now,
            ) == (True, True)
            await billing.lock_account("cus_after_rollback")
            await billing.link_user(customer_id="cus_after_rollback", user_id=user.id)
            applied = await billing.set_status_if_newer(
                customer_id="cus_after_rollback",
                subscription_id="sub_after_rollback",
                status="trialing",
                event_at=now,
                current_period_end=None,
            )
            assert applied == "applied"
            assert await billing.subscription_for_user(
                user_id=user.id, speaking_first={"active", "trialing"}
            ) == (
                "trialing",
                None,
            )
            await AlertRepository(session).set_webhook(
                user_id=user.id, webhook_id="1187310099", token_encrypted="gAAAAABn-token"
            )
            await session.commit()  # the enqueue runs on its own connection, as the route's does
            enqueued = await enqueue_alert(
                Database(engine),
                user_id=user.id,
                content="Back on head",
                content_hash=content_hash("Back on head"),
                alert_id=uuid.uuid4(),
            )
            assert enqueued is not None and enqueued.id is not None
    finally:
        await engine.dispose()


async def _assert_billing_folded(conn: asyncpg.Connection) -> None:
    """Below 0006 a customer has one status again: every seeded customer pays (an active subscription
    speaks for each), so none may show ``none`` after the fold, and each keeps an event time."""
    wrong = await conn.fetch(
        "SELECT stripe_customer_id, status, status_event_at FROM billing_accounts"
        " WHERE status <> 'active' OR status_event_at IS NULL"
    )
    assert not wrong, f"billing status lost by the downgrade of 0006: {[tuple(r) for r in wrong]}"


async def test_every_downgrade_works_with_data_in_place() -> None:
    revisions = _revisions()
    name, url = await dbsupport.create_database("tradedesk_rollback")
    conn = await _connect(url)
    try:
        # Up, one revision at a time: roll the step back and replay it, then write its rows.
        for i, revision in enumerate(revisions):
            previous = revisions[i - 1] if i else "base"
            await _upgrade(url, revision)
            upgraded = await _snapshot(conn)
            await _downgrade(url, previous, step=f"{revision} -> {previous}")
            downgraded = await _snapshot(conn)
            kept = _untouched(upgraded, downgraded)
            _assert_kept(upgraded, downgraded, kept, f"downgrade {revision} -> {previous}")
            await _upgrade(url, revision)
            _assert_kept(
                upgraded, await _snapshot(conn), kept, f"downgrade {revision} -> {previous} -> upgrade"
            )
            await migration_data.seed(conn, applied=revisions[: i + 1], tag=f"r{revision}")
            _assert_all_filled(await _snapshot(conn), f"after the rows of {revision}")

        # At head every table of the schema holds rows written by some schema version.
        head = await _snapshot(conn)
        models = {t.name for t in metadata.sorted_tables}
        assert set(head) == models, f"tables at head vs models: {sorted(set(head) ^ models)}"
        _assert_all_filled(head, "at head")

        # Down, one step at a time, with all of it in place.
        for i in range(len(revisions) - 1, -1, -1):
            revision, previous = revisions[i], (revisions[i - 1] if i else "base")
            before = await _snapshot(conn)
            await _downgrade(url, previous, step=f"{revision} -> {previous}")
            after = await _snapshot(conn)
            _assert_kept(before, after, _untouched(before, after), f"downgrade {revision} -> {previous}")
            _assert_all_filled(after, f"after the downgrade {revision} -> {previous}")
            if revision == "0006":
                await _assert_billing_folded(conn)
        assert await _snapshot(conn) == {}, "tables left at base"

        # And up again: the models' schema, writable by the app.
        await _upgrade(url, "head")
        await _models_match(url)
        await migration_data.seed(conn, applied=revisions, tag="again")
        await _app_writes(url)
        _assert_all_filled(await _snapshot(conn), "after upgrade head again")
    finally:
        await conn.close()
        await dbsupport.drop_database(name)
