"""The command line of the backtester: ``python -m app.quant.backtest FILE --fast 20 --slow 50 …``.

Why a module of its own: the command line needs argparse, a progress bar (tqdm) and plotting
(matplotlib), none of which the library needs.  Keeping them here means ``import app.quant.backtest``
(the library, used in worker processes by the web application) never loads them.
``app/quant/backtest.py`` hands its ``__main__`` over to :func:`main`, so the documented command
stays ``python -m app.quant.backtest``; ``python -m app.quant.backtest_cli`` works too.

Options: ``FILE [--fast N] [--slow N] [--commission C] [--initial-cash X] [--chunk-rows N]
[--plot PNG] [--json]``; exit status 0 on success, 2 for invalid parameters or an invalid file,
1 if the file cannot be read or the plot cannot be written (docs/quant.md, "Command line").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from app.quant.backtest import EquityDownsampler, run_backtest

__all__ = ["main", "plot_equity"]


def plot_equity(
    target: str | BinaryIO,
    bars: npt.NDArray[np.int64],
    equity: npt.NDArray[np.float64],
    initial_cash: float,
    title: str,
) -> None:
    """Draw the equity curve (``EquityDownsampler.points()``, after ``initial_cash``) as a PNG into
    ``target``, a path or a binary file; matplotlib is imported here, with the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
    try:
        x = np.concatenate(([-1], bars))
        y = np.concatenate(([initial_cash], equity))
        ax.plot(x, y, linewidth=0.8, color="tab:blue")
        ax.axhline(initial_cash, color="grey", linewidth=0.6, linestyle="--")
        ax.set_xlabel("bar")
        ax.set_ylabel("equity")
        ax.set_title(title)
        ax.grid(True, linewidth=0.3)
        fig.tight_layout()
        fig.savefig(target, format="png")
    finally:
        plt.close(fig)


def _format_table(result: dict[str, Any], params: dict[str, Any]) -> str:
    rows = [
        ("file", params["file"]),
        ("fast / slow", f"{params['fast']} / {params['slow']}"),
        ("commission", f"{params['commission']:g}"),
        ("initial cash", f"{params['initial_cash']:,.2f}"),
        ("bars", f"{result['bars']:,}"),
        ("trades", f"{result['n_trades']:,}"),
        ("final equity", f"{result['final_equity']:,.2f}"),
        ("total return", f"{result['total_return'] * 100:+.4f} %"),
        ("max drawdown", f"{result['max_drawdown'] * 100:.4f} %"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m app.quant.backtest",
        description="Backtest an SMA crossover (long when fast SMA > slow SMA) over an OHLCV CSV file "
        "with header timestamp,open,high,low,close,volume.",
    )
    parser.add_argument("file", help="CSV file of bars in ascending time")
    parser.add_argument("--fast", type=int, default=20, help="fast SMA window in bars (default 20)")
    parser.add_argument("--slow", type=int, default=50, help="slow SMA window in bars (default 50)")
    parser.add_argument(
        "--commission", type=float, default=0.0, help="proportional commission per fill (default 0)"
    )
    parser.add_argument("--initial-cash", type=float, default=100000.0, help="starting cash (default 100000)")
    parser.add_argument("--chunk-rows", type=int, default=100000, help="rows read per chunk (default 100000)")
    parser.add_argument("--plot", metavar="PNG", help="write the equity curve to this PNG file")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)

    bar = None
    progress: Callable[[float], None] | None = None
    if sys.stderr.isatty():
        from tqdm import tqdm  # only on a terminal (and never on importing app.quant.backtest)

        bar = tqdm(
            total=100,
            unit="%",
            file=sys.stderr,
            leave=False,
            bar_format="{l_bar}{bar}| {elapsed}<{remaining}",
        )
        tq = bar
        done = [0.0]

        def advance(frac: float) -> None:
            step = frac * 100 - done[0]
            if step > 0:
                tq.update(step)
                done[0] = frac * 100

        progress = advance

    sampler = EquityDownsampler(2000) if args.plot else None
    try:
        result = run_backtest(
            args.file,
            fast=args.fast,
            slow=args.slow,
            commission=args.commission,
            initial_cash=args.initial_cash,
            chunk_rows=args.chunk_rows,
            progress=progress,
            equity_callback=sampler,
        )
    except (ValueError, OSError) as exc:
        if bar is not None:
            bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    if bar is not None:
        bar.close()
    if sampler is not None:
        bars, equity = sampler.points()
        try:
            plot_equity(
                args.plot,
                bars,
                equity,
                args.initial_cash,
                f"{os.path.basename(args.file)}: SMA {args.fast}/{args.slow}",
            )
        except OSError as exc:
            print(f"error: cannot write {args.plot}: {exc}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(result))
    else:
        params = {
            "file": args.file,
            "fast": args.fast,
            "slow": args.slow,
            "commission": args.commission,
            "initial_cash": args.initial_cash,
        }
        print(_format_table(result, params))
        if args.plot:
            print(f"equity curve written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
