"""bs_greeks: mpmath reference accuracy, finite differences, parity, limits, properties, validation."""

from __future__ import annotations

import itertools
import math

import mpmath as mp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.quant.greeks import GREEKS, bs_greeks

YEAR_S = 365.25 * 86400.0
SECOND = 1.0 / YEAR_S
MINUTE = 60.0 / YEAR_S


# --------------------------------------------------------------------------------------------------
# high-precision reference


def mp_greeks(th: int, S, K, T, r, q, sig, dps: int = 80) -> dict[str, mp.mpf]:
    """Black–Scholes–Merton in 80-digit arithmetic from the exact double inputs (T > 0, σ > 0)."""
    with mp.workdps(dps):
        S, K, T, r, q, sig = (mp.mpf(float(v)) for v in (S, K, T, r, q, sig))
        sqt = mp.sqrt(T)
        s = sig * sqt
        sq = S * mp.exp(-q * T)
        kr = K * mp.exp(-r * T)
        d1 = (mp.log(S / K) + (r - q) * T) / s + s / 2
        d2 = d1 - s
        n1, n2, pdf = mp.ncdf(th * d1), mp.ncdf(th * d2), mp.npdf(d1)
        return {
            "price": th * (sq * n1 - kr * n2),
            "delta": th * mp.exp(-q * T) * n1,
            "gamma": mp.exp(-q * T) * pdf / (S * s),
            "vega": sq * pdf * sqt,
            "theta": -sq * pdf * sig / (2 * sqt) + th * (q * sq * n1 - r * kr * n2),
            "rho": th * T * kr * n2,
        }


# expiries from one second to five years; strikes from deep ITM to deep OTM; tiny to huge vol
GRID_K = [50.0, 80.0, 95.0, 99.0, 99.9, 99.99, 100.0, 100.01, 100.1, 101.0, 105.0, 120.0, 200.0]
GRID_T = [SECOND, MINUTE, 3600.0 / YEAR_S, 1 / 365, 7 / 365, 0.25, 1.0, 5.0]
GRID_SIG = [0.001, 0.01, 0.1, 0.3, 1.0, 3.0]
GRID_R = [-0.01, 0.0, 0.05]
GRID_Q = [0.0, 0.03]


def test_matches_mpmath_reference_on_grid():
    cases = np.array(list(itertools.product([1, -1], GRID_K, GRID_T, GRID_R, GRID_Q, GRID_SIG)))
    th, K, T, r, q, sig = cases.T
    S = np.full_like(K, 100.0)
    got = bs_greeks(np.where(th > 0, "call", "put"), S, K, T, r, q, sig)
    failures = []
    for i in range(len(cases)):
        ref = mp_greeks(int(th[i]), S[i], K[i], T[i], r[i], q[i], sig[i])
        for name in GREEKS:
            want = ref[name]
            err = abs(mp.mpf(float(got[name][i])) - want)
            # the target: 1e-9 relative or 1e-12 x spot absolute, whichever is looser
            if err > max(1e-9 * abs(want), 1e-12 * S[i]):
                failures.append((name, cases[i].tolist(), float(want), float(got[name][i])))
    assert not failures, failures[:10]
    assert (got["price"] >= 0).all()
    assert (got["delta"] * th >= 0).all()  # never a wrong-sign delta


def test_out_of_the_money_prices_are_relatively_accurate():
    """Far beyond the target: tiny out-of-the-money prices keep ~12 significant digits."""
    cases = [
        ("call", 100.0, 100.01, MINUTE, 0.0, 0.0, 0.05),  # the series (cancellation) regime
        ("put", 100.0, 99.995, SECOND, 0.02, 0.0, 0.2),
        ("call", 100.0, 100.001, MINUTE, 0.05, 0.02, 0.001),  # ~5e-18
        ("call", 100.0, 100.05, MINUTE, 0.0, 0.0, 0.3),
        ("put", 100.0, 99.0, 1 / 365, 0.0, 0.0, 0.05),
        ("call", 100.0, 150.0, 0.25, 0.05, 0.0, 0.2),
        ("put", 100.0, 30.0, 1.0, 0.05, 0.0, 0.2),
        ("call", 1e-4, 1e4, 10.0, 0.0, 0.0, 1.5),
        ("call", 100.0, 2.7e31, 2.1, 0.03, 0.01, 1.22),  # ~3.5e-306 with a huge strike
    ]
    for ot, S, K, T, r, q, sig in cases:
        got = bs_greeks(ot, S, K, T, r, q, sig)["price"]
        want = mp_greeks(1 if ot == "call" else -1, S, K, T, r, q, sig)["price"]
        assert want > 0
        assert abs(got - want) <= 1e-11 * want, (ot, S, K, T, got, float(want))


