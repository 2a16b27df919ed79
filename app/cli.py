"""Operator commands: ``python -m app.cli <command>``.

rotate-token-keys   re-encrypt every stored secret (broker and Discord webhook tokens) with the newest
                    TOKEN_ENCRYPTION_KEY
purge-oauth-states  delete OAuth states that expired more than a day ago
purge-idempotency-keys  delete expired Idempotency-Key records (the cleanup loop does it every 5 min)
reconcile-now       one reconciler pass now: settle unknown-outcome orders, refresh open ones (the
                    app's loop does it every RECONCILE_INTERVAL_SECONDS); exits 1 if a lookup failed
alerts              the Discord alert queue: alerts by status, the oldest waiting, pauses, disabled
                    webhooks; with --retry-failed, failed alerts of enabled webhooks are queued again
audit-payments      --since 24h | 2026-12-01T00:00Z: Stripe webhook events, payments and subscription
                    changes recorded since then, and the rows that deserve a look (a payment without
                    its event, an event created in the future or over 3 days before it arrived);
                    exits 1 when there are any (read-only; --limit caps the listed rows, default 1000)

This module only parses arguments, builds what a command needs from the settings and calls the
feature's service; it prints one JSON line and exits 1 when the work is incomplete.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import app.models  # noqa: F401  (every model, so foreign keys resolve)
from app.alerts import service as alerts_service
from app.billing import service as billing_service
from app.brokers import service as brokers_service
from app.core import idempotency
from app.core.config import Settings, load_settings_or_exit
from app.core.crypto import TokenCipher
from app.core.db import Database
from app.core.http import Outbound
from app.core.redisconn import close_redis, connect_redis
from app.orders import service as orders_service
from app.providers.broker import build_broker
from app.providers.market_data import build_market_data


async def rotate_token_keys(
    database: Database, settings: Settings, args: argparse.Namespace
) -> dict[str, int]:
    cipher = TokenCipher(settings.token_encryption_keys)
    brokers = await brokers_service.rotate_token_keys(database=database, cipher=cipher)
    webhooks = await alerts_service.rotate_webhook_tokens(database=database, cipher=cipher)
    return {
        **dataclasses.asdict(brokers + webhooks),
        "broker_tokens": brokers.rotated,
        "discord_webhook_tokens": webhooks.rotated,
    }


async def purge_oauth_states(
    database: Database, settings: Settings, args: argparse.Namespace
) -> dict[str, int]:
    return {"deleted": await brokers_service.purge_expired_states(database=database)}


async def purge_idempotency_keys(
    database: Database, settings: Settings, args: argparse.Namespace
) -> dict[str, int]:
    return {"deleted": await idempotency.purge_expired(database=database)}


async def reconcile_now(database: Database, settings: Settings, args: argparse.Namespace) -> dict[str, int]:
    # The same broker, breaker (shared through Redis when set) and accounts as the app builds.
    redis = connect_redis(settings.redis_url.get_secret_value() if settings.redis_url else None)
    outbound = Outbound(settings, redis=redis)
    market_data = build_market_data(settings, outbound, redis)
    try:
        broker = build_broker(settings, outbound, database=database, market_data=market_data)
        report = await orders_service.reconcile(
            database=database,
            broker=broker,
            policy=orders_service.OrderPolicy.from_settings(settings, provider=broker.name),
            accounts=orders_service.broker_accounts(
                provider=broker.name, database=database, cipher=TokenCipher(settings.token_encryption_keys)
            ),
        )
    finally:
        await market_data.aclose()
        await outbound.aclose()
        await close_redis(redis)
    return dataclasses.asdict(report)


async def alerts(database: Database, settings: Settings, args: argparse.Namespace) -> dict[str, int]:
    retried = await alerts_service.retry_failed(database=database) if args.retry_failed else 0
    return {**await alerts_service.queue_summary(database=database), "retried": retried}


_RELATIVE = re.compile(r"^(\d{1,6})([mhd])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def parse_since(value: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """``24h``, ``90m``, ``7d`` (ago) or an ISO 8601 time (UTC when it has no offset)."""
    now = now or dt.datetime.now(dt.UTC)
    relative = _RELATIVE.match(value.strip())
    if relative:
        return now - dt.timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
    try:
        moment = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since: {value!r} is neither a duration (90m, 24h, 7d) nor an ISO 8601 time"
        ) from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    if moment > now:
        raise argparse.ArgumentTypeError(f"--since: {value!r} is in the future")
    return moment


async def audit_payments(database: Database, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    return await billing_service.audit(database=database, since=args.since, limit=args.limit)


COMMANDS: dict[str, Callable[[Database, Settings, argparse.Namespace], Awaitable[dict[str, Any]]]] = {
    "audit-payments": audit_payments,
    "rotate-token-keys": rotate_token_keys,
    "purge-oauth-states": purge_oauth_states,
    "purge-idempotency-keys": purge_idempotency_keys,
    "reconcile-now": reconcile_now,
    "alerts": alerts,
}


async def _run(command: str, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    # Small: one connection, a few more while the reconciler looks orders up side by side.
    database = Database.for_settings(settings, pool_size=1, max_overflow=8)
    try:
        return await COMMANDS[command](database, settings, args)
    finally:
        await database.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.cli", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument(
        "--retry-failed", action="store_true", help="alerts: queue failed alerts of enabled webhooks again"
    )
    parser.add_argument(
        "--since", type=parse_since, help="audit-payments (required): 90m, 24h, 7d or an ISO 8601 time"
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=1000,
        choices=range(1, 100_001),
        metavar="N",
        help="audit-payments: at most N rows of each kind listed (default 1000; totals are complete)",
    )
    args = parser.parse_args(argv)
    if args.command == "audit-payments" and args.since is None:
        parser.error("audit-payments needs --since (e.g. --since 24h)")
    settings = load_settings_or_exit()
    result = asyncio.run(_run(args.command, settings, args))
    print(json.dumps({"command": args.command, **result}))
    incomplete = result.get("unreadable") or result.get("skipped_locked")
    if args.command == "reconcile-now":
        incomplete = incomplete or result.get("failed")  # a lookup failed: those orders wait for a retry
    if args.command == "audit-payments":
        incomplete = result["suspicious"]  # rows an operator must look at
    return 1 if incomplete else 0


if __name__ == "__main__":
    sys.exit(main())
