"""The pyarrow reader candidate (bench/arrow_candidate.py, measured by bench_backtest_reader):
the figures in docs/quant.md only mean something if it computes run_backtest's answer and reports
the same line for the same error.  These tests hold it to that, and pin the semantic gaps the
decision names."""

from __future__ import annotations

import pytest

from app.quant.backtest import CsvValidationError, run_backtest
from bench.arrow_candidate import BLOCK_BYTES, run_backtest_arrow
from tests.quant.conftest import HEADER, random_bars


@pytest.mark.parametrize("fmt", ["%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S+00:00"])
def test_the_same_result_as_run_backtest_across_blocks(write_csv, fmt):
    # many pyarrow blocks: the state carried from block to block is exercised
    rows = 30_000
    path = write_csv(HEADER + "".join(random_bars(rows, 5, flat=0.3, fmt=fmt)))
    assert path.stat().st_size > 5 * BLOCK_BYTES
    want = run_backtest(path, 5, 17, 0.001)
    assert want["bars"] == rows
    assert run_backtest_arrow(path, 5, 17, 0.001) == want


def test_rows_pyarrow_refuses_but_the_grammar_accepts_fall_back_to_the_strict_parser(write_csv):
    # no zone (UTC by the contract) and a lower-case 't': pyarrow's timestamp parser refuses both
    text = (
        HEADER
        + "".join(random_bars(300, 8, fmt="%Y-%m-%d %H:%M:%S"))
        + "".join(random_bars(300, 9, fmt="2031-%m-%dt%H:%M:%SZ"))
    )
    path = write_csv(text)
    assert run_backtest_arrow(path, 3, 9) == run_backtest(path, 3, 9)


@pytest.mark.parametrize(
    ("bad_row", "reason"),
    [
        ("2030-01-01T00:00:00Z,1,1,abc,1,1", "low is not a number"),
        ("2030-01-01T00:00:00Z,1,1,1,nan,1", "close is not a finite number"),
        ("2030-01-01T00:00:00Z,1,1,1,inf,1", "close is not a finite number"),
        ("2030-01-01T00:00:00Z,-1,1,1,1,1", "open must be a finite number > 0"),
        ("2030-01-01T00:00:00Z,1,1,1,1", "expected 6 fields"),
        ("2000-01-01T00:00:00Z,1,1,1,1,1", "strictly ascending time"),
    ],
)
def test_an_error_is_reported_on_the_same_line_as_run_backtest(write_csv, bad_row, reason):
    good = random_bars(5000, 3)
    path = write_csv(HEADER + "".join(good[:4000]) + bad_row + "\n" + "".join(good[4000:]))
    with pytest.raises(CsvValidationError) as want:
        run_backtest(path, 3, 9)
    with pytest.raises(CsvValidationError) as got:
        run_backtest_arrow(path, 3, 9)
    assert got.value.line == want.value.line == 4002
    assert reason in str(got.value) and str(got.value) == str(want.value)


def test_a_bad_header_is_line_1(write_csv):
    path = write_csv("time,open,high,low,close,volume\n2030-01-01T00:00:00Z,1,1,1,1,1\n")
    with pytest.raises(CsvValidationError) as got:
        run_backtest_arrow(path)
    assert got.value.line == 1


def test_the_gap_pyarrow_accepts_an_hour_only_time_the_grammar_rejects(write_csv):
    """One reason the candidate is not a drop-in: closing this needs the timestamp text checked."""
    path = write_csv(HEADER + "2030-01-01T00Z,1,1,1,1,1\n2030-01-01T01Z,1,1,1,1,1\n")
    with pytest.raises(CsvValidationError, match="line 2"):
        run_backtest(path, 1, 2)
    assert run_backtest_arrow(path, 1, 2)["bars"] == 2
