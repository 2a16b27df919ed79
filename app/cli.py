"""Operator commands: ``python -m app.cli <command>``.

rotate-token-keys   re-encrypt every stored broker token with the newest TOKEN_ENCRYPTION_KEY
purge-oauth-states  delete OAuth states that expired more than a day ago
purge-idempotency-keys  delete expired Idempotency-Key records (the cleanup loop does it every 5 min)

This module only parses arguments, builds what a command needs from the settings and calls the
feature's service; it prints one JSON line and exits 1 when the work is incomplete.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import Awaitable, Callable

import app.models  # noqa: F401  (every model, so foreign keys resolve)
from app.brokers import service as brokers_service
from app.core import idempotency
from app.core.config import Settings, load_settings_or_exit
from app.core.crypto import TokenCipher
from app.core.db import Database, create_engine


async def rotate_token_keys(database: Database, settings: Settings) -> dict[str, int]:
    counts = await brokers_service.rotate_token_keys(
        database=database, cipher=TokenCipher(settings.token_encryption_keys)
    )
    return dataclasses.asdict(counts)


async def purge_oauth_states(database: Database, settings: Settings) -> dict[str, int]:
    return {"deleted": await brokers_service.purge_expired_states(database=database)}


async def purge_idempotency_keys(database: Database, settings: Settings) -> dict[str, int]:
    return {"deleted": await idempotency.purge_expired(database=database)}


COMMANDS: dict[str, Callable[[Database, Settings], Awaitable[dict[str, int]]]] = {
    "rotate-token-keys": rotate_token_keys,
    "purge-oauth-states": purge_oauth_states,
    "purge-idempotency-keys": purge_idempotency_keys,
}


async def _run(command: str, settings: Settings) -> dict[str, int]:
    database = Database(create_engine(settings, pool_size=1, max_overflow=0))
    try:
        return await COMMANDS[command](database, settings)
    finally:
        await database.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.cli", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=sorted(COMMANDS))
    args = parser.parse_args(argv)
    settings = load_settings_or_exit()
    result = asyncio.run(_run(args.command, settings))
    print(json.dumps({"command": args.command, **result}))
    return 1 if result.get("unreadable") or result.get("skipped_locked") else 0


if __name__ == "__main__":
    sys.exit(main())
