"""Diagnostics: CPU time per request of the app itself, without a server or a socket to the client.

Builds ``create_app`` (lifespan run, real PostgreSQL and Redis from TEST_DATABASE_URL/REDIS_URL), then
calls the ASGI app directly for PATH (default: the cached quote, with a bearer header) in 5 rounds of N
calls and prints the process CPU microseconds per call, min and median. CPU time rather than wall time:
on a shared box it moves much less with the neighbours' load. Used for A/B runs of a dependency version
(``PYTHONPATH=<dir holding the other version> python bench/diag_inprocess.py``), alternating the two.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asgi_lifespan import LifespanManager  # noqa: E402

from app.main import create_app  # noqa: E402
from tests.support.settings import make_settings  # noqa: E402


async def call(app: Any, path: str) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"authorization", b"Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig")],
        "client": ("127.0.0.1", 5555),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return int(sent[0]["status"])


async def main(path: str, n: int) -> None:
    import fastapi

    url = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    settings = make_settings(
        url.replace("postgresql://", "postgresql+asyncpg://", 1),
        redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/7"),
        market_data_provider="synthetic",
        rate_limit_default="100000000/minute",
        log_level="INFO",
    )
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        if (status := await call(manager.app, path)) != 200:
            raise SystemExit(f"{path} answered {status}")
        for _ in range(200):
            await call(manager.app, path)
        rounds = []
        for _ in range(5):
            t0 = time.process_time()
            for _ in range(n):
                await call(manager.app, path)
            rounds.append((time.process_time() - t0) / n * 1e6)
    print(
        f"fastapi {fastapi.__version__}: {path} CPU per call min {min(rounds):.0f} us, "
        f"median {statistics.median(rounds):.0f} us ({n} calls x 5)"
    )


if __name__ == "__main__":
    asyncio.run(
        main(
            sys.argv[1] if len(sys.argv) > 1 else "/v1/market-data/quotes/AAPL",
            int(sys.argv[2]) if len(sys.argv) > 2 else 2000,
        )
    )
