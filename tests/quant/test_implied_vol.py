"""implied_vol: round trips over the whole range, hard cases, bounds, interface."""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.quant.greeks import bs_greeks, implied_vol
from tests.quant.test_greeks import MINUTE, SECOND, mp_greeks

YEAR_S = 365.25 * 86400.0


def _well_posed(price, vega, sigma):
    """ulp(price)/vega < 1e-10 (the issue's criterion) and, for small σ, relative to σ: one ulp of
    the price alone moves σ by ulp/vega, so 1e-9 *relative* needs ulp/(vega σ) below 1e-10 too."""
    with np.errstate(all="ignore"):
        u = np.spacing(price) / vega
        return (price >= 1e-300) & (u < 1e-10) & (u < 1e-10 * sigma)


def test_round_trip_over_a_wide_random_range():
    rng = np.random.default_rng(11)
    n = 200_000
    S = np.exp(rng.uniform(np.log(1.0), np.log(1e4), n))
    T = np.exp(rng.uniform(np.log(MINUTE), np.log(10.0), n))
    sig = np.exp(rng.uniform(np.log(0.005), np.log(4.0), n))
    z = rng.uniform(-40, 40, n)  # standardised moneyness: reaches prices far below 1e-190
    K = S * np.exp(z * sig * np.sqrt(T))
    r = rng.uniform(-0.02, 0.1, n)
    q = rng.uniform(0.0, 0.06, n)
    ot = np.where(rng.random(n) < 0.5, "call", "put")
    g = bs_greeks(ot, S, K, T, r, q, sig)
    iv = implied_vol(ot, g["price"], S, K, T, r, q)
    ok = _well_posed(g["price"], g["vega"], sig)
    assert ok.mean() > 0.4 and (ok & (g["price"] < 1e-190)).sum() > 1000
    err = np.abs(iv - sig) / sig
    assert np.all(err[ok] <= 1e-9), np.max(err[ok])
    # everything strictly inside the no-arbitrage bounds has an answer (ill-posed ones too)
    sq, kr = S * np.exp(-q * T), K * np.exp(-r * T)
    upper = np.where(ot == "call", sq, kr)
    inside = (g["price"] > np.maximum(np.where(ot == "call", sq - kr, kr - sq), 0)) & (g["price"] < upper)
    assert inside.mean() > 0.6
    assert np.all(np.isfinite(iv[inside]) & (iv[inside] >= 0))
    # and prices at the upper bound (rounding of extreme vol) are NaN, not garbage
    assert np.isnan(iv[g["price"] >= upper]).all()


HARD = [
    # (option, S, K, T, r, q, sigma)
    ("call", 100.0, 100.0, MINUTE, 0.0, 0.0, 0.2),  # one minute at the money
    ("put", 100.0, 100.3, MINUTE, 0.05, 0.0, 0.2),  # one minute, out of the money
    ("call", 100.0, 100.1, MINUTE, 0.0, 0.0, 0.3),
    ("call", 100.0, 100.0, SECOND, 0.0, 0.0, 0.5),  # one second
    ("call", 100.0, 100.0, 1.0, 0.03, 0.03, 1e-4),  # tiny vol, forward at the money
    ("put", 100.0, 99.9, 1.0, 0.0, 0.0, 1e-3),  # tiny vol, slightly out of the money
    ("call", 100.0, 100.0, 1.0, 0.0, 0.0, 6.0),  # huge vol: price near its upper bound
    ("put", 100.0, 1e6, 1.0, 0.0, 0.0, 3.0),  # deep ITM put, huge vol
    ("call", 100.0, 300.0, 0.5, 0.01, 0.0, 0.25),  # deep OTM: price ~1e-9
    ("call", 100.0, 1.9e3, 1.0, 0.0, 0.0, 0.1),  # price ~1e-190
    ("put", 100.0, 5.0, 1.0, 0.05, 0.0, 0.1),  # price ~1e-190 on the put side
    ("call", 100.0, 3.9e3, 1.0, 0.0, 0.0, 0.1),  # price ~1e-300
]


@pytest.mark.parametrize("case", HARD)
def test_hard_cases_against_a_high_precision_price(case):
    ot, S, K, T, r, q, sig = case
    th = 1 if ot == "call" else -1
    price = float(mp_greeks(th, S, K, T, r, q, sig)["price"])  # the correctly rounded price
    assert price > 0
    vega = float(mp_greeks(th, S, K, T, r, q, sig)["vega"])
    iv = implied_vol(ot, price, S, K, T, r, q)
    # the price is exact to half an ulp, which moves σ by at most that much divided by vega
    tol = max(2e-12 * sig, 2 * math.ulp(price) / vega)
    assert abs(iv - sig) <= tol, (iv, sig, tol)


