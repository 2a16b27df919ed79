"""run_backtest: the contract's rules against a plain reference, chunk invariance, validation."""

from __future__ import annotations

import datetime as dt
import json
import math
import random
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.quant._csvbars import _gather_rows, _timestamps_fast, parse_timestamp
from app.quant.backtest import CsvValidationError, EquityDownsampler, _fast_above_slow, run_backtest
from tests.quant.conftest import HEADER, random_bars
from tests.quant.reference import reference_backtest

KEYS = {"final_equity", "total_return", "n_trades", "max_drawdown", "bars"}


# --------------------------------------------------------------------------------------------------
# the trading rules


def _case(seed: int):
    rnd = random.Random(seed)
    n = rnd.choice([0, 1, 5, 30, 120, 400])
    fast = rnd.randint(1, 12)
    slow = fast + rnd.randint(1, 30)
    commission = rnd.choice([0.0, 0.0005, 0.01, 0.2])
    flat = rnd.choice([0.0, 0.3, 0.9])
    fmt = rnd.choice(["%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S+00:00"])
    return n, fast, slow, commission, flat, fmt


@pytest.mark.parametrize("seed", range(30))
def test_matches_the_reference_implementation_for_every_chunk_size(seed, write_csv):
    n, fast, slow, commission, flat, fmt = _case(seed)
    path = write_csv(HEADER + "".join(random_bars(n, seed, flat=flat, fmt=fmt)))
    want = reference_backtest(path, fast, slow, commission, 10_000.0)
    for chunk_rows in (7, 1000, 100_000):
        got = run_backtest(path, fast, slow, commission, 10_000.0, chunk_rows=chunk_rows)
        assert got == want, (chunk_rows, got, want)


def test_chunk_size_invariance_on_a_longer_file(write_csv):
    path = write_csv(HEADER + "".join(random_bars(6000, 99, flat=0.3)))
    results = [run_backtest(path, 5, 17, 0.001, chunk_rows=c) for c in (7, 1000, 100_000)]
    assert results[0] == results[1] == results[2]
    assert results[0]["n_trades"] > 50


def test_hand_computed_example(write_csv):
    bars = [(10, 10), (10, 11), (12, 12), (12, 9), (8, 8), (9, 10)]  # (open, close)
    text = HEADER + "".join(
        f"2024-01-01T00:0{i}:00Z,{o},{max(o, c)},{min(o, c)},{c},100\n" for i, (o, c) in enumerate(bars)
    )
    r = run_backtest(write_csv(text), fast=1, slow=2, commission=0.01, initial_cash=1000.0)
    # bar 1: fast 11 > slow 10.5 -> buy at bar 2's open 12; bar 3: 9 < 10.5 -> sell at bar 4's open 8;
    # bar 5: 10 > 9 -> a change after the last bar, never filled
    shares = 1000.0 / (12 * (1 + 0.01))
    final = shares * 8 * (1 - 0.01)
    assert r == {
        "final_equity": final,
        "total_return": final / 1000.0 - 1.0,
        "n_trades": 2,
        "max_drawdown": (1000.0 - final) / 1000.0,
        "bars": 6,
    }
    assert final == pytest.approx(653.4653465346535)


def test_open_position_is_marked_at_the_last_close(write_csv):
    closes = [10, 10, 11, 12, 13, 14]
    text = HEADER + "".join(f"2024-01-01T00:0{i}:00Z,{c},{c},{c},{c},1\n" for i, c in enumerate(closes))
    r = run_backtest(write_csv(text), fast=1, slow=2, initial_cash=100.0)
    # long from bar 3's open (11 > 10.5 after bar 2): 100/12 shares, marked at 14
    assert r["n_trades"] == 1
    assert r["final_equity"] == 100.0 / 12 * 14
    assert r["max_drawdown"] == 0.0


def test_header_only_and_short_files(write_csv):
    for text in (HEADER, HEADER.rstrip("\n"), HEADER + "\n\n"):
        assert run_backtest(write_csv(text)) == {
            "final_equity": 100000.0,
            "total_return": 0.0,
            "n_trades": 0,
            "max_drawdown": 0.0,
            "bars": 0,
        }
    short = write_csv(HEADER + "".join(random_bars(49, 1)))
    r = run_backtest(short, fast=20, slow=50, initial_cash=5.0)
    assert r == {"final_equity": 5.0, "total_return": 0.0, "n_trades": 0, "max_drawdown": 0.0, "bars": 49}


