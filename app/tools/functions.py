"""The pure functions the sandbox runs: plain data in (the validated arguments, or bars as arrays),
plain data out (JSON-ready dicts of Python floats and ints).

Each takes one ``payload`` dict and returns one dict, so a worker process can receive and answer it
over a pipe (everything here pickles). They import the quant library and nothing of the web
application – no FastAPI, no database, no settings – which keeps a sandbox worker's imports small.

The payloads are produced by :mod:`app.tools.registry` from arguments that passed the strict
models in :mod:`app.tools.schemas`; the functions still check what they rely on (a worker must never
trust its pipe), raising ``ValueError``. A value that is well-formed but that the computation refuses
– a price outside the no-arbitrage bounds – raises :class:`ToolArgumentError`, which the caller
turns into a 422 naming ``arguments.<field>``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import numpy as np

from app.quant.backtest import _Strategy  # the engine run_backtest uses: identical results on arrays
from app.quant.greeks import GREEKS, bs_greeks
from app.quant.greeks import implied_vol as quant_implied_vol

__all__ = ["FUNCTIONS", "ToolArgumentError", "backtest_bars", "greeks", "implied_vol"]

OPTION_FIELDS: Final = ("option_type", "spot", "strike", "t_years", "rate", "dividend_yield")
BACKTEST_CHUNK_BARS: Final = 100_000  # the strategy steps over this many bars at a time (as run_backtest)


class ToolArgumentError(ValueError):
    """A schema-valid argument the computation refuses; ``field`` is its name inside ``arguments``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)  # both in args: the exception pickles across the worker pipe
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def _finite(name: str, value: float) -> float:
    out = float(value)
    if not math.isfinite(out):  # pragma: no cover - the bounds in app.tools.schemas rule it out
        raise ValueError(f"{name} is not finite ({out!r})")
    return out


def _option_row(option: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(option[name] for name in (*OPTION_FIELDS, "sigma"))


def greeks(payload: Mapping[str, Any]) -> dict[str, Any]:
    """``bs_greeks`` for one option (``{option_type, spot, …, sigma}`` → ``{price, delta, gamma, vega,
    theta, rho}``) or a batch (``{options: [...]}`` → ``{results: [{price, …}, …]}``, one
    vectorised call)."""
    options = payload.get("options")
    if options is None:
        single = bs_greeks(*_option_row(payload))
        return {key: _finite(key, single[key]) for key in GREEKS}
    if not isinstance(options, Sequence) or not options:
        raise ValueError("options must be a non-empty list")
    columns = list(zip(*(_option_row(o) for o in options), strict=True))
    kinds = np.asarray(columns[0], dtype="<U4")
    values = [np.asarray(col, dtype=np.float64) for col in columns[1:]]
    out = bs_greeks(kinds, *values)
    table = np.column_stack([np.asarray(out[key], dtype=np.float64) for key in GREEKS])
    if not np.isfinite(table).all():  # pragma: no cover - the bounds in app.tools.schemas rule it out
        raise ValueError("a result is not finite")
    return {"results": [dict(zip(GREEKS, row, strict=True)) for row in table.tolist()]}


def implied_vol(payload: Mapping[str, Any]) -> dict[str, float]:
    """``implied_vol`` for one option: ``{option_type, price, spot, strike, t_years, rate,
    dividend_yield}`` → ``{sigma}``; a price outside the no-arbitrage bounds is a
    :class:`ToolArgumentError` on ``price``."""
    try:
        sigma = quant_implied_vol(
            payload["option_type"],
            payload["price"],
            payload["spot"],
            payload["strike"],
            payload["t_years"],
            payload["rate"],
            payload["dividend_yield"],
        )
    except ValueError as exc:  # the scalar solver explains why no volatility reproduces the price
        field = "t_years" if "expired" in str(exc) else "price"
        raise ToolArgumentError(field, str(exc)) from None
    return {"sigma": _finite("sigma", sigma)}


def _int_param(payload: Mapping[str, Any], name: str) -> int:
    value = payload[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer")
    return int(value)


def _real_param(payload: Mapping[str, Any], name: str) -> float:
    value = payload[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number")
    return float(value)


def _prices(payload: Mapping[str, Any], name: str) -> np.ndarray:
    arr = np.asarray(payload[name], dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a flat list of prices")
    if arr.size and not (np.isfinite(arr).all() and (arr > 0).all()):
        raise ValueError(f"{name} prices must be finite numbers > 0")
    return arr


def backtest_bars(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The SMA-crossover backtest of ``run_backtest`` on bars given as arrays: ``{open: [...],
    close: [...], fast, slow, commission, initial_cash}`` (ascending time, one entry per bar) →
    ``{final_equity, total_return, n_trades, max_drawdown, bars}``.

    Same engine and rules as ``run_backtest`` on a CSV of the same bars, hence the same result; the
    parameter rules are the same too (``1 <= fast < slow``, ``0 <= commission < 1``,
    ``initial_cash > 0``)."""
    fast = _int_param(payload, "fast")
    slow = _int_param(payload, "slow")
    commission = _real_param(payload, "commission")
    initial_cash = _real_param(payload, "initial_cash")
    if fast < 1:
        raise ToolArgumentError("fast", "must be >= 1")
    if slow <= fast:
        raise ToolArgumentError("slow", "must be greater than fast")
    if not 0.0 <= commission < 1.0:
        raise ToolArgumentError("commission", "must satisfy 0 <= commission < 1")
    if not initial_cash > 0.0:
        raise ToolArgumentError("initial_cash", "must be > 0")
    opens = _prices(payload, "open")
    closes = _prices(payload, "close")
    if opens.shape != closes.shape:
        raise ValueError("open and close must have one entry per bar")
    strategy = _Strategy(fast, slow, commission, initial_cash)
    for lo in range(0, opens.shape[0], BACKTEST_CHUNK_BARS):
        hi = lo + BACKTEST_CHUNK_BARS
        strategy.step(opens[lo:hi], closes[lo:hi])
    return strategy.result()


#: The sandbox entry points by reference (``module:function``), as the registry names them.
FUNCTIONS: Final[dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]]] = {
    f"{__name__}:greeks": greeks,
    f"{__name__}:implied_vol": implied_vol,
    f"{__name__}:backtest_bars": backtest_bars,
}