# --------------------------------------------------------------------------------------------------
# finite differences and parity

FD_CASES = [
    (ot, K, T, r, q, sig)
    for ot in ("call", "put")
    for K in (80.0, 100.0, 125.0)
    for T in (1 / 52, 0.5, 2.0)
    for r, q in ((0.0, 0.0), (0.05, 0.02), (-0.01, 0.04))
    for sig in (0.15, 0.6)
]


@pytest.mark.parametrize(("ot", "K", "T", "r", "q", "sig"), FD_CASES)
def test_every_greek_matches_central_differences(ot, K, T, r, q, sig):
    S = 100.0
    g = bs_greeks(ot, S, K, T, r, q, sig)

    def price(**kw):
        args = {"spot": S, "t_years": T, "rate": r, "sigma": sig, **kw}
        return bs_greeks(ot, args["spot"], K, args["t_years"], args["rate"], q, args["sigma"])["price"]

    def diff(name, x, h):
        return (price(**{name: x + h}) - price(**{name: x - h})) / (2 * h)

    hs = 1e-5 * S  # ~ eps^(1/3): balances truncation and rounding for first derivatives
    scale = max(g["price"], 1e-3)
    assert g["delta"] == pytest.approx(diff("spot", S, hs), rel=1e-7, abs=1e-10)
    d_delta = (
        bs_greeks(ot, S + hs, K, T, r, q, sig)["delta"] - bs_greeks(ot, S - hs, K, T, r, q, sig)["delta"]
    ) / (2 * hs)
    assert g["gamma"] == pytest.approx(d_delta, rel=1e-6, abs=1e-11)
    h2 = 1e-3 * S  # second difference of the price itself
    gamma_fd = (price(spot=S + h2) - 2 * g["price"] + price(spot=S - h2)) / h2**2
    assert g["gamma"] == pytest.approx(gamma_fd, rel=1e-3, abs=1e-8)
    assert g["vega"] == pytest.approx(diff("sigma", sig, 1e-5), rel=1e-6, abs=1e-8 * scale)
    # theta is the derivative in calendar time: the time to expiry decreases
    assert g["theta"] == pytest.approx(-diff("t_years", T, 1e-6 * T), rel=1e-5, abs=1e-8 * scale)
    assert g["rho"] == pytest.approx(diff("rate", r, 1e-6), rel=1e-6, abs=1e-8 * scale)


def test_put_call_parity_for_every_output():
    rng = np.random.default_rng(7)
    n = 20_000
    S = rng.uniform(1, 500, n)
    K = S * np.exp(rng.normal(0, 0.5, n))
    T = np.exp(rng.uniform(np.log(SECOND), np.log(10), n))
    r = rng.uniform(-0.02, 0.1, n)
    q = rng.uniform(0, 0.08, n)
    sig = np.exp(rng.uniform(np.log(1e-3), np.log(3), n))
    c = bs_greeks("call", S, K, T, r, q, sig)
    p = bs_greeks("put", S, K, T, r, q, sig)
    dq, dr = np.exp(-q * T), np.exp(-r * T)
    tol = 1e-13 * (S + K)
    assert np.all(np.abs((c["price"] - p["price"]) - (S * dq - K * dr)) <= 4 * tol)
    assert np.all(np.abs((c["delta"] - p["delta"]) - dq) <= 1e-14)
    np.testing.assert_array_equal(c["gamma"], p["gamma"])
    np.testing.assert_array_equal(c["vega"], p["vega"])
    theta_gap = q * S * dq - r * K * dr
    assert np.all(
        np.abs((c["theta"] - p["theta"]) - theta_gap)
        <= 1e-13 * (np.abs(c["theta"]) + np.abs(p["theta"]) + S + K)
    )
    assert np.all(np.abs((c["rho"] - p["rho"]) - T * K * dr) <= 1e-13 * T * (S + K))