def test_exact_ties_never_trade(write_csv):
    # closes cycling 0.1, 0.2, 0.3: the 3-bar and 6-bar means are exactly equal (as rationals of the
    # floats), although summing the floats naively makes them differ by an ulp either way
    cyc = [0.1, 0.2, 0.3]
    assert sum(cyc) / 3 != sum(cyc * 2) / 6 or sum(cyc[1:] + cyc[:1]) / 3 != sum((cyc[1:] + cyc[:1]) * 2) / 6
    rows = [f"2024-01-01T{i // 60:02d}:{i % 60:02d}:00Z,1,1,0.1,{cyc[i % 3]},1\n" for i in range(600)]
    assert run_backtest(write_csv(HEADER + "".join(rows)), fast=3, slow=6)["n_trades"] == 0
    flat = [f"2024-01-01T{i // 60:02d}:{i % 60:02d}:00Z,100.1,100.1,100.1,100.1,1\n" for i in range(600)]
    assert run_backtest(write_csv(HEADER + "".join(flat)), fast=7, slow=31)["n_trades"] == 0


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.sampled_from([0.1, 0.2, 0.3, 1.0, 99.99, 100.0, 100.01, 1e-3, 7.25]), min_size=1, max_size=80
    ),
    st.integers(1, 6),
    st.integers(1, 12),
)
def test_exact_mean_comparison(closes, nf, extra):
    ns = nf + extra
    ext = np.array(closes, dtype=np.float64)
    if len(ext) < ns:
        return
    got = _fast_above_slow(ext, nf, ns, ns - 1)
    want = [
        sum(map(Fraction, closes[j + 1 - nf : j + 1])) / nf
        > sum(map(Fraction, closes[j + 1 - ns : j + 1])) / ns
        for j in range(ns - 1, len(closes))
    ]
    assert got.tolist() == want


def test_exact_mean_comparison_over_absurd_price_ranges():
    rng = np.random.default_rng(5)
    ext = np.exp(rng.uniform(-600, 600, 300))  # exponents spread too far for int64 limbs
    got = _fast_above_slow(ext, 3, 8, 7)
    vals = [Fraction(v) for v in ext.tolist()]
    want = [sum(vals[j - 2 : j + 1]) / 3 > sum(vals[j - 7 : j + 1]) / 8 for j in range(7, 300)]
    assert got.tolist() == want


# --------------------------------------------------------------------------------------------------
# the file format


def test_tolerated_variants_give_the_same_result(write_csv):
    rows = random_bars(300, 3)
    clean = run_backtest(write_csv(HEADER + "".join(rows)), 3, 9, chunk_rows=64)
    crlf = (HEADER + "".join(rows)).replace("\n", "\r\n")
    with_blanks = HEADER + "".join(r + ("\n" if i % 17 == 0 else "") for i, r in enumerate(rows))
    quoted = HEADER + "".join('"' + r.rstrip("\n").replace(",", '","') + '"\n' for r in rows)
    spaced = "Timestamp, Open, High, Low, Close, Volume\n" + "".join(r.replace(",", ", ") for r in rows)
    for text in ("\ufeff" + crlf, with_blanks, quoted, spaced, (HEADER + "".join(rows)).rstrip("\n")):
        assert run_backtest(write_csv(text), 3, 9, chunk_rows=64) == clean


def test_timestamp_formats_and_offsets(write_csv):
    text = HEADER + (
        "2024-01-01,1,1,1,1,1\n"
        "2024-01-01T00:30+01:00,1,1,1,1,1\n"  # 2023-12-31T23:30Z: not after the first row
    )
    with pytest.raises(CsvValidationError, match="line 3: timestamp is not after"):
        run_backtest(write_csv(text))
    ok = HEADER + (
        "2024-01-01,1,1,1,1,1\n"
        "2024-01-01T00:00:00.000000001Z,1,1,1,1,1\n"
        '"2024-01-01t00:00:00,5+00:00",1,1,1,1,1\n'
        "2024-01-01 01:00:01+01:00,1,1,1,1,1\n"
        "2024-01-01T00:00:02-0000,1,1,1,1,1\n"
        "2024-01-01T00:00:03z,1,1,1,1,1\n"
    )
    assert run_backtest(write_csv(ok), chunk_rows=2)["bars"] == 6


