"""The Black–Scholes–Merton Greeks kernel: :func:`bs_greeks` (price, delta, gamma, vega, theta, rho).

Why a module of its own: this is the benchmarked hot path (see bench/bench_quant.py).  It is kept
apart from argument validation (:mod:`app.quant._inputs`) and from the implied-vol solver
(:mod:`app.quant._implied_vol`), which only shares the formula pieces in :mod:`app.quant._bsm_core`.
Import the public function from :mod:`app.quant.greeks`.

Numerics (details in docs/quant.md):

* Everything is formed from the log-moneyness ``x = ln(S e^{-qT} / (K e^{-rT}))`` and the
  discounted forward; the normal CDF is :func:`scipy.special.ndtr`, evaluated on the side where it
  is accurate in relative terms (``N(-d)`` is never formed as ``1 - N(d)``).
* Where the out-of-the-money value would come from the difference of two nearly equal terms
  (tiny ``σ√T`` relative to the moneyness – near expiry, tiny σ) it is instead evaluated from a
  cancellation-free series, ``V_otm = S e^{-qT} φ(d1) · 2 Σ_k I_k(a) (s/2)^k / k!`` (odd k) with
  ``a = |x|/s``, ``s = σ√T`` and ``I_k(a) = ∫_0^∞ y^k e^{-ay-y²/2} dy``; the in-the-money price is
  then the out-of-the-money one plus the discounted intrinsic value (put–call parity), and the
  log-moneyness itself is computed with ``log1p`` so that it is accurate relative to its size.
* Degenerate inputs have exact closed forms: ``t_years <= 0`` (expired: the payoff),
  ``σ√T == 0`` (deterministic forward), zero spot or zero strike.
* The evaluation runs in blocks over a small thread pool (:mod:`app.quant._parallel`), with
  per-thread scratch buffers; results are bit-identical whatever the thread count.
"""

from __future__ import annotations

import math
import threading
from typing import Any, TypeAlias, overload

import numpy as np
import numpy.typing as npt
from scipy.special import erfcx, log_ndtr, ndtr

from app.quant._bsm_core import (
    INV_SQRT2,
    INV_SQRT_2PI,
    LN_SQRT_2PI,
    SQRT_PI_2,
    TAU,
    intrinsic_value,
    log_moneyness,
    series_d,
)
from app.quant._inputs import (
    BoolArray,
    FloatArray,
    Operand,
    OptionTypeLike,
    as_float,
    block_slice,
    check_nonneg,
    flatten,
    gather,
    market_args,
    parse_option_type,
    take,
)
from app.quant._parallel import run_blocks

__all__ = ["GREEKS", "bs_greeks"]

#: The keys of the dict :func:`bs_greeks` returns, in order.
GREEKS: tuple[str, ...] = ("price", "delta", "gamma", "vega", "theta", "rho")

# price, delta, gamma, vega, theta, rho for a subset of elements
_Six: TypeAlias = tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]

# Beyond |x|/s + s/2 > _FAR the far tail N(-(a + t)) may be subnormal although the price it is
# multiplied into is not: those elements are evaluated in log space (_greeks_careful).
_FAR = 37.0


def _otm_value(Sq: FloatArray, Kr: FloatArray, ln_sp: FloatArray, a: FloatArray, t: FloatArray) -> FloatArray:
    """Out-of-the-money value, accurate relative to itself, from ln(Sq φ(d1)) = ln_sp, a = |x|/s, t = s/2.

    V_otm = Sq φ(d1) D(a, t) with D = M(a - t) - M(a + t) (M: Mills ratio).  D comes from the series
    where the difference would cancel, from erfcx otherwise; far in the money of the other side
    (t - a > 0.85) the first term dominates and the direct form is used.  Products are formed in
    log space, so nothing underflows before the result does.
    """
    e2 = erfcx((a + t) * INV_SQRT2)
    out = np.empty_like(a)
    ser = t < TAU * np.maximum(a, 1.0)
    big = (t - a) > 0.85
    mid = ~(ser | big)
    if ser.any():
        out[ser] = np.exp(ln_sp[ser] + np.log(series_d(np.minimum(a[ser], 50.0), t[ser])))
    if mid.any():
        d = SQRT_PI_2 * (erfcx((a[mid] - t[mid]) * INV_SQRT2) - e2[mid])
        out[mid] = np.exp(ln_sp[mid] + np.log(d))
    if big.any():
        out[big] = np.minimum(Sq[big], Kr[big]) * ndtr(t[big] - a[big]) - np.exp(ln_sp[big]) * (
            SQRT_PI_2 * e2[big]
        )
    return np.maximum(out, 0.0)