# --------------------------------------------------------------------------------------------------
# limits


def _close(a, b, tol=1e-12):
    return abs(a - b) <= tol * max(1.0, abs(b))


LIMITS = [
    # (description, args, expected subset; None = check only finiteness)
    (
        "expired ITM call",
        ("call", 110.0, 100.0, 0.0, 0.05, 0.02, 0.3),
        {"price": 10.0, "delta": 1.0, "gamma": 0.0, "vega": 0.0, "theta": 0.0, "rho": 0.0},
    ),
    (
        "expired OTM put",
        ("put", 110.0, 100.0, -1.0, 0.05, 0.02, 0.3),
        {"price": 0.0, "delta": 0.0, "gamma": 0.0, "vega": 0.0, "theta": 0.0, "rho": 0.0},
    ),
    ("expired ATM call", ("call", 100.0, 100.0, 0.0, 0.05, 0.02, 0.3), {"price": 0.0, "delta": 0.5}),
    ("expired ATM put", ("put", 100.0, 100.0, 0.0, 0.05, 0.02, 0.3), {"price": 0.0, "delta": -0.5}),
    (
        "one second, deep ITM call: discounted intrinsic",
        ("call", 100.0, 90.0, SECOND, 0.05, 0.02, 0.2),
        {
            "price": 100 * math.exp(-0.02 * SECOND) - 90 * math.exp(-0.05 * SECOND),
            "delta": math.exp(-0.02 * SECOND),
            "gamma": 0.0,
            "vega": 0.0,
        },
    ),
    (
        "one second, deep OTM put",
        ("put", 100.0, 90.0, SECOND, 0.05, 0.02, 0.2),
        {"price": 0.0, "delta": 0.0, "gamma": 0.0, "vega": 0.0, "theta": 0.0, "rho": 0.0},
    ),
    (
        "one minute, sigma 0.001, OTM call",
        ("call", 100.0, 100.5, MINUTE, 0.0, 0.0, 0.001),
        {"price": 0.0, "delta": 0.0, "gamma": 0.0, "vega": 0.0},
    ),
    (
        "sigma 0: deterministic forward, ITM call",
        ("call", 100.0, 90.0, 1.0, 0.05, 0.0, 0.0),
        {
            "price": 100.0 - 90.0 * math.exp(-0.05),
            "delta": 1.0,
            "gamma": 0.0,
            "vega": 0.0,
            "theta": -0.05 * 90.0 * math.exp(-0.05),
            "rho": 90.0 * math.exp(-0.05),
        },
    ),
    (
        "sigma 0 at the forward: delta 1/2 e^-qT",
        ("put", 100.0, 100.0, 1.0, 0.03, 0.03, 0.0),
        {
            "price": 0.0,
            "delta": -0.5 * math.exp(-0.03),
            "gamma": 0.0,
            "vega": 100 * math.exp(-0.03) / math.sqrt(2 * math.pi),
        },
    ),
    (
        "zero spot put = discounted strike",
        ("put", 0.0, 100.0, 2.0, 0.05, 0.0, 0.3),
        {
            "price": 100 * math.exp(-0.1),
            "delta": -1.0,
            "gamma": 0.0,
            "vega": 0.0,
            "rho": -200 * math.exp(-0.1),
        },
    ),
    ("zero spot call", ("call", 0.0, 100.0, 2.0, 0.05, 0.0, 0.3), {"price": 0.0, "delta": 0.0, "gamma": 0.0}),
    (
        "zero strike call = discounted stock",
        ("call", 100.0, 0.0, 2.0, 0.05, 0.01, 0.3),
        {"price": 100 * math.exp(-0.02), "delta": math.exp(-0.02), "gamma": 0.0, "vega": 0.0, "rho": 0.0},
    ),
    ("zero strike put", ("put", 100.0, 0.0, 2.0, 0.05, 0.01, 0.3), {"price": 0.0, "delta": 0.0}),
]


