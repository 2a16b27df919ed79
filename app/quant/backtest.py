"""Streaming SMA-crossover backtest over an OHLCV CSV file, with flat memory.

``run_backtest(csv_path, fast=20, slow=50, commission=0.0, initial_cash=100000.0,
chunk_rows=100000, progress=None)`` → ``{final_equity, total_return, n_trades, max_drawdown, bars}``

Trading rules (binding, docs/quant.md): after bar i's close, fast/slow are the simple means of the
last ``fast``/``slow`` closes (defined from bar ``slow-1`` on); the target is fully invested long
when fast > slow, else flat.  A change of target fills at bar i+1's open (a change after the last
bar never trades) with fractional shares: a buy spends all cash, ``shares = cash / (open * (1 +
commission))``; a sell turns all shares into ``cash = shares * open * (1 - commission)``.  Equity
``cash + shares * close`` is marked at every close; ``max_drawdown`` is the largest peak-to-trough
fall of ``[initial_cash, equity_0, ..., equity_last]`` as a positive fraction; ``n_trades`` counts
fills; ``bars`` counts data rows.

The comparison fast > slow is decided *exactly* (as rational numbers, on the float closes): the
window sums are formed in multi-limb integer arithmetic, so ties are ties – a flat market never
trades on a rounding error – and the result does not depend on ``chunk_rows``.

The file is read ``chunk_rows`` rows at a time (see ``_csvbars``); between chunks only the last
``slow - 1`` closes, the position, cash, shares and the drawdown state are carried.

This is the library only: it imports neither argparse nor tqdm nor matplotlib.  The command line,
``python -m app.quant.backtest FILE --fast 20 --slow 50 [--commission C] [--initial-cash X]
[--chunk-rows N] [--plot equity.png] [--json]``, lives in :mod:`app.quant.backtest_cli`; running
this module as ``__main__`` hands over to it.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
from collections.abc import Callable
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from app.quant._csvbars import CsvValidationError, iter_batches

__all__ = ["CsvValidationError", "EquityDownsampler", "run_backtest", "main"]

FloatArray: TypeAlias = npt.NDArray[np.float64]
BoolArray: TypeAlias = npt.NDArray[np.bool_]
IntArray: TypeAlias = npt.NDArray[np.int64]
#: ``equity_callback(first_bar, equity)``: one chunk's close-marked equity, bars ``first_bar, …``.
EquityCallback: TypeAlias = Callable[[int, FloatArray], None]


# --------------------------------------------------------------------------------------------------
# exact SMA comparison


def _limb_split(ext: FloatArray, bits: int, nlimbs: int, exp0: int) -> list[IntArray]:
    """Exact base-2**bits digits (low first) of the integers ext / 2**exp0."""
    rest = np.ldexp(ext, -exp0)  # exact: a power-of-two scaling of integers below 2**1023
    limbs = []
    for k in range(nlimbs - 1, -1, -1):
        q = np.floor(np.ldexp(rest, -bits * k))
        rest = rest - np.ldexp(q, bits * k)  # exact
        limbs.append(q.astype(np.int64))
    return limbs[::-1]


def _fast_above_slow(ext: FloatArray, nf: int, ns: int, j0: int) -> BoolArray:
    """For every window end j in [j0, len(ext)): is mean(last nf) > mean(last ns), exactly?

    Equivalent to ns * S_f - nf * S_s > 0 for the window sums S.  Every double is an integer
    multiple of 2**E with E = (smallest binary exponent) - 53, so the closes are split into exact
    int64 limbs; prefix sums, window sums and the combination are exact integer arithmetic.
    """
    n = ext.shape[0]
    m = n - j0
    if m <= 0:
        return np.zeros(0, dtype=bool)
    exps = np.frexp(ext)[1]
    e_min = int(exps.min())
    spread = int(exps.max()) - e_min
    exp0 = e_min - 53
    total_bits = 53 + spread
    # limb size: keep prefix sums and ns*S_f - nf*S_s (plus carries) inside int64
    bits = min(40, 62 - int(n + 1).bit_length(), 60 - int(2 * ns * nf).bit_length())
    if bits < 8 or total_bits > 1000:
        return _fast_above_slow_objects(ext, nf, ns, j0)
    nlimbs = -(-total_bits // bits)
    hi = slice(j0 + 1, n + 1)
    lo_f = slice(j0 + 1 - nf, n + 1 - nf)
    lo_s = slice(j0 + 1 - ns, n + 1 - ns)
    d: list[IntArray] = []
    for limb in _limb_split(ext, bits, nlimbs, exp0):
        p = np.empty(n + 1, dtype=np.int64)
        p[0] = 0
        np.cumsum(limb, out=p[1:])
        d.append(ns * (p[hi] - p[lo_f]) - nf * (p[hi] - p[lo_s]))
    # normalise: lower limbs into [0, 2**bits), carries upwards; then the sign is the top's sign
    # unless the top is 0 (then positive iff any lower limb is nonzero)
    any_low = np.zeros(m, dtype=bool)
    for k in range(nlimbs - 1):
        carry = d[k] >> bits
        d[k] = d[k] - (carry << bits)
        d[k + 1] = d[k + 1] + carry
        any_low |= d[k] != 0
    top = d[-1]
    above: BoolArray = (top > 0) | ((top == 0) & any_low)
    return above


def _fast_above_slow_objects(ext: FloatArray, nf: int, ns: int, j0: int) -> BoolArray:
    """Same as _fast_above_slow with Python integers (for absurd price ranges or windows)."""
    mant, exps = np.frexp(ext)
    e_min = int(exps.min())
    ints = [int(mm * 2.0**53) << (int(e) - e_min) for mm, e in zip(mant.tolist(), exps.tolist(), strict=True)]
    p = [0]
    for v in ints:
        p.append(p[-1] + v)
    out = np.empty(len(ext) - j0, dtype=bool)
    for k, j in enumerate(range(j0, len(ext))):
        sf = p[j + 1] - p[j + 1 - nf]
        ss = p[j + 1] - p[j + 1 - ns]
        out[k] = ns * sf - nf * ss > 0
    return out


# --------------------------------------------------------------------------------------------------
# strategy state


class _Strategy:
    def __init__(self, fast: int, slow: int, commission: float, initial_cash: float) -> None:
        self.nf = fast
        self.ns = slow
        self.buy_factor = 1.0 + commission
        self.sell_factor = 1.0 - commission
        self.initial_cash = initial_cash
        self.tail: FloatArray = np.empty(0)  # the last slow-1 closes
        self.bars = 0
        self.target = False  # target after the last bar seen (fills at the next open)
        self.held = False  # position held during the last bar
        self.cash = initial_cash
        self.shares = 0.0
        self.peak = initial_cash
        self.max_dd = 0.0
        self.n_trades = 0
        self.equity = initial_cash

    def step(self, opens: FloatArray, closes: FloatArray) -> FloatArray:
        m = closes.shape[0]
        if m == 0:
            return np.empty(0)
        ns = self.ns
        ext = np.concatenate((self.tail, closes))
        t = self.tail.shape[0]
        target = np.zeros(m, dtype=bool)
        j0 = max(t, ns - 1)  # the first window end (in ext) with a full slow window
        if j0 < ext.shape[0]:
            target[j0 - t :] = _fast_above_slow(ext, self.nf, ns, j0)
        # position during bar i = target after bar i-1; it changes (a fill at bar i's open) when
        # it differs from the position during bar i-1
        held = np.empty(m, dtype=bool)
        held[0] = self.target
        held[1:] = target[:-1]
        prev = np.empty(m, dtype=bool)
        prev[0] = self.held
        prev[1:] = held[:-1]
        fill = held != prev
        fills = np.flatnonzero(fill)
        cash, shares = self.cash, self.shares
        seg_cash = [cash]
        seg_shares = [shares]
        buy, sell = self.buy_factor, self.sell_factor
        for o, b in zip(opens[fills].tolist(), held[fills].tolist(), strict=True):
            if b:
                shares = cash / (o * buy)
                cash = 0.0
            else:
                cash = shares * o * sell
                shares = 0.0
            seg_cash.append(cash)
            seg_shares.append(shares)
        self.n_trades += fills.shape[0]
        seg = np.cumsum(fill)
        # equity = cash + shares * close: exactly shares * close when long (cash is 0.0) and
        # exactly cash when flat (shares is 0.0)
        equity: FloatArray = np.where(held, np.asarray(seg_shares)[seg] * closes, np.asarray(seg_cash)[seg])
        peaks = np.maximum.accumulate(equity)
        np.maximum(peaks, self.peak, out=peaks)
        dd = (peaks - equity) / peaks
        self.max_dd = max(self.max_dd, float(dd.max()))
        self.peak = float(peaks[-1])
        self.cash, self.shares = cash, shares
        self.target = bool(target[-1])
        self.held = bool(held[-1])
        self.equity = float(equity[-1])
        self.bars += m
        self.tail = ext[-(ns - 1) :].copy() if ns > 1 else np.empty(0)
        return equity

    def result(self) -> dict[str, Any]:
        return {
            "final_equity": float(self.equity),
            "total_return": float(self.equity / self.initial_cash - 1.0),
            "n_trades": int(self.n_trades),
            "max_drawdown": float(self.max_dd),
            "bars": int(self.bars),
        }


# --------------------------------------------------------------------------------------------------
# public API


def _int_param(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _real_param(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def check_params(
    fast: Any, slow: Any, commission: Any, initial_cash: Any, chunk_rows: Any
) -> tuple[int, int, float, float, int]:
    """``run_backtest``'s parameters, validated and normalised; ValueError naming the bad one."""
    fast = _int_param("fast", fast)
    slow = _int_param("slow", slow)
    chunk_rows = _int_param("chunk_rows", chunk_rows)
    commission = _real_param("commission", commission)
    initial_cash = _real_param("initial_cash", initial_cash)
    if fast < 1:
        raise ValueError(f"fast must be >= 1, got {fast}")
    if slow <= fast:
        raise ValueError(f"slow must be greater than fast, got fast={fast}, slow={slow}")
    if not 0.0 <= commission < 1.0:
        raise ValueError(f"commission must satisfy 0 <= commission < 1, got {commission!r}")
    if not initial_cash > 0.0:
        raise ValueError(f"initial_cash must be > 0, got {initial_cash!r}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    return fast, slow, commission, initial_cash, chunk_rows


def run_backtest(
    csv_path: str | os.PathLike[str],
    fast: int = 20,
    slow: int = 50,
    commission: float = 0.0,
    initial_cash: float = 100000.0,
    chunk_rows: int = 100000,
    progress: Callable[[float], object] | None = None,
    *,
    equity_callback: EquityCallback | None = None,
) -> dict[str, Any]:
    """Run the SMA-crossover strategy over a bar file; see the module docstring for the rules.

    ``progress(fraction)`` is called after every chunk with the fraction of the file read (0..1,
    non-decreasing) and finally with exactly 1.0.  ``equity_callback(first_bar, equity)`` (keyword
    only, optional) receives every chunk's close-marked equity (a float64 array; bar indices
    ``first_bar, first_bar + 1, ...``) – e.g. an :class:`EquityDownsampler`.

    Raises ``ValueError`` for invalid parameters (``1 <= fast < slow`` integers, ``0 <= commission <
    1``, ``initial_cash > 0``, ``chunk_rows >= 1``) and :class:`CsvValidationError` (a
    ``ValueError`` with the line number) for a malformed file; ``OSError`` if it cannot be read.
    The result holds plain Python floats and ints (JSON-serialisable).
    """
    fast, slow, commission, initial_cash, chunk_rows = check_params(
        fast, slow, commission, initial_cash, chunk_rows
    )
    if progress is not None and not callable(progress):
        raise ValueError("progress must be callable or None")

    strategy = _Strategy(fast, slow, commission, initial_cash)
    with open(csv_path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        reported = 0.0
        for batch, consumed in iter_batches(f, chunk_rows):
            if len(batch):
                first_bar = strategy.bars
                equity = strategy.step(batch.values[:, 0], batch.values[:, 3])
                if equity_callback is not None:
                    equity_callback(first_bar, equity)
            if progress is not None and size > 0:
                frac = min(consumed / size, 1.0)
                if frac > reported and frac < 1.0:
                    reported = frac
                    progress(frac)
    if progress is not None:
        progress(1.0)
    return strategy.result()


class EquityDownsampler:
    """Keeps a bounded, shape-preserving summary of an equity curve streamed in chunks.

    Bars are grouped in buckets of ``width`` bars; each bucket keeps its first, minimum, maximum and
    last point (so peaks and troughs survive).  When the number of buckets would exceed
    ``max_buckets`` the width doubles and neighbouring buckets merge – memory is O(max_buckets)
    whatever the length of the curve.
    """

    def __init__(self, max_buckets: int = 2000) -> None:
        if max_buckets < 2:
            raise ValueError("max_buckets must be >= 2")
        self.max_buckets = max_buckets
        self.width = 1
        # per bucket: index, then (bar, value) of first, min, max, last
        self._b: dict[int, list[float]] = {}

    def __call__(self, first_bar: int, equity: FloatArray) -> None:
        n = equity.shape[0]
        if n == 0:
            return
        bars = np.arange(first_bar, first_bar + n)
        while True:
            ids = bars // self.width
            lo_id, hi_id = int(ids[0]), int(ids[-1])
            count = len(self._b.keys() | {lo_id}) + (hi_id - lo_id)
            if count <= self.max_buckets:
                break
            self._merge()
        cuts = np.flatnonzero(np.diff(ids)) + 1
        starts = np.concatenate(([0], cuts))
        stops = np.concatenate((cuts, [n]))
        mins = np.minimum.reduceat(equity, starts)
        maxs = np.maximum.reduceat(equity, starts)
        for k, (a, b) in enumerate(zip(starts.tolist(), stops.tolist(), strict=True)):
            seg = equity[a:b]
            rec = [
                bars[a],
                equity[a],
                bars[a + int(np.argmin(seg))],
                mins[k],
                bars[a + int(np.argmax(seg))],
                maxs[k],
                bars[b - 1],
                equity[b - 1],
            ]
            self._add(int(ids[a]), rec)

    def _add(self, key: int, rec: list[float]) -> None:
        old = self._b.get(key)
        if old is None:
            self._b[key] = rec
            return
        first = old[0:2] if old[0] <= rec[0] else rec[0:2]
        last = old[6:8] if old[6] >= rec[6] else rec[6:8]
        mn = old[2:4] if old[3] <= rec[3] else rec[2:4]
        mx = old[4:6] if old[5] >= rec[5] else rec[4:6]
        self._b[key] = [*first, *mn, *mx, *last]

    def _merge(self) -> None:
        self.width *= 2
        old = self._b
        self._b = {}
        for key in sorted(old):
            self._add(key // 2, old[key])

    def points(self) -> tuple[IntArray, FloatArray]:
        """(bar indices, equity) of the kept points, in bar order, duplicates removed."""
        pts: dict[int, float] = {}
        for rec in self._b.values():
            for k in range(0, 8, 2):
                pts[int(rec[k])] = float(rec[k + 1])
        bars = np.array(sorted(pts), dtype=np.int64)
        return bars, np.array([pts[b] for b in bars.tolist()], dtype=np.float64)


def main(argv: list[str] | None = None) -> int:
    """The command line (:func:`app.quant.backtest_cli.main`), imported only when called."""
    from app.quant.backtest_cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    from app.quant.backtest_cli import main as _cli_main

    sys.exit(_cli_main())
