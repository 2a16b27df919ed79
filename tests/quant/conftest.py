"""Fixtures for the quant tests: small bar files written on demand."""

from __future__ import annotations

import datetime as dt
import math
import random
from pathlib import Path

import pytest

HEADER = "timestamp,open,high,low,close,volume\n"


def random_bars(n: int, seed: int, *, flat: float = 0.2, fmt: str = "%Y-%m-%dT%H:%M:%SZ") -> list[str]:
    """Random-walk minute bars rounded to cents; ``flat`` is the chance a close repeats (ties)."""
    rnd = random.Random(seed)
    price = 100.0
    t = dt.datetime(2024, 1, 2, 9, 30, tzinfo=dt.UTC)
    rows = []
    for _ in range(n):
        close = price if rnd.random() < flat else round(price * math.exp(rnd.gauss(0, 0.01)), 2)
        open_ = round(price * (1 + rnd.gauss(0, 0.002)), 2)
        close, open_ = max(close, 0.01), max(open_, 0.01)
        t += dt.timedelta(seconds=rnd.choice([60, 60, 60, 1, 3600]))
        rows.append(
            f"{t.strftime(fmt)},{open_},{max(open_, close)},{min(open_, close)},{close},{rnd.randint(0, 1000)}\n"
        )
        price = close
    return rows


@pytest.fixture
def write_csv(tmp_path: Path):
    counter = iter(range(10**9))

    def write(text: str | bytes, name: str | None = None) -> Path:
        path = tmp_path / (name or f"bars{next(counter)}.csv")
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        return path

    return write
