"""Quant core: Black–Scholes–Merton Greeks and implied volatility, and a streaming SMA backtester.

Pure NumPy/SciPy/pandas; imports nothing from the web application.  See docs/quant.md.

The submodules are imported on first use, so ``app.quant.backtest`` does not pay for SciPy and
``app.quant.greeks`` does not pay for pandas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["CsvValidationError", "bs_greeks", "implied_vol", "run_backtest"]

if TYPE_CHECKING:  # pragma: no cover
    from app.quant.backtest import CsvValidationError, run_backtest
    from app.quant.greeks import bs_greeks, implied_vol


def __getattr__(name: str) -> Any:
    if name in ("bs_greeks", "implied_vol"):
        from app.quant import greeks

        return getattr(greeks, name)
    if name in ("run_backtest", "CsvValidationError"):
        from app.quant import backtest

        return getattr(backtest, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
