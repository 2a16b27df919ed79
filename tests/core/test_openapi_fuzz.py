"""The OpenAPI document tells the truth (issue 15): Schemathesis fuzzes a real uvicorn process, on the test
PostgreSQL database, against the app's own /openapi.json, with every check (``--checks all``: undocumented
statuses and content types, schema-valid requests refused, schema-violating ones accepted, ``Allow`` on
405, missing required headers, ...), authenticated as a signed-up user, and finds nothing.

The server runs with the defaults except what a fuzzer needs to reach the API's logic: a
``RATE_LIMIT_DEFAULT`` and ``RATE_LIMIT_ORDERS`` high enough that a few thousand requests a minute from one
address and user are not all 429s (the limits stay on; the others keep their defaults), and the in-process OAuth
provider (``BROKER_OAUTH_PROVIDER=local``), so the broker-link routes are configured instead of answering
503. ``schemathesis.toml`` (at the root) holds the few per-operation settings, each with its reason.
The run is bounded by ``--max-examples`` (about a minute and a half here; ``--max-time`` would not
bound it but keep fuzzing until that time is spent), and the subprocess by a timeout.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.auth.helpers import signup_and_token
from tests.support.cli import cli_env
from tests.support.servers import ROOT, Servers

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 10  # per operation and phase
TIMEOUT_SECONDS = 300  # a backstop: the run takes about 90 s
FUZZ_ENV = {
    "RATE_LIMIT_DEFAULT": "100000/minute",
    "RATE_LIMIT_ORDERS": "100000/minute",  # else the coverage phase's header probes meet a 429 first
    "BROKER_OAUTH_PROVIDER": "local",
    "ALPACA_OAUTH_CLIENT_ID": "fuzz-client",
    "ALPACA_OAUTH_CLIENT_SECRET": "fuzz-secret",
    "ALPACA_OAUTH_REDIRECT_URI": "http://localhost:3000/broker/callback",
}


def schemathesis_command(base: str, token: str, report: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(ROOT / "schemathesis.toml"),
        "--no-color",
        "run",
        f"{base}/openapi.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {token}",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--report",
        "json",
        "--report-json-path",
        str(report),
    ]


async def test_schemathesis_finds_no_failure(database_url: str, tmp_path: Path) -> None:
    servers = Servers(cli_env(database_url, **FUZZ_ENV), tmp_path)
    try:
        with servers.diagnosed():
            server = await servers.start()
            _, token = await signup_and_token(server.http)
            report = tmp_path / "schemathesis.json"
            proc = await asyncio.to_thread(
                subprocess.run,
                schemathesis_command(server.base, token, report),
                capture_output=True,
                text=True,
                cwd=tmp_path,
                timeout=TIMEOUT_SECONDS,
            )
            output = proc.stdout[-20000:] + proc.stderr[-5000:]
            assert report.exists(), output
            result = json.loads(report.read_text())
            operations = result["operations"]
            assert result["failures"] == [] and result["errors"] == [], output
            assert result["test_cases"]["unique_failures"] == 0, output
            assert result["complete"] is True, output
            # Every documented operation was tested (none skipped or errored) and the run reached its checks.
            assert operations["tested"] == operations["selected"] == operations["total"] >= 30, operations
            assert operations["errored"] == 0, operations
            assert result["test_cases"]["generated"] > 30 * MAX_EXAMPLES, result["test_cases"]
            assert proc.returncode == 0, output
    finally:
        await servers.stop_all()
