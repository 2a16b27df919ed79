"""Re-encrypting a column of stored secrets with the newest ``TOKEN_ENCRYPTION_KEY``, batch by batch.

Every feature that stores a secret with ``TokenCipher`` (broker OAuth tokens, Discord webhook tokens)
hands its column to ``rotate_column``; ``python -m app.cli rotate-token-keys`` runs it for each, after
which the old key can be removed from the configuration.

Each batch is one short transaction; a row locked by a concurrent writer is skipped (``FOR UPDATE SKIP
LOCKED``) and retried in a further pass, up to ``passes``. What is still skipped, or that no key opens,
is counted: the old key must then stay.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import InstrumentedAttribute

from app.core.crypto import InvalidToken, TokenCipher
from app.core.db import Database

ROTATION_BATCH = 200
ROTATION_PASSES = 5


@dataclass(slots=True)
class RotationCounts:
    rotated: int = 0
    skipped_locked: int = 0
    unreadable: int = 0

    def __add__(self, other: RotationCounts) -> RotationCounts:
        return RotationCounts(
            self.rotated + other.rotated,
            self.skipped_locked + other.skipped_locked,
            self.unreadable + other.unreadable,
        )


async def rotate_column(
    *,
    database: Database,
    cipher: TokenCipher,
    key: InstrumentedAttribute[Any],
    column: InstrumentedAttribute[str],
    batch: int = ROTATION_BATCH,
    passes: int = ROTATION_PASSES,
    pause_seconds: float = 1.0,
) -> RotationCounts:
    """Re-encrypt every value of ``column`` (rows ordered by their primary ``key``) with the first key."""
    counts = RotationCounts()
    for attempt in range(passes):
        counts = await _pass(
            database, cipher, key, column, batch
        )  # each pass re-encrypts every row it can lock
        if not counts.skipped_locked:
            break
        if attempt + 1 < passes:
            await asyncio.sleep(pause_seconds)  # let the concurrent writer finish before the next pass
    return counts


async def _pass(
    database: Database,
    cipher: TokenCipher,
    key: InstrumentedAttribute[Any],
    column: InstrumentedAttribute[str],
    batch: int,
) -> RotationCounts:
    counts = RotationCounts()
    table = key.class_
    after: Any = None
    while True:
        async with database.own_transaction() as session:
            page = select(key).order_by(key).limit(batch)
            if after is not None:
                page = page.where(key > after)
            ids: list[Any] = list((await session.execute(page)).scalars())
            if not ids:
                return counts
            for row_id in ids:
                locked = select(column).where(key == row_id).with_for_update(skip_locked=True)
                value = (await session.execute(locked)).scalar_one_or_none()
                if value is None:
                    counts.skipped_locked += 1
                    continue
                try:
                    rotated = cipher.rotate(value)
                except InvalidToken:
                    counts.unreadable += 1
                    continue
                await session.execute(update(table).where(key == row_id).values({column.key: rotated}))
                counts.rotated += 1
            after = ids[-1]