@pytest.mark.parametrize(("desc", "args", "expected"), LIMITS, ids=[c[0] for c in LIMITS])
def test_limit_cases(desc, args, expected):
    g = bs_greeks(*args)
    assert all(isinstance(v, float) and math.isfinite(v) for v in g.values()), g
    for name, want in expected.items():
        assert _close(g[name], want), (name, g[name], want)


@pytest.mark.parametrize("q", [0.0, 0.04])
@pytest.mark.parametrize("ot", ["call", "put"])
def test_at_the_money_near_expiry_tends_to_half_discounted_delta(ot, q):
    # forward exactly at the money (r == q); t of one second and one minute; sigma 0.001 and 0.3
    for T in (SECOND, MINUTE):
        for sig in (0.001, 0.3):
            g = bs_greeks(ot, 100.0, 100.0, T, q, q, sig)
            half = 0.5 * math.exp(-q * T) * (1 if ot == "call" else -1)
            assert abs(g["delta"] - half) <= 0.5 * sig * math.sqrt(T)  # N(s/2) - 1/2 <= s/(2 sqrt(2 pi))
            assert g["price"] > 0 and math.isfinite(g["gamma"]) and g["gamma"] > 0


def test_values_tend_to_the_expiry_values():
    for ot in ("call", "put"):
        for K in (90.0, 100.0, 110.0):
            at0 = bs_greeks(ot, 100.0, K, 0.0, 0.05, 0.02, 0.2)
            near = bs_greeks(ot, 100.0, K, 1e-12, 0.05, 0.02, 0.2)
            assert abs(near["price"] - at0["price"]) < 1e-5
            assert abs(near["delta"] - at0["delta"]) < 1e-5


def test_far_from_the_strike_gamma_and_vega_vanish_as_expiry_nears():
    prev = None
    for T in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6):
        g = bs_greeks("call", 100.0, 105.0, T, 0.0, 0.0, 0.2)
        if prev is not None:
            assert g["gamma"] <= prev["gamma"] and g["vega"] <= prev["vega"]
        prev = g
    assert prev["gamma"] == 0.0 and prev["vega"] == 0.0


# --------------------------------------------------------------------------------------------------
# properties (hypothesis)

log_uniform = lambda lo, hi: st.floats(math.log(lo), math.log(hi)).map(math.exp)  # noqa: E731

option_params = st.tuples(
    st.sampled_from(["call", "put"]),
    log_uniform(1e-2, 1e5),  # spot
    st.floats(-6.0, 6.0),  # ln(K/S)
    log_uniform(SECOND, 30.0),  # T
    st.floats(-0.05, 0.2),  # r
    st.floats(0.0, 0.2),  # q
    log_uniform(1e-4, 5.0),  # sigma
)


@settings(max_examples=400, deadline=None)
@given(option_params)
def test_outputs_are_finite_bounded_and_signed(params):
    ot, S, lnk, T, r, q, sig = params
    K = S * math.exp(lnk)
    g = bs_greeks(ot, S, K, T, r, q, sig)
    assert all(math.isfinite(v) for v in g.values()), g
    dq, dr = math.exp(-q * T), math.exp(-r * T)
    tol = 1e-12 * (S + K)
    assert g["price"] >= 0.0
    if ot == "call":
        assert max(S * dq - K * dr, 0.0) - tol <= g["price"] <= S * dq + tol
        assert 0.0 <= g["delta"] <= dq * (1 + 1e-15)
    else:
        assert max(K * dr - S * dq, 0.0) - tol <= g["price"] <= K * dr + tol
        assert -dq * (1 + 1e-15) <= g["delta"] <= 0.0
    assert g["gamma"] >= 0.0
    assert g["vega"] >= 0.0