def test_prices_down_to_1e_minus_190_round_trip():
    K = np.array([1.5e3, 2.0e3, 2.5e3, 55.0, 5.0])
    ot = np.array(["call", "call", "call", "put", "put"])
    sig = np.array([0.1, 0.1, 0.1, 0.02, 0.1])
    g = bs_greeks(ot, 100.0, K, 1.0, 0.0, 0.0, sig)
    assert g["price"].min() < 1e-190 < g["price"].max()
    iv = implied_vol(ot, g["price"], 100.0, K, 1.0, 0.0, 0.0)
    np.testing.assert_allclose(iv, sig, rtol=1e-11)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["call", "put"]),
    st.floats(-8.0, 8.0),  # standardised moneyness
    st.floats(math.log(MINUTE), math.log(5.0)).map(math.exp),
    st.floats(math.log(0.01), math.log(3.0)).map(math.exp),
    st.floats(-0.02, 0.08),
    st.floats(0.0, 0.05),
)
def test_round_trip_property(ot, z, T, sig, r, q):
    S = 100.0
    K = S * math.exp(z * sig * math.sqrt(T))
    g = bs_greeks(ot, S, K, T, r, q, sig)
    if not _well_posed(np.float64(g["price"]), g["vega"], sig):
        return
    assert implied_vol(ot, g["price"], S, K, T, r, q) == pytest.approx(sig, rel=1e-9)


def test_bounds_give_nan_for_arrays():
    S, K, T, r, q = 100.0, 90.0, 1.0, 0.05, 0.0
    lower = S - K * math.exp(-r * T)  # discounted intrinsic of the call
    prices = np.array([lower * 0.99, lower, 50.0, S, S * 1.01, -1.0, np.nan, np.inf])
    iv = implied_vol("call", prices, S, K, T, r, q)
    assert np.isnan(iv[0]) and iv[1] == 0.0 and 0 < iv[2] < 10
    assert np.isnan(iv[3:]).all()
    put = implied_vol("put", np.array([K * math.exp(-r * T), 0.0, 1e-300]), S, K, T, r, q)
    assert np.isnan(put[0]) and put[1] == 0.0 and 0 < put[2] < 1
    # unidentifiable: expired, zero spot or strike
    assert np.isnan(implied_vol("call", [5.0, 5.0], [100.0, 0.0], [100.0, 100.0], [0.0, 1.0], 0.0, 0.0)).all()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("call", 5.0, 100.0, 90.0, 1.0, 0.0, 0.0), "below the no-arbitrage lower bound"),
        (("put", 95.0, 100.0, 90.0, 1.0, 0.0, 0.0), "upper bound"),
        (("call", 100.0, 100.0, 90.0, 1.0, 0.0, 0.0), "upper bound"),
        (("call", float("nan"), 100.0, 90.0, 1.0, 0.0, 0.0), "price"),
        (("call", 5.0, 100.0, 90.0, 0.0, 0.0, 0.0), "expired"),
        (("call", 5.0, 100.0, 0.0, 1.0, 0.0, 0.0), "zero spot or strike"),
    ],
)
def test_scalar_outside_bounds_raises(args, needle):
    with pytest.raises(ValueError, match=needle):
        implied_vol(*args)


def test_price_equal_to_intrinsic_gives_zero_and_scalar_is_float():
    iv = implied_vol("call", 20.0, 100.0, 80.0, 1.0, 0.0, 0.0)
    assert iv == 0.0 and type(iv) is float
    assert type(implied_vol("put", 5.0, 100.0, 100.0, 1.0, 0.0, 0.0)) is float


def test_broadcasting_and_shapes():
    sig = np.array([[0.1, 0.2, 0.3]])
    K = np.array([[90.0], [110.0]])
    g = bs_greeks("put", 100.0, K, 0.5, 0.01, 0.0, sig)
    iv = implied_vol("put", g["price"], 100.0, K, 0.5, 0.01, 0.0)
    assert iv.shape == (2, 3)
    np.testing.assert_allclose(iv, np.broadcast_to(sig, (2, 3)), rtol=1e-12)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"spot": -1.0}, "spot"),
        ({"strike": float("nan")}, "strike"),
        ({"t_years": float("inf")}, "t_years"),
        ({"rate": float("nan")}, "rate"),
        ({"option_type": "c"}, "option_type"),
        ({"price": "1.0"}, "price"),
    ],
)
def test_invalid_inputs_raise(override, needle):
    args = {
        "option_type": "call",
        "price": 5.0,
        "spot": 100.0,
        "strike": 100.0,
        "t_years": 1.0,
        "rate": 0.0,
        "dividend_yield": 0.0,
        **override,
    }
    with pytest.raises(ValueError, match=needle):
        implied_vol(**args)


@pytest.mark.parametrize(
    ("ot", "S", "K", "T", "r", "q", "price"),
    [("call", 100.0, 120.0, 0.3, 0.02, 0.01, 0.75), ("put", 50.0, 45.0, 2.0, 0.0, 0.03, 2.5)],
)
def test_against_mpmath_root_finding(ot, S, K, T, r, q, price):
    """An independent check: σ solved in 50-digit arithmetic from the same (double) price."""
    th = 1 if ot == "call" else -1
    with mp.workdps(50):
        want = mp.findroot(
            lambda s: mp_greeks(th, S, K, T, r, q, s, dps=50)["price"] - mp.mpf(price),
            0.3,
            tol=1e-40,
            verify=False,
        )
    assert implied_vol(ot, price, S, K, T, r, q) == pytest.approx(float(want), rel=1e-13)
