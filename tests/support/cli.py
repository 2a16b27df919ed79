"""``python -m app.cli …`` run the way an operator runs it: a child interpreter, settings from its
environment only (the test's own variables removed), one JSON line on stdout."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

from tests.support.servers import ROOT, server_env
from tests.support.settings import TEST_FERNET_KEY, TEST_JWT_SECRET, TEST_WEBHOOK_SECRET


def cli_env(database_url: str, **extra: str) -> dict[str, str]:
    values = {
        "DATABASE_URL": database_url,
        "FRONTEND_URL": "http://localhost:3000",
        "JWT_SECRET": TEST_JWT_SECRET,
        "STRIPE_WEBHOOK_SECRET": TEST_WEBHOOK_SECRET,
        "TOKEN_ENCRYPTION_KEY": TEST_FERNET_KEY,
        "APP_ENV": "test",
        "LOG_LEVEL": "WARNING",
    }
    return server_env(**{**values, **extra})


async def run_cli(database_url: str, *args: str, **extra: str) -> tuple[int, dict[str, Any] | None, str]:
    """(exit status, the JSON line parsed or None, stderr)."""
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli", *args],
        env=cli_env(database_url, **extra),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    out = json.loads(proc.stdout) if proc.stdout.strip() else None
    return proc.returncode, out, proc.stderr
