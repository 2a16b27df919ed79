"""Helpers for the backtest-job tests: bar files of any size, multipart bodies (whole or streamed), polling a
job to its end, and the process-tree RSS of a server."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.support.servers import eventually

HEADER = b"timestamp,open,high,low,close,volume\n"
START = np.datetime64("2015-01-02T14:30:00", "s")


def bar_lines(n: int, *, seed: int = 7, start_row: int = 0) -> bytes:
    """``n`` data lines of a random walk, one bar a minute from ``START`` (row ``start_row`` onward)."""
    rng = np.random.default_rng(seed + start_row)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.001, n)))
    open_ = close * (1 + rng.normal(0, 0.0005, n))
    high = np.maximum(open_, close) * 1.0005
    low = np.minimum(open_, close) * 0.9995
    volume = rng.integers(0, 10_000, n)
    stamps = np.datetime_as_string(START + np.arange(start_row, start_row + n) * np.timedelta64(60, "s"))
    rows = [
        f"{t}Z,{o:.6f},{h:.6f},{lo:.6f},{c:.6f},{v}"
        for t, o, h, lo, c, v in zip(stamps, open_, high, low, close, volume, strict=True)
    ]
    return ("\n".join(rows) + "\n").encode()


def bars_csv(n: int, *, seed: int = 7) -> bytes:
    return HEADER + bar_lines(n, seed=seed)


def write_bars(path: Path, rows: int) -> Path:
    """A large bar file (``generated_rows``) written in chunks (never whole in memory)."""
    with path.open("wb") as f:
        for chunk in generated_rows(rows):
            f.write(chunk)
    return path


def form_fields(**params: Any) -> dict[str, str]:
    return {k: str(v) for k, v in params.items()}


class StreamedUpload:
    """A multipart body whose file part is produced chunk by chunk (nothing big in the client's memory)."""

    def __init__(self, chunks: Iterator[bytes], fields: dict[str, str] | None = None) -> None:
        self.boundary = f"tdtest{uuid.uuid4().hex}"
        self.chunks = chunks
        self.fields = fields or {}

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    async def body(self) -> AsyncIterator[bytes]:
        for name, value in self.fields.items():
            yield (
                f'--{self.boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
            ).encode()
        yield (
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="file"; filename="bars.csv"\r\n'
            "Content-Type: text/csv\r\n\r\n"
        ).encode()
        for chunk in self.chunks:
            yield chunk
        yield f"\r\n--{self.boundary}--\r\n".encode()


def generated_rows(rows: int, *, chunk: int = 200_000) -> Iterator[bytes]:
    """The lines of a large bar file, fast: one block of prices (a random walk) repeated under ever
    later timestamps."""
    rng = np.random.default_rng(11)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.001, chunk)))
    tails = [f"Z,{c:.6f},{c * 1.0005:.6f},{c * 0.9995:.6f},{c:.6f},100\n" for c in close.tolist()]
    yield HEADER
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        stamps = np.datetime_as_string(START + np.arange(start, start + n) * np.timedelta64(60, "s"))
        yield "".join([t + tail for t, tail in zip(stamps.tolist(), tails[:n], strict=True)]).encode()


async def upload(
    client: httpx.AsyncClient, auth: dict[str, str], data: bytes, **params: Any
) -> httpx.Response:
    return await client.post(
        "/v1/backtests",
        headers=auth,
        files={"file": ("bars.csv", data, "text/csv")},
        data=form_fields(**params),
    )


async def finished(
    client: httpx.AsyncClient, auth: dict[str, str], job_id: str, *, within: float = 60
) -> dict:
    async def probe() -> dict | None:
        r = await client.get(f"/v1/backtests/{job_id}", headers=auth)
        assert r.status_code == 200, r.text
        body = r.json()
        return body if body["status"] in ("done", "failed") else None

    return await eventually(probe, within=within, what=f"backtest {job_id} to finish")


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants (Linux /proc)."""
    total = 0
    stack = [pid]
    seen = set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total
