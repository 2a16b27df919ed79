"""`make loadtest` holds a constant rate with wrk and bench/loadtest.lua (wrk alone is closed-loop: each
connection sends as soon as its answer arrives). Against a loopback server that answers at once, a run
at 200 requests/s for 3 s must send about 600 requests (closed-loop, the same 8 connections would send
thousands), spread over the run, and write the stats file bench/loadtest.py reads."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.outbound.fake_provider import FakeProvider, Reply

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    shutil.which("wrk") is None and not os.environ.get("CI"), reason="wrk (Debian package) is not installed"
)
async def test_the_load_script_holds_its_rate_and_reports(tmp_path: Path) -> None:
    fake = await FakeProvider().on(r"/v1/auth/me", Reply(200, json={"id": "u"})).start()
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("token-a\ntoken-b\n")
    stats = tmp_path / "stats.json"
    env = {
        **os.environ,
        "LT_ROUTE": "me",
        "LT_RATE": "200",
        "LT_TOKENS": str(tokens),
        "LT_STATS": str(stats),
        "WRK_THREADS": "1",
    }
    try:
        cmd = ["wrk", "-t1", "-c8", "-d3s", "-s", str(ROOT / "bench" / "loadtest.lua"), fake.url]
        proc = await asyncio.to_thread(
            subprocess.run, cmd, env=env, capture_output=True, text=True, timeout=60
        )
    finally:
        await fake.stop()
    assert proc.returncode == 0, proc.stderr
    data = json.loads(stats.read_text())
    seconds = data["duration_us"] / 1e6
    assert 540 <= data["requests"] <= 630, data  # 200/s x 3 s, not closed-loop
    assert abs(data["requests"] / seconds - 200) < 20, data
    assert data["status"] == {"200": data["requests"]}
    seen = fake.seen(r"/v1/auth/me")
    assert {r.headers["authorization"] for r in seen} == {"Bearer token-a", "Bearer token-b"}
    assert data["p50_us"] > 0 and data["p99_us"] >= data["p50_us"]
