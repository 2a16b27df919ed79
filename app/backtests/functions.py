"""What a backtest job runs inside the sandbox (``app/tools/sandbox.py``): checking an uploaded file, and
running the backtest on it with its equity-curve PNG.

Both run in worker processes under the job sandbox's memory and CPU caps, never in the web process. They
take the path of a file the server itself wrote into its spool directory (the user supplies the
contents, never a path) and return plain data. A malformed file raises ``CsvValidationError``, whose
line number the caller turns into a 422.
"""

from __future__ import annotations

import io
from typing import Any

from app.quant._csvbars import iter_batches
from app.quant.backtest import EquityDownsampler, run_backtest
from app.quant.backtest_cli import plot_equity
from app.tools.sandbox import report_progress

CHUNK_ROWS = 100_000
PNG_BUCKETS = 2000


def validate(payload: dict[str, Any]) -> dict[str, Any]:
    """Read the whole file once, as the backtest will (header, numbers, ascending time): ``{"rows": n}``."""
    rows = 0
    with open(payload["path"], "rb") as f:
        for batch, _consumed in iter_batches(f, int(payload.get("chunk_rows", CHUNK_ROWS))):
            rows += len(batch)
    return {"rows": rows}


def run(payload: dict[str, Any]) -> dict[str, Any]:
    """The backtest on the file, progress reported per chunk: ``{"result": {...}, "png": bytes}``."""
    params = payload["params"]
    sampler = EquityDownsampler(PNG_BUCKETS)
    result = run_backtest(
        payload["path"],
        fast=params["fast"],
        slow=params["slow"],
        commission=params["commission"],
        initial_cash=params["initial_cash"],
        chunk_rows=int(payload.get("chunk_rows", CHUNK_ROWS)),
        progress=report_progress,
        equity_callback=sampler,
    )
    bars, equity = sampler.points()
    png = io.BytesIO()
    plot_equity(png, bars, equity, float(params["initial_cash"]), f"SMA {params['fast']}/{params['slow']}")
    return {"result": result, "png": png.getvalue()}