ERRORS = [
    ("", 1, "empty file"),
    ("time,open,high,low,close,volume\n", 1, "expected the header"),
    ("timestamp,open,high,low,close\n", 1, "expected the header"),
    (
        HEADER + "2024-01-01T00:00:00Z,1,1,1,1,1\n2024-01-01T00:01:00Z,1,abc,1,1,1\n",
        3,
        "high is not a number",
    ),
    (HEADER + "2024-01-01T00:00:00Z,1,1,-1,1,1\n", 2, "low must be a finite number > 0"),
    (HEADER + "2024-01-01T00:00:00Z,0,1,1,1,1\n", 2, "open must be a finite number > 0"),
    (HEADER + "2024-01-01T00:00:00Z,1,1,1,1,-2\n", 2, "volume must be a finite number >= 0"),
    (HEADER + "2024-01-01T00:00:00Z,1,1,1,nan,1\n", 2, "close is not a finite number"),
    (HEADER + "2024-01-01T00:00:00Z,1,1,1,1e999,1\n", 2, "close must be a finite number"),
    (HEADER + "2024-01-01T00:00:00Z,1,1,1,,1\n", 2, "close is not a number"),
    (HEADER + "2024-01-01T00:00:00Z,1,1,1,1,1,1\n", 2, "expected 6 fields"),
    (HEADER + "2024-01-01T00:00:00Z,1,1,1,1\n", 2, "expected 6 fields"),
    (
        HEADER + "2024-01-01T00:01:00Z,1,1,1,1,1\n2024-01-01T00:00:00Z,1,1,1,1,1\n",
        3,
        "not after the previous row's .line {l2}.",
    ),
    (
        HEADER + "2024-01-01T00:01:00Z,1,1,1,1,1\n\n2024-01-01T00:01:00Z,1,1,1,1,1\n",
        4,
        "not after the previous row's .line {l2}.",
    ),
    (HEADER + "2024-02-30T00:00:00Z,1,1,1,1,1\n", 2, "out of range"),
    (HEADER + "2024-01-01T24:00:00Z,1,1,1,1,1\n", 2, "out of range"),
    (HEADER + "01/02/2024 10:00,1,1,1,1,1\n", 2, "invalid ISO 8601 timestamp"),
    (HEADER + "2024-01-01T00:00:00.1234567891Z,1,1,1,1,1\n", 2, "invalid ISO 8601 timestamp"),
    (HEADER.encode() + b"2024-01-01T00:00:00Z,1,1,1,1,\xff\n", 2, "not valid UTF-8"),
    (HEADER + '"2024-01-01T00:00:00Z,1,1,1,1,1\n', 2, "malformed CSV"),
]


@pytest.mark.parametrize("chunk_rows", [1, 3, 100_000])
@pytest.mark.parametrize(("text", "line", "message"), ERRORS)
def test_validation_errors_name_the_line(text, line, message, chunk_rows, write_csv):
    # bury the bad line in good ones to check the numbering across chunks
    if line > 1 and isinstance(text, str):
        good = random_bars(40, 7)
        first = dt.datetime(2023, 1, 1, tzinfo=dt.UTC)
        good = [
            f"{(first + dt.timedelta(minutes=i)).strftime('%Y-%m-%dT%H:%M:%SZ')}," + g.split(",", 1)[1]
            for i, g in enumerate(good)
        ]
        text = HEADER + "".join(good) + text[len(HEADER) :]
        line += 40
    message = message.format(l2=2 + (40 if line > 40 else 0))
    with pytest.raises(CsvValidationError, match=message) as info:
        run_backtest(write_csv(text), chunk_rows=chunk_rows)
    assert info.value.line == line
    assert str(info.value).startswith(f"line {line}: ")
    assert isinstance(info.value, ValueError)


def test_missing_file_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        run_backtest(tmp_path / "nope.csv")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"fast": 0}, "fast must be >= 1"),
        ({"fast": 50, "slow": 50}, "slow must be greater than fast"),
        ({"fast": 60, "slow": 50}, "slow must be greater than fast"),
        ({"fast": 2.5}, "fast must be an integer"),
        ({"slow": True}, "slow must be an integer"),
        ({"commission": -0.01}, "commission"),
        ({"commission": 1.0}, "commission"),
        ({"commission": float("nan")}, "commission"),
        ({"initial_cash": 0.0}, "initial_cash"),
        ({"initial_cash": -5}, "initial_cash"),
        ({"initial_cash": float("inf")}, "initial_cash"),
        ({"chunk_rows": 0}, "chunk_rows"),
    ],
)
def test_parameter_validation(kwargs, needle, write_csv):
    path = write_csv(HEADER)
    with pytest.raises(ValueError, match=needle):
        run_backtest(path, **kwargs)


