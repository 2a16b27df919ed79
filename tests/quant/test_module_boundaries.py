"""Module boundaries of app.quant: what each import loads, and where the public names live.

The import checks run in a fresh interpreter each, so they do not depend on what other tests have
imported already.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _loaded_after(statement: str) -> set[str]:
    """Names in sys.modules (top-level packages, plus app.quant submodules) after ``statement``."""
    code = (
        "import json, sys\n"
        f"{statement}\n"
        "names = {m.split('.')[0] for m in sys.modules} | {m for m in sys.modules if m.startswith('app.quant')}\n"
        "print(json.dumps(sorted(names)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout))


def test_importing_the_backtest_library_loads_no_cli_progress_bar_or_plotting():
    loaded = _loaded_after("import app.quant.backtest")
    assert "app.quant.backtest" in loaded
    assert not loaded & {"tqdm", "matplotlib", "app.quant.backtest_cli"}


def test_quant_submodules_stay_lazy():
    # documented in docs/quant.md: the backtester does not pay for SciPy, the Greeks not for pandas
    assert "scipy" not in _loaded_after("import app.quant.backtest")
    loaded = _loaded_after("import app.quant.greeks")
    assert not loaded & {"pandas", "tqdm", "matplotlib", "app.quant.backtest"}
    loaded = _loaded_after("import app.quant")  # the package itself imports its submodules on first use
    assert "app.quant" in loaded
    assert not loaded & {"scipy", "pandas", "app.quant.greeks", "app.quant.backtest"}


def test_public_names_keep_their_import_paths():
    import app.quant
    import app.quant._black_scholes
    import app.quant._implied_vol
    import app.quant.backtest
    import app.quant.backtest_cli
    from app.quant import greeks
    from app.quant.greeks import GREEKS, bs_greeks, implied_vol

    assert greeks.__all__ == ["GREEKS", "bs_greeks", "implied_vol"]
    assert GREEKS == ("price", "delta", "gamma", "vega", "theta", "rho")
    # the package-level lazy names are the functions, also once every submodule has been imported
    assert app.quant.bs_greeks is bs_greeks is app.quant._black_scholes.bs_greeks
    assert app.quant.implied_vol is implied_vol is app.quant._implied_vol.implied_vol
    assert app.quant.run_backtest is app.quant.backtest.run_backtest
    assert app.quant.CsvValidationError is app.quant.backtest.CsvValidationError
    assert callable(app.quant.backtest.main)
    assert app.quant.backtest_cli.EquityDownsampler is app.quant.backtest.EquityDownsampler


@pytest.mark.parametrize("module", ["app.quant.backtest", "app.quant.backtest_cli"])
def test_command_line_help(module):
    proc = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m app.quant.backtest ")
    assert "--plot PNG" in proc.stdout and proc.stderr == ""
