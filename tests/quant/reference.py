"""Plain, obviously-correct reference implementations used by the tests (slow, in memory)."""

from __future__ import annotations

import csv
from fractions import Fraction


def reference_backtest(path, fast=20, slow=50, commission=0.0, initial_cash=100000.0):
    """The contract's trading rules, one bar at a time, with exact (rational) moving averages."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = [row for row in csv.reader(fh) if row]
    rows = rows[1:]  # header
    closes: list[float] = []
    cash, shares = initial_cash, 0.0
    position = False  # long?
    target = False  # decided after the previous bar's close
    n_trades = 0
    curve = [initial_cash]
    for i, row in enumerate(rows):
        open_, close = float(row[1]), float(row[4])
        if target != position:  # the change decided after the previous close fills at this open
            if target:
                shares = cash / (open_ * (1 + commission))
                cash = 0.0
            else:
                cash = shares * open_ * (1 - commission)
                shares = 0.0
            position = target
            n_trades += 1
        closes.append(close)
        if i >= slow - 1:
            fast_mean = sum(Fraction(c) for c in closes[-fast:]) / fast
            slow_mean = sum(Fraction(c) for c in closes[-slow:]) / slow
            target = fast_mean > slow_mean
        else:
            target = False
        curve.append(cash + shares * close)
    peak, max_dd = curve[0], 0.0
    for e in curve:
        peak = max(peak, e)
        max_dd = max(max_dd, (peak - e) / peak)
    final = curve[-1]
    return {
        "final_equity": final,
        "total_return": final / initial_cash - 1.0,
        "n_trades": n_trades,
        "max_drawdown": max_dd,
        "bars": len(rows),
    }