def test_progress_and_result_types(write_csv):
    path = write_csv(HEADER + "".join(random_bars(2000, 4)))
    seen: list[float] = []
    r = run_backtest(path, 5, 20, chunk_rows=100, progress=seen.append)
    assert set(r) == KEYS
    assert json.loads(json.dumps(r)) == r
    assert all(type(r[k]) is float for k in ("final_equity", "total_return", "max_drawdown"))
    assert type(r["n_trades"]) is int and type(r["bars"]) is int
    assert len(seen) > 10
    assert seen == sorted(seen) and 0.0 <= seen[0] and seen[-1] == 1.0
    assert seen.count(1.0) == 1
    one: list[float] = []
    run_backtest(write_csv(HEADER), progress=one.append)
    assert one == [1.0]


def test_equity_callback_streams_the_whole_curve(write_csv):
    path = write_csv(HEADER + "".join(random_bars(1000, 8)))
    parts: list[tuple[int, np.ndarray]] = []
    r = run_backtest(path, 3, 10, chunk_rows=64, equity_callback=lambda i, e: parts.append((i, e.copy())))
    assert [i for i, _ in parts] == list(range(0, 1000, 64))
    curve = np.concatenate([e for _, e in parts])
    assert curve.shape == (1000,) and curve[-1] == r["final_equity"]
    peak = np.maximum.accumulate(np.concatenate(([10**5], curve)))
    assert np.max((peak - np.concatenate(([10**5], curve))) / peak) == r["max_drawdown"]


# --------------------------------------------------------------------------------------------------
# pieces


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30)),
        min_size=1,
        max_size=30,
    ),
    st.sampled_from(
        [
            "%Y-%m-%dT%H:%M:%SZ",
            "%Y-%m-%d %H:%M:%S",
            "%Y-%m-%dT%H:%M",
            "%Y-%m-%d",
            "%Y-%m-%dT%H:%M:%S.%f",
            "%Y-%m-%dT%H:%M:%S+05:30",
            "%Y-%m-%dT%H:%M:%S-0800",
            "%Y-%m-%dT%H:%M:%S,%f+01",
        ]
    ),
)
def test_vectorised_timestamps_equal_the_reference_parser(stamps, fmt):
    texts = [
        f"{d.year:04d}" + d.strftime(fmt)[len(str(d.year)) :] if d.year < 1000 else d.strftime(fmt)
        for d in stamps
    ]
    buf = "".join(t + ",\n" for t in texts).encode()
    width = len(texts[0])
    starts = np.cumsum([0] + [len(t) + 2 for t in texts[:-1]])
    sec, nsec = _timestamps_fast(_gather_rows(buf, starts, width))
    want = [parse_timestamp(t) for t in texts]
    assert list(zip(sec.tolist(), nsec.tolist(), strict=True)) == want
    for t, (s, ns) in zip(texts, want, strict=True):  # and both agree with the datetime module
        d = dt.datetime.fromisoformat(
            t.replace(",", ".").replace("+01", "+01:00") if fmt.endswith("+01") else t
        )
        if d.tzinfo is None:
            d = d.replace(tzinfo=dt.UTC)
        whole = d.replace(microsecond=0)
        assert s == (whole - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(seconds=1)
        assert ns == d.microsecond * 1000


def test_equity_downsampler_is_bounded_and_keeps_the_extremes():
    rng = np.random.default_rng(2)
    curve = 1e5 * np.exp(np.cumsum(rng.normal(0, 1e-3, 200_000)))
    ds = EquityDownsampler(max_buckets=300)
    i = 0
    while i < curve.size:
        k = int(rng.integers(1, 20_000))
        ds(i, curve[i : i + k])
        i += k
    bars, values = ds.points()
    assert len(bars) <= 4 * 300 and np.all(np.diff(bars) > 0)
    np.testing.assert_array_equal(values, curve[bars])
    for must in (0, curve.size - 1, int(np.argmin(curve)), int(np.argmax(curve))):
        assert must in bars
    assert math.isclose(values.min(), curve.min()) and math.isclose(values.max(), curve.max())


def test_an_overlong_line_is_reported_after_the_lines_before_it(write_csv):
    good = HEADER + "2024-01-01T00:00:00Z,1,1,1,1,1\n"
    with pytest.raises(CsvValidationError, match="line 3: line longer than 1 MiB"):
        run_backtest(write_csv(good + "x" * (2 << 20)))
    with pytest.raises(CsvValidationError, match="line 2: high is not a number"):
        run_backtest(write_csv(HEADER + "2024-01-01T00:00:00Z,1,x,1,1,1\n" + "x" * (2 << 20)))
