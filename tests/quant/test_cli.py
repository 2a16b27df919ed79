"""The command line, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image

from app.quant.backtest import run_backtest
from tests.quant.conftest import HEADER, random_bars

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.quant.backtest", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_json_output_and_png_plot(write_csv, tmp_path):
    path = write_csv(HEADER + "".join(random_bars(3000, 12)))
    png = tmp_path / "equity.png"
    proc = _run(
        str(path),
        "--fast",
        "5",
        "--slow",
        "21",
        "--commission",
        "0.001",
        "--initial-cash",
        "5000",
        "--chunk-rows",
        "500",
        "--json",
        "--plot",
        str(png),
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == run_backtest(path, 5, 21, 0.001, 5000.0)
    assert proc.stderr == ""  # no progress bar when stderr is not a terminal
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_table_output(write_csv):
    path = write_csv(HEADER + "".join(random_bars(200, 1)))
    proc = _run(str(path), "--fast", "3", "--slow", "9")
    assert proc.returncode == 0, proc.stderr
    result = run_backtest(path, 3, 9)
    assert "final equity" in proc.stdout and f"{result['bars']:,}" in proc.stdout
    assert f"{result['final_equity']:,.2f}" in proc.stdout


def test_errors_exit_non_zero_with_a_clear_message(write_csv, tmp_path):
    bad = write_csv(HEADER + "2024-01-01T00:00:00Z,1,1,1,1,1\n2024-01-01T00:01:00Z,1,x,1,1,1\n")
    proc = _run(str(bad))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == "error: line 3: high is not a number: 'x'"
    proc = _run(str(bad), "--fast", "9", "--slow", "3")
    assert proc.returncode == 2 and "slow must be greater than fast" in proc.stderr
    proc = _run(str(tmp_path / "missing.csv"))
    assert proc.returncode == 1 and "No such file" in proc.stderr
    proc = _run(str(bad), "--fast", "two")
    assert proc.returncode == 2 and "invalid int value" in proc.stderr


def test_quant_package_imports_nothing_from_the_web_application():
    code = (
        "import sys, app.quant.greeks, app.quant.backtest, app.quant;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'sqlalchemy', 'starlette', 'pydantic')"
        " or (m.startswith('app.') and not m.startswith('app.quant'))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
