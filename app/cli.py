"""Operator commands: ``python -m app.cli <command>``.

rotate-token-keys   re-encrypt every stored broker token with the newest TOKEN_ENCRYPTION_KEY
purge-oauth-states  delete OAuth states that expired more than a day ago
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import uuid

import app.models  # noqa: F401  (every model, so foreign keys resolve)
from app.brokers.repository import BrokerRepository
from app.core.config import Settings, load_settings_or_exit
from app.core.crypto import InvalidToken, TokenCipher
from app.core.db import create_engine, create_sessionmaker

BATCH = 200


PASSES = 5


async def rotate_token_keys(settings: Settings) -> dict[str, int]:
    """Re-encrypt every token with the first key, one short transaction per batch. Rows locked by a
    concurrent writer are skipped and retried in a further pass (up to PASSES); what is still
    skipped, or opens with no key, makes the command exit 1 — the old key must then stay."""
    counts = {"rotated": 0, "skipped_locked": 0, "unreadable": 0}
    for _ in range(PASSES):
        result = await _rotation_pass(settings)
        counts["rotated"] = result["rotated"]  # each pass re-encrypts every row it can lock
        counts["unreadable"] = result["unreadable"]
        counts["skipped_locked"] = result["skipped_locked"]
        if not result["skipped_locked"]:
            break
        await asyncio.sleep(1)
    return counts


async def _rotation_pass(settings: Settings) -> dict[str, int]:
    cipher = TokenCipher(settings.token_encryption_keys)
    engine = create_engine(settings, pool_size=1, max_overflow=0)
    sessionmaker = create_sessionmaker(engine)
    counts = {"rotated": 0, "skipped_locked": 0, "unreadable": 0}
    after: uuid.UUID | None = None
    try:
        while True:
            async with sessionmaker() as session, session.begin():
                repo = BrokerRepository(session)
                ids = await repo.connection_ids_after(after, BATCH)
                if not ids:
                    break
                for user_id in ids:
                    row = await repo.lock_connection(user_id)
                    if row is None:
                        counts["skipped_locked"] += 1
                        continue
                    try:
                        row.access_token_encrypted = cipher.rotate(row.access_token_encrypted)
                        counts["rotated"] += 1
                    except InvalidToken:
                        counts["unreadable"] += 1
                after = ids[-1]
    finally:
        await engine.dispose()
    return counts


async def purge_oauth_states(settings: Settings) -> dict[str, int]:
    engine = create_engine(settings, pool_size=1, max_overflow=0)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            deleted = await BrokerRepository(session).purge_states(
                older_than=dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
    finally:
        await engine.dispose()
    return {"deleted": deleted}


COMMANDS = {"rotate-token-keys": rotate_token_keys, "purge-oauth-states": purge_oauth_states}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.cli", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=sorted(COMMANDS))
    args = parser.parse_args(argv)
    settings = load_settings_or_exit()
    result = asyncio.run(COMMANDS[args.command](settings))
    print(json.dumps({"command": args.command, **result}))
    return 1 if result.get("unreadable") or result.get("skipped_locked") else 0


if __name__ == "__main__":
    sys.exit(main())