def _greeks_careful(
    th: FloatArray, S: FloatArray, K: FloatArray, T: FloatArray, r: FloatArray, q: FloatArray, sig: FloatArray
) -> _Six:
    """All six outputs where the fast formulas lose relative accuracy: the out-of-the-money value
    would cancel (t = s/2 small against a = |x|/s) or a factor underflows (|x|/s large).  Every
    product is formed from logarithms (log_ndtr for the CDFs)."""
    th, S, K, T, r, q, sig = np.broadcast_arrays(
        *(np.asarray(v, dtype=np.float64) for v in (th, S, K, T, r, q, sig))
    )
    sqt = np.sqrt(T)
    s = sig * sqt
    Sq = S * np.exp(q * -T)
    Kr = K * np.exp(r * -T)
    ln_sq = np.log(S) - q * T
    ln_kr = np.log(K) - r * T
    x = log_moneyness(S, K, T, r, q)
    h = x / s
    t = 0.5 * s
    d1 = h + t
    d2 = h - t
    ln_n1 = log_ndtr(th * d1)  # ln N(θ d1)
    ln_n2 = log_ndtr(th * d2)
    ln_pdf = -0.5 * d1 * d1 - LN_SQRT_2PI
    ln_sp = ln_sq + ln_pdf  # ln(Sq φ(d1)) = ln(Kr φ(d2))
    price = _otm_value(Sq, Kr, ln_sp, np.abs(h), t) + intrinsic_value(th, x, Kr)
    delta = th * np.exp(ln_n1 - q * T)
    gamma = np.exp(ln_pdf - q * T - np.log(S) - np.log(s))
    vega = np.exp(ln_sp + np.log(sqt))
    a1 = np.exp(ln_sq + ln_n1)  # Sq N(θ d1)
    a2 = np.exp(ln_kr + ln_n2)  # Kr N(θ d2)
    theta = th * (q * a1 - r * a2) - np.exp(ln_sp + np.log(sig) - np.log(2.0 * sqt))
    rho = th * T * a2
    return price, delta, gamma, vega, theta, rho


