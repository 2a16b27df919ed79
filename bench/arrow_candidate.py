"""The pyarrow candidate for ``run_backtest``'s reader (issue 13, item 7) — measured, not adopted.

``run_backtest_arrow`` is what ``app.quant.backtest.run_backtest`` would become if the hand-written
NumPy fast path in ``app/quant/_csvbars.py`` were retired: ``pyarrow.csv.open_csv`` streams the
file in blocks and converts the timestamps and prices; the strategy is the app's own
``_Strategy``; the app's strict reference parser (``csv`` + the ISO 8601 grammar, ``_parse_slow``)
is kept only for what pyarrow refuses, to find the line of the error — or to compute the result
when pyarrow refused a row the strict grammar accepts (a timestamp without a zone, ``t``/``z`` in
lower case).  ``bench/bench_backtest_reader.py`` measures it beside the raw pyarrow read and the
current reader; docs/quant.md records why it was not adopted.  Nothing in ``app/`` imports this.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from app.quant._csvbars import (
    COLUMNS,
    Batch,
    LastRow,
    _line_batches,
    _parse_slow,
    read_header,
)
from app.quant.backtest import _Strategy, check_params

ARROW_TYPES = {"timestamp": pa.timestamp("ns", tz="UTC"), **{c: pa.float64() for c in COLUMNS[1:]}}
# pyarrow's block: ~3,700 rows of the benchmark's file.  Tried on its 4 M rows: 256 KiB 103 MB
# peak RSS, 1 MiB 136–168 MB, 4 MiB 291 MB, with no clear gain in speed; each block goes straight to
# the strategy (gathering 100,000 rows first cost more time and memory than it saved in calls)
BLOCK_BYTES = 256 << 10
STEP_ROWS = 100_000  # the strategy-alone measurement's step, as run_backtest's chunk_rows


class _Refused(Exception):
    """pyarrow's batch broke a rule the strict grammar enforces (or pyarrow could not read it)."""


def arrow_batches(path: str | os.PathLike[str], *, block_bytes: int = 0, use_threads: bool = True) -> Any:
    """pyarrow's streaming reader over a bar file: typed columns, no nulls allowed."""
    return pcsv.open_csv(
        path,
        read_options=pcsv.ReadOptions(
            block_size=block_bytes or BLOCK_BYTES,
            use_threads=use_threads,
            column_names=list(COLUMNS),
            skip_rows=1,
        ),  # the header was checked by the strict rule (a BOM, any case)
        parse_options=pcsv.ParseOptions(newlines_in_values=False),
        convert_options=pcsv.ConvertOptions(
            column_types=ARROW_TYPES,
            null_values=[],
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )


def _view(column: Any, dtype: type) -> np.ndarray:
    """The column's values as a NumPy view of its data buffer (no nulls: null_values is empty).
    ``Array.to_numpy`` costs ~1.5 ms per call here, tz-aware timestamps ~4 ms: a third of the run."""
    return np.frombuffer(column.buffers()[1], dtype=dtype, count=len(column), offset=column.offset * 8)


def _fast_columns(path: str | os.PathLike[str]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(opens, closes) of every pyarrow block, with the strict rules checked vectorised: prices
    finite and > 0, volume finite and >= 0, time strictly ascending."""
    last_ns: int | None = None
    try:
        for batch in arrow_batches(path):
            if batch.num_rows == 0:
                continue
            ts, *cols = (_view(batch.column(j), np.int64 if j == 0 else np.float64) for j in range(6))
            for j, col in enumerate(cols):
                if not (col.min() >= 0.0 if j == 4 else col.min() > 0.0) or not col.max() < np.inf:
                    raise _Refused
            if (last_ns is not None and ts[0] <= last_ns) or not (ts[1:] > ts[:-1]).all():
                raise _Refused
            last_ns = int(ts[-1])
            yield cols[0], cols[3]
    except pa.ArrowInvalid:
        raise _Refused from None


def _strict_columns(
    path: str | os.PathLike[str], chunk_rows: int
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """The same columns from the strict reference parser alone (raises CsvValidationError)."""
    with open(path, "rb") as f:
        read_header(f)
        next_line = 2
        last: LastRow | None = None
        for buf, ends, _size in _line_batches(f, chunk_rows, next_line):
            arr = np.frombuffer(buf, np.uint8)
            starts = np.empty(ends.size, dtype=np.int64)
            starts[0] = 0
            starts[1:] = ends[:-1] + 1
            stop = ends - ((ends > starts) & (arr[np.maximum(ends - 1, 0)] == 13))
            lines = next_line + np.arange(ends.size, dtype=np.int64)
            keep = stop > starts
            starts, stop, lines = starts[keep], stop[keep], lines[keep]
            n = lines.size
            out = Batch(np.empty(n, np.int64), np.empty(n, np.int64), np.empty((n, 5)), lines)
            last = _parse_slow(buf, starts, stop, lines, out, slice(0, n), last)
            next_line += ends.size
            yield out.values[:, 0].copy(), out.values[:, 3].copy()


def run_backtest_arrow(
    csv_path: str | os.PathLike[str],
    fast: int = 20,
    slow: int = 50,
    commission: float = 0.0,
    initial_cash: float = 100000.0,
    chunk_rows: int = 100000,
) -> dict[str, Any]:
    """``run_backtest``'s result (and its line-numbered CsvValidationError) through pyarrow."""
    fast, slow, commission, initial_cash, chunk_rows = check_params(
        fast, slow, commission, initial_cash, chunk_rows
    )
    with open(csv_path, "rb") as f:
        read_header(f)  # the strict header rule, with its line-1 message
    strategy = _Strategy(fast, slow, commission, initial_cash)
    try:
        for opens, closes in _fast_columns(csv_path):
            strategy.step(opens, closes)
        return strategy.result()
    except _Refused:
        pass
    # pyarrow refused something: the strict parser, from the start, finds the line (or, if the
    # file is valid after all, gives the result)
    strategy = _Strategy(fast, slow, commission, initial_cash)
    for opens, closes in _strict_columns(csv_path, chunk_rows):
        strategy.step(opens, closes)
    return strategy.result()
