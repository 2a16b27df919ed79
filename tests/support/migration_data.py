"""Rows as each schema version wrote them, for the rollback test (tests/core/test_rollback.py).

A downgrade that works on an empty database can still fail on a real one (a NOT NULL column added
without a default, a cast that some value refuses, a foreign key left pointing at a dropped row), and
a downgrade can lose data nobody meant it to lose. The rollback test therefore fills every table after
each revision with the rows the app would write at that revision, in plain SQL so a reader sees them.

``TABLES`` lists every table in insert order (parents first). Each table has one or more shapes: the
revision that gave the table its columns, and the INSERT written against those columns. A revision
that changes a table's columns adds a shape here; a revision that adds a table adds an entry. The test
fails, naming the table, when a table has no rows after its revision, so a table cannot be forgotten.

In the SQL, ``{tag}`` is the seed's tag (the revision it runs at, or another word: it keeps unique
values unique across seeds) and ``{user}`` the id of the user that seed created.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class Shape:
    since: str  # the revision whose upgrade gave the table these columns
    sql: str


_USER = "(SELECT id FROM users WHERE email_normalized = 'trader.{tag}@example.com')"
_ORDER = "(SELECT id FROM orders WHERE client_order_id = 'td-{tag}-1')"

TABLES: dict[str, tuple[Shape, ...]] = {
    "users": (
        Shape(
            "0001",
            "INSERT INTO users (email, email_normalized, password_hash, display_name, bio) VALUES"
            " ('Trader.{tag}@Example.com', 'trader.{tag}@example.com',"
            " '$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA', 'Trader {tag}',"
            " 'Swing trades large caps')",
        ),
    ),
    "stripe_events": (
        Shape(
            "0003",
            "INSERT INTO stripe_events (id, type, stripe_created_at) VALUES"
            " ('evt_{tag}_sub', 'customer.subscription.updated', now() - interval '2 hours'),"
            " ('evt_{tag}_inv', 'invoice.paid', now() - interval '1 hour')",
        ),
    ),
    "billing_accounts": (
        # 0003-0005: one subscription status per customer, on the account.
        Shape(
            "0003",
            "INSERT INTO billing_accounts (stripe_customer_id, user_id, status, status_event_at,"
            " current_period_end) VALUES"
            " ('cus_{tag}', {user}, 'active', now() - interval '2 hours', now() + interval '29 days')",
        ),
        # 0006: the status moved to billing_subscriptions.
        Shape(
            "0006",
            "INSERT INTO billing_accounts (stripe_customer_id, user_id) VALUES ('cus_{tag}', {user})",
        ),
    ),
    "payments": (
        Shape(
            "0003",
            "INSERT INTO payments (invoice_id, stripe_customer_id, amount_minor, currency, paid_at, event_id)"
            " VALUES ('in_{tag}', 'cus_{tag}', 2900, 'usd', now() - interval '1 hour', 'evt_{tag}_inv')",
        ),
    ),
    "oauth_states": (
        Shape(
            "0004",
            "INSERT INTO oauth_states (state_hash, user_id, provider, expires_at, used_at) VALUES"
            " (encode(sha256(convert_to('state-{tag}-1', 'UTF8')), 'hex'), {user}, 'alpaca',"
            "  now() + interval '10 minutes', NULL),"
            " (encode(sha256(convert_to('state-{tag}-2', 'UTF8')), 'hex'), {user}, 'alpaca',"
            "  now() - interval '1 minute', now() - interval '5 minutes')",
        ),
        # 0005: the state is bound to the browser that started the flow.
        Shape(
            "0005",
            "INSERT INTO oauth_states (state_hash, user_id, provider, expires_at, binding_hash) VALUES"
            " (encode(sha256(convert_to('state-{tag}-1', 'UTF8')), 'hex'), {user}, 'alpaca',"
            "  now() + interval '10 minutes', encode(sha256(convert_to('binding-{tag}', 'UTF8')), 'hex'))",
        ),
    ),
    "broker_connections": (
        Shape(
            "0004",
            "INSERT INTO broker_connections (user_id, provider, access_token_encrypted, scope) VALUES"
            " ({user}, 'alpaca', 'gAAAAABn-encrypted-access-token-{tag}', 'account:write trading')",
        ),
    ),
    "billing_subscriptions": (
        # One live subscription and an older one that ended; the live one speaks for the customer.
        Shape(
            "0006",
            "INSERT INTO billing_subscriptions (stripe_subscription_id, stripe_customer_id, status,"
            " status_event_at, current_period_end) VALUES"
            " ('sub_{tag}_a', 'cus_{tag}', 'active', now() - interval '2 hours', now() + interval '29 days'),"
            " ('sub_{tag}_b', 'cus_{tag}', 'canceled', now() - interval '30 minutes', NULL)",
        ),
    ),
    "idempotency_keys": (
        Shape(
            "0007",
            "INSERT INTO idempotency_keys (user_id, key, fingerprint, state, locked_at, claim_token,"
            " response_status, response_headers, response_body, expires_at) VALUES"
            " ({user}, 'order-{tag}-0001', encode(sha256(convert_to('request-{tag}-1', 'UTF8')), 'hex'),"
            "  'completed', NULL, NULL, 201, '{\"content-type\": \"application/json\"}',"
            "  convert_to('{\"status\": \"filled\"}', 'UTF8'), now() + interval '1 day'),"
            " ({user}, 'order-{tag}-0002', encode(sha256(convert_to('request-{tag}-2', 'UTF8')), 'hex'),"
            "  'in_flight', now(), gen_random_uuid(), NULL, NULL, NULL, now() + interval '1 day')",
        ),
    ),
    "paper_orders": (
        Shape(
            "0008",
            "INSERT INTO paper_orders (account, client_order_id, symbol, side, type, time_in_force, qty,"
            " limit_price, status, filled_qty, filled_avg_price, created_at, updated_at, filled_at) VALUES"
            " ('paper-{tag}', 'td-{tag}-1', 'AAPL', 'buy', 'limit', 'day', 10, 187.50, 'filled', 10, 187.42,"
            "  now() - interval '1 minute', now(), now()),"
            " ('paper-{tag}', 'td-{tag}-2', 'MSFT', 'sell', 'market', 'gtc', 2.5, NULL, 'new', 0, NULL,"
            "  now(), now(), NULL)",
        ),
    ),
    "orders": (
        Shape(
            "0009",
            "INSERT INTO orders (user_id, idempotency_key, idempotency_claim, client_order_id, provider,"
            " symbol, side, type, time_in_force, qty, limit_price, status, filled_qty, filled_avg_price,"
            " broker_order_id, broker_status, next_reconcile_at) VALUES"
            " ({user}, 'order-{tag}-0001', gen_random_uuid(), 'td-{tag}-1', 'paper', 'AAPL', 'buy', 'limit',"
            "  'day', 10, 187.50, 'filled', 10, 187.42, 'brk-{tag}-1', 'filled', NULL),"
            " ({user}, 'order-{tag}-0002', gen_random_uuid(), 'td-{tag}-2', 'paper', 'MSFT', 'sell',"
            "  'market', 'gtc', 2.5, NULL, 'pending_reconciliation', 0, NULL, NULL, NULL, now())",
        ),
    ),
    "order_events": (
        Shape(
            "0009",
            "INSERT INTO order_events (order_id, from_status, to_status, reason, detail, filled_qty)"
            " SELECT id, NULL, 'submitting', 'submitted', NULL, NULL FROM orders WHERE user_id = {user}"
            " UNION ALL SELECT id, 'submitting', 'filled', 'placed', NULL, 10 FROM orders"
            "  WHERE client_order_id = 'td-{tag}-1'"
            " UNION ALL SELECT id, 'submitting', 'pending_reconciliation', 'outcome_unknown',"
            "  'broker timed out', NULL FROM orders WHERE client_order_id = 'td-{tag}-2'",
        ),
    ),
    "discord_webhooks": (
        Shape(
            "0010",
            "INSERT INTO discord_webhooks (user_id, webhook_id, token_encrypted, rate_bucket, rate_limit,"
            " rate_remaining) VALUES ({user}, '11873100{tag}', 'gAAAAABn-encrypted-webhook-token-{tag}',"
            " 'bucket-{tag}', 5, 4)",
        ),
    ),
    "alerts": (
        Shape(
            "0010",
            "INSERT INTO alerts (id, user_id, content, content_hash, source, order_id, status, attempts,"
            " discord_message_id, sent_at) VALUES"
            " (gen_random_uuid(), {user}, 'Filled: buy 10 AAPL @ 187.42',"
            "  encode(sha256(convert_to('Filled: buy 10 AAPL @ 187.42', 'UTF8')), 'hex'), 'order_fill',"
            "  {order}, 'sent', 1, '12000000{tag}', now()),"
            " (gen_random_uuid(), {user}, 'AAPL crossed 190',"
            "  encode(sha256(convert_to('AAPL crossed 190', 'UTF8')), 'hex'), 'api', NULL, 'queued', 0,"
            "  NULL, NULL)",
        ),
    ),
    "alert_dedup": (
        Shape(
            "0010",
            "INSERT INTO alert_dedup (user_id, content_hash, alert_id, expires_at)"
            " SELECT user_id, content_hash, id, now() + interval '10 minutes' FROM alerts WHERE user_id = {user}",
        ),
    ),
    # The two tables below hold one row per key (scope, minute) shared by every user: written as the
    # dispatcher writes them, so a later seed updates the row an earlier one inserted.
    "alert_dispatch_pauses": (
        Shape(
            "0010",
            "INSERT INTO alert_dispatch_pauses (scope, paused_until, reason) VALUES"
            " ('global', now() + interval '30 seconds', 'global 429 from Discord')"
            " ON CONFLICT (scope) DO UPDATE SET paused_until = excluded.paused_until, reason = excluded.reason",
        ),
    ),
    "discord_error_counts": (
        Shape(
            "0010",
            "INSERT INTO discord_error_counts (minute, count) VALUES (date_trunc('minute', now()), 1)"
            " ON CONFLICT (minute) DO UPDATE SET count = discord_error_counts.count + 1",
        ),
    ),
    "tool_calls": (
        Shape(
            "0011",
            "INSERT INTO tool_calls (user_id, tool, arguments_digest, outcome, duration_ms, via) VALUES"
            " ({user}, 'greeks', encode(sha256(convert_to('greeks-{tag}', 'UTF8')), 'hex'), 'ok', 12, 'http'),"
            " ({user}, 'backtest', encode(sha256(convert_to('backtest-{tag}', 'UTF8')), 'hex'), 'timeout',"
            "  10000, 'mcp')",
        ),
    ),
    "backtest_jobs": (
        Shape(
            "0012",
            "INSERT INTO backtest_jobs (id, user_id, status, progress, params, host, file_name, file_bytes,"
            " rows, attempts, owner, lease_until, result, equity_png, error, started_at, finished_at) VALUES"
            " (gen_random_uuid(), {user}, 'done', 1,"
            '  \'{"fast": 10, "slow": 30, "commission": 0.001, "initial_cash": 10000}\', \'web-1\','
            "  'job-{tag}-1.csv', 52431, 1000, 1, NULL, NULL,"
            '  \'{"final_equity": 10512.3, "trades": 14, "max_drawdown": 0.041}\','
            "  decode('89504e470d0a1a0a', 'hex'), NULL, now() - interval '1 minute', now()),"
            " (gen_random_uuid(), {user}, 'running', 0.4,"
            '  \'{"fast": 5, "slow": 20, "commission": 0, "initial_cash": 5000}\', \'web-1\','
            "  'job-{tag}-2.csv', 1048576, 20000, 1, 'web-1:4242:abc123', now() + interval '30 seconds',"
            "  NULL, NULL, NULL, now(), NULL)",
        ),
    ),
}


def shape(table: str, applied: list[str]) -> Shape | None:
    """The table's shape at the revision ``applied[-1]`` (``applied``: base to current, in order)."""
    current = None
    for candidate in TABLES.get(table, ()):
        if candidate.since in applied:
            current = candidate
    return current


async def seed(conn: asyncpg.Connection, *, applied: list[str], tag: str) -> list[str]:
    """Write one seed's rows into every table that exists and has a shape; return the tables written."""
    existing = await tables(conn)
    written = []
    for table in TABLES:
        found = shape(table, applied) if table in existing else None
        if found is None:
            continue
        sql = found.sql.replace("{user}", _USER).replace("{order}", _ORDER).replace("{tag}", tag)
        try:
            await conn.execute(sql)
        except asyncpg.PostgresError as exc:
            raise AssertionError(f"seed of {table} (shape of {found.since}) at {applied[-1]}: {exc}") from exc
        written.append(table)
    return written


async def tables(conn: asyncpg.Connection) -> set[str]:
    """The application's tables in the database (Alembic's own bookkeeping left out)."""
    rows = await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
    )
    return {r["tablename"] for r in rows}