def _greeks_degenerate(
    th: FloatArray, S: FloatArray, K: FloatArray, T: FloatArray, r: FloatArray, q: FloatArray, sig: FloatArray
) -> _Six:
    """Exact values for expired options, σ√T == 0, zero spot or zero strike."""
    th, S, K, T, r, q, sig = np.broadcast_arrays(
        *(np.asarray(v, dtype=np.float64) for v in (th, S, K, T, r, q, sig))
    )
    n = th.shape[0]
    price = np.zeros(n)
    delta = np.zeros(n)
    gamma = np.zeros(n)
    vega = np.zeros(n)
    theta = np.zeros(n)
    rho = np.zeros(n)
    expired = ~(T > 0.0)
    live = ~expired
    with np.errstate(all="ignore"):
        # expired: the payoff; delta is its derivative (1/2 exactly at the strike); the rest 0
        e = expired
        if e.any():
            diff = th[e] * (S[e] - K[e])
            price[e] = np.maximum(diff, 0.0)
            delta[e] = th[e] * np.where(diff > 0, 1.0, np.where(diff == 0, 0.5, 0.0))
        dq = np.exp(q * -T)
        dr = np.exp(r * -T)
        Sq = S * dq
        Kr = K * dr
        # zero strike: the call is the discounted stock, the put is worthless
        k0 = live & (K == 0.0) & (S > 0.0)
        c = k0 & (th > 0)
        price[c] = Sq[c]
        delta[c] = dq[c]
        theta[c] = q[c] * Sq[c]
        # zero spot: the put is the discounted strike, the call is worthless
        s0 = live & (S == 0.0)
        p = s0 & (th < 0) & (K > 0.0)
        price[p] = Kr[p]
        delta[p] = -dq[p]
        theta[p] = r[p] * Kr[p]
        rho[p] = -T[p] * Kr[p]
        both = s0 & (K == 0.0) & (th > 0)  # S = K = 0: the call is a forward on a zero stock
        delta[both] = dq[both]
        # σ√T == 0 with positive spot and strike: deterministic forward, kink at x == 0
        z = live & ~k0 & ~s0
        if z.any():
            x = log_moneyness(S[z], K[z], T[z], r[z], q[z])
            tz = th[z]
            w = np.where(tz * x > 0, 1.0, np.where(x == 0, 0.5, 0.0))
            price[z] = intrinsic_value(tz, x, Kr[z])
            delta[z] = tz * dq[z] * w
            vega[z] = np.where(x == 0, Sq[z] * np.sqrt(T[z]) * INV_SQRT_2PI, 0.0)
            theta[z] = tz * (q[z] * Sq[z] - r[z] * Kr[z]) * w
            rho[z] = tz * T[z] * Kr[z] * w
    return price, delta, gamma, vega, theta, rho


class _Scratch(threading.local):
    """Per-thread temporaries of :func:`_greeks_block` (11 float rows, 2 masks), grown on demand."""

    def __init__(self) -> None:
        self.size = 0
        self.buf: FloatArray = np.empty((0, 0))
        self.masks: BoolArray = np.empty((2, 0), dtype=bool)

    def get(self, m: int) -> tuple[list[FloatArray], BoolArray, BoolArray]:
        if self.size < m:
            self.size = m
            self.buf = np.empty((11, self.size))
            self.masks = np.empty((2, self.size), dtype=bool)
        return [row[:m] for row in self.buf], self.masks[0, :m], self.masks[1, :m]


_scratch = _Scratch()