@settings(max_examples=200, deadline=None)
@given(option_params, st.floats(1e-6, 0.2))
def test_price_is_monotone_in_spot(params, bump):
    ot, S, lnk, T, r, q, sig = params
    K = S * math.exp(lnk)
    spots = np.array([S, S * (1 + bump)])
    p = bs_greeks(ot, spots, K, T, r, q, sig)["price"]
    tol = 4e-16 * (S + K)
    if ot == "call":
        assert p[1] >= p[0] - tol
    else:
        assert p[1] <= p[0] + tol


@settings(max_examples=100, deadline=None)
@given(st.lists(option_params, min_size=1, max_size=40))
def test_vectorised_equals_elementwise(rows):
    ots, S, lnk, T, r, q, sig = (list(c) for c in zip(*rows, strict=True))
    K = [s * math.exp(x) for s, x in zip(S, lnk, strict=True)]
    vec = bs_greeks(np.array(ots), S, K, T, r, q, sig)
    for i in range(len(rows)):
        one = bs_greeks(ots[i], S[i], K[i], T[i], r[i], q[i], sig[i])
        for name in GREEKS:
            assert vec[name][i] == one[name]


# --------------------------------------------------------------------------------------------------
# interface


def test_scalars_give_python_floats_and_arrays_give_arrays():
    g = bs_greeks("call", 100, 100, 1, 0.05, 0.0, 0.2)
    assert set(g) == set(GREEKS)
    assert all(type(v) is float for v in g.values())
    g0 = bs_greeks(np.str_("put"), np.float64(100), np.array(100.0), 1, 0.05, 0.0, 0.2)
    assert all(type(v) is float for v in g0.values())
    a = bs_greeks(["call", "put"], 100.0, np.array([[90.0], [110.0]]), 1.0, 0.05, 0.0, 0.2)
    assert all(isinstance(v, np.ndarray) and v.shape == (2, 2) and v.dtype == np.float64 for v in a.values())
    assert a["price"][0, 0] == bs_greeks("call", 100.0, 90.0, 1.0, 0.05, 0.0, 0.2)["price"]
    e = bs_greeks("call", np.empty(0), 100.0, 1.0, 0.0, 0.0, 0.2)
    assert all(v.shape == (0,) for v in e.values())


def test_threads_and_blocks_do_not_change_results(monkeypatch):
    rng = np.random.default_rng(3)
    n = 300_000
    args = (
        np.where(rng.random(n) < 0.5, "call", "put"),
        rng.uniform(50, 150, n),
        rng.uniform(50, 150, n),
        rng.uniform(0, 2, n),
        0.03,
        rng.uniform(0, 0.05, n),
        rng.uniform(0.0, 1.0, n),
    )
    monkeypatch.setenv("TRADEDESK_QUANT_THREADS", "1")
    one = bs_greeks(*args)
    monkeypatch.setenv("TRADEDESK_QUANT_THREADS", "3")
    many = bs_greeks(*args)
    for name in GREEKS:
        np.testing.assert_array_equal(one[name], many[name])


BAD_INPUTS = [
    ({"spot": -1.0}, "spot"),
    ({"spot": [100.0, float("nan")]}, "spot"),
    ({"strike": float("inf")}, "strike"),
    ({"strike": -5}, "strike"),
    ({"sigma": -0.2}, "sigma"),
    ({"sigma": float("nan")}, "sigma"),
    ({"t_years": float("nan")}, "t_years"),
    ({"rate": float("inf")}, "rate"),
    ({"dividend_yield": "high"}, "dividend_yield"),
    ({"option_type": "Call"}, "option_type"),
    ({"option_type": ["call", "straddle"]}, "option_type"),
    ({"option_type": 1}, "option_type"),
    ({"spot": [1.0, 2.0], "strike": [1.0, 2.0, 3.0]}, "broadcast"),
]


@pytest.mark.parametrize(("override", "needle"), BAD_INPUTS)
def test_invalid_inputs_raise_value_error_naming_the_argument(override, needle):
    args = {
        "option_type": "call",
        "spot": 100.0,
        "strike": 100.0,
        "t_years": 1.0,
        "rate": 0.0,
        "dividend_yield": 0.0,
        "sigma": 0.2,
        **override,
    }
    with pytest.raises(ValueError, match=needle):
        bs_greeks(**args)