def _greeks_block(
    th: Operand,
    S: Operand,
    K: Operand,
    T: Operand,
    r: Operand,
    q: Operand,
    sig: Operand,
    *,
    outs: list[FloatArray],
    degenerate_possible: bool,
) -> None:
    """Fast path on one block; then patches the (usually empty) careful and degenerate subsets.

    With ψ = +1 where the call is the out-of-the-money side (x <= 0) and -1 where the put is, the
    out-of-the-money value is ψ (Sq N(ψ d1) − Kr N(ψ d2)) – both CDFs taken on their accurate tail –
    and the price is that plus the discounted intrinsic value max(θ Kr expm1(x), 0).  The Greeks use
    θ N(θ d) = ψ N(ψ d) + c with c = (θ − ψ)/2 (0 out of the money, θ in the money).
    """
    P, De, G, V, Th, Rh = outs
    m = P.shape[0]
    (sqt, s, dq, dr, Sq, Kr, w1, w2, psi, c, xb), mask, mask2 = _scratch.get(m)
    with np.errstate(all="ignore"):
        np.sqrt(T, out=sqt)
        np.multiply(sig, sqt, out=s)
        np.negative(T, out=w1)
        np.multiply(q, w1, out=dq)
        np.exp(dq, out=dq)
        np.multiply(r, w1, out=dr)
        np.exp(dr, out=dr)
        np.multiply(S, dq, out=Sq)
        np.multiply(K, dr, out=Kr)
        # x = ln(S/K) + (r - q) T, exactly as log_moneyness computes it -> xb
        np.subtract(S, K, out=w1)
        np.divide(w1, K, out=w1)
        np.less(w1, -0.5, out=mask)
        np.log1p(w1, out=xb)
        if mask.any():
            low = np.flatnonzero(mask)  # S < K/2: log(S/K) instead
            xb[low] = np.log(np.divide(take(S, low), take(K, low)))
        np.subtract(r, q, out=w1)
        np.multiply(w1, T, out=w1)
        np.add(xb, w1, out=xb)
        # h = x / s
        np.divide(xb, s, out=w1)
        # two (usually small) subsets are recomputed afterwards:
        #   series: s/2 < TAU * max(|h|, 1) - the out-of-the-money value would cancel;
        #   far:    |h| + s/2 > 37 - N(ψ d2) may be subnormal while the price is not.
        np.multiply(s, 0.5, out=psi)  # psi, c: temporaries here
        np.abs(w1, out=w2)
        np.add(w2, psi, out=c)
        np.greater(c, _FAR, out=mask2)
        np.maximum(w2, 1.0, out=w2)
        np.multiply(w2, TAU, out=w2)
        np.less(psi, w2, out=mask)
        series = bool(mask.any())
        far = bool(mask2.any())
        idx_series = np.flatnonzero(mask & ~mask2) if series else None
        idx_far = np.flatnonzero(mask2) if far else None
        # d1 (w1) and d2 (w2)
        np.add(w1, psi, out=w1)
        np.subtract(w1, s, out=w2)
        # ψ = -sign(x), c = (θ - ψ)/2
        np.negative(xb, out=psi)
        np.copysign(1.0, psi, out=psi)
        np.subtract(th, psi, out=c)
        np.multiply(c, 0.5, out=c)
        # G = φ(d1)
        np.square(w1, out=G)
        np.multiply(G, -0.5, out=G)
        np.subtract(G, LN_SQRT_2PI, out=G)
        np.exp(G, out=G)
        # N(ψ d1) -> De, N(ψ d2) -> Rh
        np.multiply(psi, w1, out=De)
        ndtr(De, out=De)
        np.multiply(psi, w2, out=Rh)
        ndtr(Rh, out=Rh)
        # out-of-the-money value ψ (Sq N(ψd1) - Kr N(ψd2)) + intrinsic max(θ Kr expm1(x), 0) -> P
        np.multiply(Sq, De, out=P)
        np.multiply(Kr, Rh, out=w1)
        np.subtract(P, w1, out=P)
        np.multiply(P, psi, out=P)
        np.expm1(xb, out=w1)  # same operations as intrinsic_value
        np.multiply(w1, Kr, out=w1)
        np.multiply(w1, th, out=w1)
        np.maximum(w1, 0.0, out=w1)
        np.add(P, w1, out=P)
        if idx_series is not None and idx_series.size:
            # the same intrinsic value, plus Sq φ(d1) D(a, t) from the cancellation-free series
            i = idx_series
            si = s[i]
            a = np.minimum(np.abs(xb[i] / si), 50.0)
            P[i] = Sq[i] * G[i] * series_d(a, 0.5 * si) + w1[i]
        # θ N(θ d1) -> De, θ N(θ d2) -> Rh
        np.multiply(De, psi, out=De)
        np.add(De, c, out=De)
        np.multiply(Rh, psi, out=Rh)
        np.add(Rh, c, out=Rh)
        # V = Sq φ(d1)
        np.multiply(Sq, G, out=V)
        # theta = q Sq θN1 - r Kr θN2 - V σ / (2 √T)
        np.multiply(Sq, De, out=Th)
        np.multiply(Th, q, out=Th)
        np.multiply(Kr, Rh, out=w1)  # Kr θN2, kept for rho
        np.multiply(w1, r, out=w2)
        np.subtract(Th, w2, out=Th)
        np.multiply(V, sig, out=w2)
        np.divide(w2, sqt, out=w2)
        np.multiply(w2, 0.5, out=w2)
        np.subtract(Th, w2, out=Th)
        # rho = T Kr θN2
        np.multiply(w1, T, out=Rh)
        # delta = e^{-qT} θN1
        np.multiply(De, dq, out=De)
        # gamma = e^{-qT} φ(d1) / (S s)
        np.multiply(S, s, out=w1)
        np.divide(dq, w1, out=w1)
        np.multiply(G, w1, out=G)
        # vega = Sq φ(d1) √T
        np.multiply(V, sqt, out=V)

        if idx_far is not None:  # i.e. far
            vals = _greeks_careful(*(gather(v, idx_far) for v in (th, S, K, T, r, q, sig)))
            for out, val in zip(outs, vals, strict=True):
                out[idx_far] = val
        if degenerate_possible or not (float(s.min()) > 0.0):
            bad = ~(s > 0.0)
            if degenerate_possible:
                bad |= np.equal(S, 0.0) | np.equal(K, 0.0)
            if bad.any():
                idx = np.flatnonzero(bad)
                vals = _greeks_degenerate(*(gather(v, idx) for v in (th, S, K, T, r, q, sig)))
                for out, val in zip(outs, vals, strict=True):
                    out[idx] = val


@overload
def bs_greeks(
    option_type: str,
    spot: float,
    strike: float,
    t_years: float,
    rate: float,
    dividend_yield: float,
    sigma: float,
) -> dict[str, float]: ...
@overload
def bs_greeks(
    option_type: OptionTypeLike,
    spot: npt.ArrayLike,
    strike: npt.ArrayLike,
    t_years: npt.ArrayLike,
    rate: npt.ArrayLike,
    dividend_yield: npt.ArrayLike,
    sigma: npt.ArrayLike,
) -> dict[str, Any]: ...
def bs_greeks(
    option_type: OptionTypeLike,
    spot: npt.ArrayLike,
    strike: npt.ArrayLike,
    t_years: npt.ArrayLike,
    rate: npt.ArrayLike,
    dividend_yield: npt.ArrayLike,
    sigma: npt.ArrayLike,
) -> dict[str, Any]:
    """Black–Scholes–Merton price and Greeks with a continuous dividend yield.

    Every argument may be a scalar or an array; arrays broadcast against each other (NumPy rules).
    ``option_type`` is ``"call"``/``"put"`` or an array of those strings.

    Returns a dict with keys ``price, delta, gamma, vega, theta, rho``.  When every argument is a
    scalar (Python/NumPy scalars or 0-d arrays) the values are Python floats; otherwise they are
    float64 arrays of the broadcast shape.

    Conventions: vega = ∂V/∂σ, rho = ∂V/∂r, theta = ∂V/∂t per year with t the calendar time (time
    to expiry decreasing); ``t_years <= 0`` returns the values at expiry (payoff; delta 0/±1, ±1/2
    exactly at the strike; gamma, vega, theta, rho 0).

    Raises ``ValueError`` (naming the argument) for a bad option type, a negative, NaN or infinite
    spot, strike or sigma, or a NaN/infinite t_years, rate or dividend_yield.
    """
    ot = parse_option_type(option_type)
    S, K, T, r, q, s_min, k_min = market_args(spot, strike, t_years, rate, dividend_yield)
    sig = as_float("sigma", sigma)
    check_nonneg("sigma", sig)

    try:
        shape = np.broadcast_shapes(ot.shape, S.shape, K.shape, T.shape, r.shape, q.shape, sig.shape)
    except ValueError as exc:
        raise ValueError(f"arguments cannot be broadcast together: {exc}") from None
    scalar = ot.scalar and all(a.ndim == 0 for a in (S, K, T, r, q, sig))
    n = math.prod(shape)

    th = ot.sign if isinstance(ot.sign, float) else flatten(ot.sign, shape)  # float iff ot.scalar
    args = [th] + [flatten(a, shape) for a in (S, K, T, r, q, sig)]
    outs: list[FloatArray] = [np.empty(n) for _ in GREEKS]
    degenerate_possible = s_min == 0.0 or k_min == 0.0

    def block(lo: int, hi: int) -> None:
        _greeks_block(
            *(block_slice(a, lo, hi) for a in args),
            outs=[o[lo:hi] for o in outs],
            degenerate_possible=degenerate_possible,
        )

    run_blocks(n, block)
    if scalar:
        return {k: float(o[0]) for k, o in zip(GREEKS, outs, strict=True)}
    return {k: o.reshape(shape) for k, o in zip(GREEKS, outs, strict=True)}
