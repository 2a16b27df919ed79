"""Black–Scholes–Merton prices, Greeks and implied volatility (continuous dividend yield).

Public API (binding, see docs/quant.md):

* :func:`bs_greeks` – price, delta, gamma, vega, theta, rho; vectorised with NumPy broadcasting.
* :func:`implied_vol` – σ from a price; vectorised.

Conventions: raw partial derivatives.  ``vega = ∂V/∂σ``, ``rho = ∂V/∂r``, ``theta = ∂V/∂t`` with t
the calendar time (the time to expiry *decreases*), per year – so theta is usually negative.  No
per-day or per-percent scaling.

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
* :func:`implied_vol` follows P. Jäckel, "Let's Be Rational" (Wilmott, 2015): normalised Black
  prices, a four-branch rational initial guess, and two third-order Householder steps on
  transformed objectives, with bracketing; a safeguarded Newton/bisection fallback handles anything
  that has not converged.  The normalised price is evaluated in log form, so option prices down to
  ~1e-300 are inverted without underflow.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np
from scipy.special import erfcx, log_ndtr, ndtr, ndtri

from app.quant._parallel import run_blocks

__all__ = ["GREEKS", "bs_greeks", "implied_vol"]

GREEKS = ("price", "delta", "gamma", "vega", "theta", "rho")

_EPS = float(np.finfo(np.float64).eps)
_DBL_MIN = float(np.finfo(np.float64).tiny)
_DBL_MAX = float(np.finfo(np.float64).max)
_SQRT_DBL_MAX = math.sqrt(_DBL_MAX)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_LN_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_SQRT_PI_2 = math.sqrt(math.pi / 2.0)
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_SQRT3 = math.sqrt(3.0)
_TWO_PI = 2.0 * math.pi
_TWO_PI_OVER_SQRT27 = 2.0 * math.pi / math.sqrt(27.0)
_PI_OVER_SIX = math.pi / 6.0

# Below t = s/2 < _TAU * max(a, 1) the out-of-the-money price is summed from the series instead of
# the difference of two CDF terms (which loses up to log10(1/(2*_TAU)) ~ 2.7 digits at the border).
# With this threshold four odd terms of the series reach full double precision.
_TAU = 1e-3
# Beyond |x|/s + s/2 > _FAR the far tail N(-(a + t)) may be subnormal although the price it is
# multiplied into is not: those elements are evaluated in log space (_greeks_careful).
_FAR = 37.0


# --------------------------------------------------------------------------------------------------
# input handling


class _OptionTypes:
    """Parsed ``option_type``: a scalar sign (+1 call, -1 put) or a float array of signs."""

    __slots__ = ("sign", "scalar", "shape")

    def __init__(self, sign: float | np.ndarray, scalar: bool, shape: tuple[int, ...]) -> None:
        self.sign = sign
        self.scalar = scalar
        self.shape = shape


_CALL_U4 = np.array(["call"], dtype="<U4").view(np.uint64)
_PUT_U4 = np.array(["put"], dtype="<U4").view(np.uint64)


def _bad_option_type(value: Any) -> ValueError:
    return ValueError(f"option_type must be 'call' or 'put' (or an array of them), got {value!r}")


def _parse_option_type(option_type: Any) -> _OptionTypes:
    if isinstance(option_type, str):
        if option_type == "call":
            return _OptionTypes(1.0, True, ())
        if option_type == "put":
            return _OptionTypes(-1.0, True, ())
        raise _bad_option_type(option_type)
    try:
        arr = np.asarray(option_type)
    except Exception as exc:  # ragged nested sequences and the like
        raise _bad_option_type(option_type) from exc
    if arr.dtype.kind not in "UO":
        raise ValueError(
            f"option_type must be 'call' or 'put' (or an array of them), got an array of dtype {arr.dtype}"
        )
    if arr.size == 0:
        return _OptionTypes(np.zeros(arr.shape), False, arr.shape)
    if arr.dtype == np.dtype("<U4") and arr.size > 64:
        # fast path for the common case: compare the 16-byte UCS4 codes as two uint64 words
        words = np.ascontiguousarray(arr).reshape(-1).view(np.uint64).reshape(-1, 2)
        is_call = (words[:, 0] == _CALL_U4[0]) & (words[:, 1] == _CALL_U4[1])
        is_put = (words[:, 0] == _PUT_U4[0]) & (words[:, 1] == _PUT_U4[1])
        is_call = is_call.reshape(arr.shape)
        is_put = is_put.reshape(arr.shape)
    else:
        is_call = arr == "call"
        is_put = arr == "put"
        if not isinstance(is_call, np.ndarray):  # pragma: no cover - defensive (object arrays)
            raise _bad_option_type(option_type)
    ok = is_call | is_put
    if not ok.all():
        bad = np.argwhere(~ok)[0]
        idx = tuple(int(i) for i in bad)
        raise ValueError(
            f"option_type must be 'call' or 'put', got {arr[idx].item()!r} at index {idx if len(idx) != 1 else idx[0]}"
        )
    if arr.ndim == 0:
        return _OptionTypes(1.0 if bool(is_call) else -1.0, True, ())
    sign = np.subtract(np.multiply(is_call, 2.0), 1.0)
    return _OptionTypes(sign, False, arr.shape)


def _as_float(name: str, value: Any) -> np.ndarray:
    if isinstance(value, str | bytes):
        raise ValueError(f"{name} must be a number or an array of numbers, got {value!r}")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a number or an array of numbers, got {value!r}") from exc
    return arr


def _first_bad(arr: np.ndarray, bad: np.ndarray) -> str:
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    where = "" if arr.ndim == 0 else f" at index {idx[0] if len(idx) == 1 else idx}"
    val = arr[idx]
    return f"{val.item()!r}{where}"


def _check_nonneg(name: str, arr: np.ndarray) -> float:
    """Require finite values >= 0 (NaN rejected); return the minimum (inf for an empty array)."""
    if arr.size == 0:
        return math.inf
    lo = float(arr.min())  # NaN propagates
    hi = float(arr.max())
    if not (lo >= 0.0) or not (hi < math.inf):
        bad = ~((arr >= 0.0) & (arr < math.inf))
        raise ValueError(f"{name} must be a finite number >= 0, got {_first_bad(arr, bad)}")
    return lo


def _check_finite(name: str, arr: np.ndarray) -> float:
    """Require finite values; return the minimum (inf for an empty array)."""
    if arr.size == 0:
        return math.inf
    lo = float(arr.min())
    hi = float(arr.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} must be a finite number, got {_first_bad(arr, ~np.isfinite(arr))}")
    return lo



def _market_args(spot: Any, strike: Any, t_years: Any, rate: Any, dividend_yield: Any
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, float]:
    """Convert and validate the arguments bs_greeks and implied_vol share; also the spot and strike minima."""
    S = _as_float("spot", spot)
    K = _as_float("strike", strike)
    T = _as_float("t_years", t_years)
    r = _as_float("rate", rate)
    q = _as_float("dividend_yield", dividend_yield)
    s_min = _check_nonneg("spot", S)
    k_min = _check_nonneg("strike", K)
    _check_finite("t_years", T)
    _check_finite("rate", r)
    _check_finite("dividend_yield", q)
    return S, K, T, r, q, s_min, k_min

def _flatten(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | float:
    """A Python float for single values (broadcast for free), else a flat C-contiguous array."""
    if arr.size == 1:
        return float(arr.reshape(-1)[0])
    if arr.shape == shape and arr.flags.c_contiguous:
        return arr.reshape(-1)
    return np.ascontiguousarray(np.broadcast_to(arr, shape)).reshape(-1)


def _sl(v: np.ndarray | float, lo: int, hi: int) -> np.ndarray | float:
    return v[lo:hi] if isinstance(v, np.ndarray) else v


def _take(v: np.ndarray | float, idx: np.ndarray) -> np.ndarray | float:
    return v[idx] if isinstance(v, np.ndarray) else v


def _gather(v: np.ndarray | float, idx: np.ndarray) -> np.ndarray:
    return v[idx] if isinstance(v, np.ndarray) else np.full(idx.shape[0], v)


# --------------------------------------------------------------------------------------------------
# accurate pieces shared by the careful paths


def _log_moneyness(S, K, T, r, q):
    """x = ln(S/K) + (r - q) T, accurate relative to |x|.

    ln(S/K) = log1p((S - K)/K): S - K is exact for S/K in [1/2, 2] (Sterbenz), so x keeps its
    relative accuracy close to the money; far below the strike (S < K/2) log(S/K) is used instead.
    The fast kernel performs exactly the same operations, so both paths agree to the last bit.
    """
    S, K = np.broadcast_arrays(np.asarray(S, dtype=np.float64), np.asarray(K, dtype=np.float64))
    u = (S - K) / K
    x = np.log1p(u)
    far = u < -0.5
    if far.any():
        x[far] = np.log(S[far] / K[far])
    return x + (np.asarray(r) - np.asarray(q)) * np.asarray(T)


def _intrinsic(th, x, Kr):
    """Discounted intrinsic value max(θ (S e^{-qT} - K e^{-rT}), 0) = max(θ K e^{-rT} expm1(x), 0)."""
    return np.maximum(np.expm1(x) * Kr * th, 0.0)


def _series_d(a: np.ndarray, t: np.ndarray) -> np.ndarray:
    """D(a, t) = M(a - t) - M(a + t) (M = Mills ratio) for small t / max(a, 1), cancellation free.

    D = 2 Σ_{k odd} I_k(a) t^k / k!,  I_k(a) = ∫_0^∞ y^k exp(-a y - y²/2) dy,
    I_0 = M(a) = √(π/2) erfcx(a/√2),  I_1 = 1 - a I_0,  I_{k+1} = k I_{k-1} - a I_k.
    Valid (relative error ~1e-13 or better) for t < _TAU * max(a, 1) and a <= 50.
    """
    i0 = _SQRT_PI_2 * erfcx(a * _INV_SQRT2)
    i1 = 1.0 - a * i0
    i2 = i0 - a * i1
    i3 = 2.0 * i1 - a * i2
    i4 = 3.0 * i2 - a * i3
    i5 = 4.0 * i3 - a * i4
    i6 = 5.0 * i4 - a * i5
    i7 = 6.0 * i5 - a * i6
    t2 = t * t
    return 2.0 * t * (i1 + t2 * (i3 / 6.0 + t2 * (i5 / 120.0 + t2 * (i7 / 5040.0))))


# --------------------------------------------------------------------------------------------------
# bs_greeks kernels


def _otm_value(Sq, Kr, ln_sp, a, t):
    """Out-of-the-money value, accurate relative to itself, from ln(Sq φ(d1)) = ln_sp, a = |x|/s, t = s/2.

    V_otm = Sq φ(d1) D(a, t) with D = M(a - t) - M(a + t) (M: Mills ratio).  D comes from the series
    where the difference would cancel, from erfcx otherwise; far in the money of the other side
    (t - a > 0.85) the first term dominates and the direct form is used.  Products are formed in
    log space, so nothing underflows before the result does.
    """
    e2 = erfcx((a + t) * _INV_SQRT2)
    out = np.empty_like(a)
    ser = t < _TAU * np.maximum(a, 1.0)
    big = (t - a) > 0.85
    mid = ~(ser | big)
    if ser.any():
        out[ser] = np.exp(ln_sp[ser] + np.log(_series_d(np.minimum(a[ser], 50.0), t[ser])))
    if mid.any():
        d = _SQRT_PI_2 * (erfcx((a[mid] - t[mid]) * _INV_SQRT2) - e2[mid])
        out[mid] = np.exp(ln_sp[mid] + np.log(d))
    if big.any():
        out[big] = np.minimum(Sq[big], Kr[big]) * ndtr(t[big] - a[big]) - np.exp(ln_sp[big]) * (
            _SQRT_PI_2 * e2[big]
        )
    return np.maximum(out, 0.0)


def _greeks_careful(th, S, K, T, r, q, sig):
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
    x = _log_moneyness(S, K, T, r, q)
    h = x / s
    t = 0.5 * s
    d1 = h + t
    d2 = h - t
    ln_n1 = log_ndtr(th * d1)  # ln N(θ d1)
    ln_n2 = log_ndtr(th * d2)
    ln_pdf = -0.5 * d1 * d1 - _LN_SQRT_2PI
    ln_sp = ln_sq + ln_pdf  # ln(Sq φ(d1)) = ln(Kr φ(d2))
    price = _otm_value(Sq, Kr, ln_sp, np.abs(h), t) + _intrinsic(th, x, Kr)
    delta = th * np.exp(ln_n1 - q * T)
    gamma = np.exp(ln_pdf - q * T - np.log(S) - np.log(s))
    vega = np.exp(ln_sp + np.log(sqt))
    a1 = np.exp(ln_sq + ln_n1)  # Sq N(θ d1)
    a2 = np.exp(ln_kr + ln_n2)  # Kr N(θ d2)
    theta = th * (q * a1 - r * a2) - np.exp(ln_sp + np.log(sig) - np.log(2.0 * sqt))
    rho = th * T * a2
    return price, delta, gamma, vega, theta, rho


def _greeks_degenerate(th, S, K, T, r, q, sig):
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
            x = _log_moneyness(S[z], K[z], T[z], r[z], q[z])
            tz = th[z]
            w = np.where(tz * x > 0, 1.0, np.where(x == 0, 0.5, 0.0))
            price[z] = _intrinsic(tz, x, Kr[z])
            delta[z] = tz * dq[z] * w
            vega[z] = np.where(x == 0, Sq[z] * np.sqrt(T[z]) * _INV_SQRT_2PI, 0.0)
            theta[z] = tz * (q[z] * Sq[z] - r[z] * Kr[z]) * w
            rho[z] = tz * T[z] * Kr[z] * w
    return price, delta, gamma, vega, theta, rho


class _Scratch(threading.local):
    def __init__(self) -> None:
        self.size = 0
        self.buf: np.ndarray = np.empty((0, 0))
        self.masks: np.ndarray = np.empty((2, 0), dtype=bool)

    def get(self, m: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        if self.size < m:
            self.size = m
            self.buf = np.empty((11, self.size))
            self.masks = np.empty((2, self.size), dtype=bool)
        return [row[:m] for row in self.buf], self.masks[0, :m], self.masks[1, :m]


_scratch = _Scratch()


def _greeks_block(th, S, K, T, r, q, sig, outs, degenerate_possible: bool) -> None:
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
        # x = ln(S/K) + (r - q) T, exactly as _log_moneyness computes it -> xb
        np.subtract(S, K, out=w1)
        np.divide(w1, K, out=w1)
        np.less(w1, -0.5, out=mask)
        np.log1p(w1, out=xb)
        if mask.any():
            low = np.flatnonzero(mask)  # S < K/2: log(S/K) instead
            xb[low] = np.log(np.divide(_take(S, low), _take(K, low)))
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
        np.multiply(w2, _TAU, out=w2)
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
        np.subtract(G, _LN_SQRT_2PI, out=G)
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
        np.expm1(xb, out=w1)  # same operations as _intrinsic
        np.multiply(w1, Kr, out=w1)
        np.multiply(w1, th, out=w1)
        np.maximum(w1, 0.0, out=w1)
        np.add(P, w1, out=P)
        if idx_series is not None and idx_series.size:
            # the same intrinsic value, plus Sq φ(d1) D(a, t) from the cancellation-free series
            i = idx_series
            si = s[i]
            a = np.minimum(np.abs(xb[i] / si), 50.0)
            P[i] = Sq[i] * G[i] * _series_d(a, 0.5 * si) + w1[i]
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

        if far:
            vals = _greeks_careful(*(_gather(v, idx_far) for v in (th, S, K, T, r, q, sig)))
            for out, val in zip(outs, vals, strict=True):
                out[idx_far] = val
        if degenerate_possible or not (float(s.min()) > 0.0):
            bad = ~(s > 0.0)
            if degenerate_possible:
                bad |= np.equal(S, 0.0) | np.equal(K, 0.0)
            if bad.any():
                idx = np.flatnonzero(bad)
                vals = _greeks_degenerate(*(_gather(v, idx) for v in (th, S, K, T, r, q, sig)))
                for out, val in zip(outs, vals, strict=True):
                    out[idx] = val


def bs_greeks(option_type, spot, strike, t_years, rate, dividend_yield, sigma) -> dict[str, Any]:
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
    ot = _parse_option_type(option_type)
    S, K, T, r, q, s_min, k_min = _market_args(spot, strike, t_years, rate, dividend_yield)
    sig = _as_float("sigma", sigma)
    _check_nonneg("sigma", sig)

    try:
        shape = np.broadcast_shapes(ot.shape, S.shape, K.shape, T.shape, r.shape, q.shape, sig.shape)
    except ValueError as exc:
        raise ValueError(f"arguments cannot be broadcast together: {exc}") from None
    scalar = ot.scalar and all(a.ndim == 0 for a in (S, K, T, r, q, sig))
    n = math.prod(shape)

    th = ot.sign if ot.scalar else _flatten(ot.sign, shape)
    args = [th] + [_flatten(a, shape) for a in (S, K, T, r, q, sig)]
    outs = [np.empty(n) for _ in GREEKS]
    degenerate_possible = s_min == 0.0 or k_min == 0.0

    def block(lo: int, hi: int) -> None:
        _greeks_block(*(_sl(a, lo, hi) for a in args), [o[lo:hi] for o in outs], degenerate_possible)

    run_blocks(n, block)
    if scalar:
        return {k: float(o[0]) for k, o in zip(GREEKS, outs, strict=True)}
    return {k: o.reshape(shape) for k, o in zip(GREEKS, outs, strict=True)}


# --------------------------------------------------------------------------------------------------
# normalised Black function (x <= 0: out-of-the-money call, normalised by sqrt(F K))


class _NB:
    """Normalised Black call value and the pieces the solver needs, at (x <= 0, s >= 0).

    b    = Φ(h+t) e^{x/2} − Φ(h−t) e^{−x/2} = φ0 D(a, t)   (h = x/s, a = -h, t = s/2)
    cb   = b_max − b (b_max = e^{x/2}), formed without cancellation where b is close to b_max
    lnb  = ln b = ln φ0 + ln D, formed without underflow
    bp   = ∂b/∂s = φ0 = exp(−(a² + t²)/2)/√(2π)
    bpob = b'/b = 1/D
    With ``full=False`` only ``b`` is computed (the solver's setup needs no more).
    """

    __slots__ = ("b", "cb", "lnb", "bp", "bpob")

    def __init__(self, x: np.ndarray, s: np.ndarray, bmax: np.ndarray, full: bool = True) -> None:
        with np.errstate(all="ignore"):
            t = 0.5 * s
            a = -x / s
            a[x == 0.0] = 0.0
            lnphi0 = -0.5 * (a * a + t * t) - _LN_SQRT_2PI
            phi0 = np.exp(lnphi0)
            e2 = erfcx((a + t) * _INV_SQRT2)
            d = erfcx((a - t) * _INV_SQRT2)
            d -= e2
            d *= _SQRT_PI_2
            ser = t < _TAU * np.maximum(a, 1.0)
            if ser.any():
                d[ser] = _series_d(np.minimum(a[ser], 50.0), t[ser])
            b = phi0 * d
            if full:
                lnb = lnphi0 + np.log(d)
                bpob = 1.0 / d
                cb = bmax - b
            big = (t - a) > 0.85
            if big.any():
                m2 = phi0[big] * (_SQRT_PI_2 * e2[big])
                bm = bmax[big]
                bb = bm * ndtr(t[big] - a[big]) - m2
                b[big] = bb
                if full:
                    cb[big] = bm * ndtr(a[big] - t[big]) + m2
                    lnb[big] = np.log(bb)
                    bpob[big] = phi0[big] / bb
            zero = ~(s > 0.0)
            if zero.any():
                b[zero] = 0.0
                phi0[zero] = np.where(x[zero] == 0.0, _INV_SQRT_2PI, 0.0)
                if full:
                    cb[zero] = bmax[zero]
                    lnb[zero] = -np.inf
                    bpob[zero] = np.inf
        self.b = b
        self.bp = phi0
        if full:
            self.cb = cb
            self.lnb = lnb
            self.bpob = bpob


def _nb_value(x, s, bmax):
    return _NB(x, s, bmax, full=False).b


def _nb_vega(x, s):
    with np.errstate(all="ignore"):
        a = np.where(x == 0.0, 0.0, -x / s)
        t = 0.5 * s
        v = np.exp(-0.5 * (a * a + t * t) - _LN_SQRT_2PI)
        return np.where(s > 0.0, v, np.where(x == 0.0, _INV_SQRT_2PI, 0.0))


# rational cubic interpolation (Delbourgo & Gregory), as used by Jäckel for the initial guess

_MIN_R = -(1.0 - math.sqrt(_EPS))
_MAX_R = 2.0 / (_EPS * _EPS)


def _rc_interp(x, xl, xr, yl, yr, dl, dr, r):
    h = xr - xl
    t = (x - xl) / h
    omt = 1.0 - t
    t2 = t * t
    omt2 = omt * omt
    cubic = (yr * t2 * t + (r * yr - h * dr) * t2 * omt + (r * yl + h * dl) * t * omt2 + yl * omt2 * omt) / (
        1.0 + (r - 3.0) * t * omt
    )
    lin = yr * t + yl * (1.0 - t)
    out = np.where(r >= _MAX_R, lin, cubic)
    return np.where(np.abs(h) <= 0.0, 0.5 * (yl + yr), out)


def _rc_param(num, den):
    r = num / den
    r = np.where(np.abs(den) < _DBL_MIN, np.where(num > 0.0, _MAX_R, _MIN_R), r)
    return np.where(np.abs(num) < _DBL_MIN, 0.0, r)


def _rc_min_param(dl, dr, s, prefer_shape: bool):
    monotonic = (dl * s >= 0.0) & (dr * s >= 0.0)
    convex = (dl <= s) & (s <= dr)
    concave = (dl >= s) & (s >= dr)
    r1 = np.full(np.shape(s), -_DBL_MAX)
    r2 = np.full(np.shape(s), -_DBL_MAX)
    s_nz = np.abs(s) >= _DBL_MIN
    r1 = np.where(monotonic & s_nz, (dr + dl) / np.where(s_nz, s, 1.0), r1)
    if prefer_shape:
        r1 = np.where(monotonic & ~s_nz, _MAX_R, r1)
    cc = convex | concave
    den_ok = (np.abs(s - dl) >= _DBL_MIN) & (np.abs(dr - s) >= _DBL_MIN)
    with np.errstate(all="ignore"):
        r2cc = np.maximum(np.abs((dr - dl) / (dr - s)), np.abs((dr - dl) / (s - dl)))
    r2 = np.where(cc & den_ok, r2cc, r2)
    if prefer_shape:
        r2 = np.where(cc & ~den_ok, _MAX_R, r2)
        r2 = np.where(~cc & monotonic, _MAX_R, r2)
    out = np.maximum(_MIN_R, np.maximum(r1, r2))
    return np.where(~monotonic & ~convex & ~concave, _MIN_R, out)


def _rc_param_right(xl, xr, yl, yr, dl, dr, d2r, prefer_shape):
    h = xr - xl
    r = _rc_param(0.5 * h * d2r + (dr - dl), dr - (yr - yl) / h)
    return np.maximum(r, _rc_min_param(dl, dr, (yr - yl) / h, prefer_shape))


def _rc_param_left(xl, xr, yl, yr, dl, dr, d2l, prefer_shape):
    h = xr - xl
    r = _rc_param(0.5 * h * d2l + (dr - dl), (yr - yl) / h - dl)
    return np.maximum(r, _rc_min_param(dl, dr, (yr - yl) / h, prefer_shape))


def _f_lower_map(x, s):
    ax = np.abs(x)
    z = ax / (_SQRT3 * s)
    y = z * z
    s2 = s * s
    e = 0.5 * erfcx(z * _INV_SQRT2)  # Φ(-z) e^{z²/2}
    phi_ratio = math.sqrt(_TWO_PI) * e  # Φ(-z)/φ(z)
    fpp = (
        _PI_OVER_SIX
        * y
        / (s2 * s)
        * e
        * (8.0 * _SQRT3 * s * ax + (3.0 * s2 * (s2 - 8.0) - 8.0 * x * x) * phi_ratio)
        * np.exp(1.5 * y + 0.25 * s2)
    )
    fp = _TWO_PI * y * e * e * np.exp(0.125 * s2)
    phi_mz = ndtr(-z)
    f = _TWO_PI_OVER_SQRT27 * ax * (phi_mz * phi_mz * phi_mz)
    return f, fp, fpp


def _inverse_f_lower_map(x, f):
    return np.abs(x / (_SQRT3 * ndtri(np.cbrt(f / (_TWO_PI_OVER_SQRT27 * np.abs(x))))))


def _f_upper_map(x, s):
    f = ndtr(-0.5 * s)
    w = (x / s) ** 2
    fp = -0.5 * np.exp(0.5 * w)
    fpp = _SQRT_PI_2 * np.exp(w + 0.125 * s * s) * w / s
    return f, fp, fpp


def _householder(newton, halley, hh3):
    return newton * (1.0 + 0.5 * halley * newton) / (1.0 + newton * (halley + hh3 * newton / 6.0))


_LOWER, _MIDDLE, _UPPER = 0, 1, 2
_IV_BLOCK = 8192  # the solver does ~10x the work per element of bs_greeks: smaller blocks balance better


def _normalised_iv(beta: np.ndarray, ln_beta: np.ndarray, x: np.ndarray) -> np.ndarray:
    """s = σ√T with b(x, s) = beta, for x <= 0 and 0 < beta < exp(x/2).  Vectorised.

    ``ln_beta`` is ln(beta) computed independently (beta itself may be subnormal or 0); the
    lowest branch works on logarithms only, so it keeps full relative accuracy there.
    """
    n = beta.shape[0]
    s = np.empty(n)
    s_left = np.full(n, _DBL_MIN)
    s_right = np.full(n, _DBL_MAX)
    kind = np.full(n, _MIDDLE, dtype=np.int8)
    with np.errstate(all="ignore"):
        bmax = np.exp(0.5 * x)
        s_c = np.sqrt(-2.0 * x)
        b_c = _nb_value(x, s_c, bmax)
        v_c = _nb_vega(x, s_c)
        low = beta < b_c

        # ---- below b_c
        iA = np.flatnonzero(low)
        if iA.size:
            xa, ba, bca, vca, sca = x[iA], beta[iA], b_c[iA], v_c[iA], s_c[iA]
            s_l = sca - bca / vca
            b_l = _nb_value(xa, s_l, bmax[iA])
            lowest = ba < b_l
            # lowest segment: guess from the lower map, objective 1/ln(b)
            j = np.flatnonzero(lowest)
            if j.size:
                xj, bj, blj, slj = xa[j], ba[j], b_l[j], s_l[j]
                f_l, fp_l, fpp_l = _f_lower_map(xj, slj)
                r_ll = _rc_param_right(0.0, blj, 0.0, f_l, 1.0, fp_l, fpp_l, True)
                f = _rc_interp(bj, 0.0, blj, 0.0, f_l, 1.0, fp_l, r_ll)
                tq = bj / blj
                f = np.where(f > 0.0, f, (f_l * tq + blj * (1.0 - tq)) * tq)
                g = iA[j]
                s_low = _inverse_f_lower_map(xj, f)
                # beta near or below the underflow threshold: the map loses its precision; the
                # leading asymptotics ln b ~ -x²/(2 s²) give a guess from ln(beta) instead
                tiny = ~(bj > 1e-250)
                if tiny.any():
                    s_low = np.where(tiny, np.abs(xj) / np.sqrt(-2.0 * ln_beta[g]), s_low)
                s[g] = s_low
                s_right[g] = slj
                kind[g] = _LOWER
            # between s_l and s_c: rational cubic in b
            j = np.flatnonzero(~lowest)
            if j.size:
                xj, bj, blj, slj = xa[j], ba[j], b_l[j], s_l[j]
                v_l = _nb_vega(xj, slj)
                r_lm = _rc_param_right(blj, bca[j], slj, sca[j], 1.0 / v_l, 1.0 / vca[j], 0.0, False)
                g = iA[j]
                s[g] = _rc_interp(bj, blj, bca[j], slj, sca[j], 1.0 / v_l, 1.0 / vca[j], r_lm)
                s_left[g] = slj
                s_right[g] = sca[j]

        # ---- at or above b_c
        iB = np.flatnonzero(~low)
        if iB.size:
            xb, bb, bcb, vcb, scb, bmb = x[iB], beta[iB], b_c[iB], v_c[iB], s_c[iB], bmax[iB]
            s_h = np.where(vcb > _DBL_MIN, scb + (bmb - bcb) / vcb, scb)
            b_h = _nb_value(xb, s_h, bmb)
            mid = bb <= b_h
            j = np.flatnonzero(mid)
            if j.size:
                xj, bj, bhj, shj = xb[j], bb[j], b_h[j], s_h[j]
                v_h = _nb_vega(xj, shj)
                r_hm = _rc_param_left(bcb[j], bhj, scb[j], shj, 1.0 / vcb[j], 1.0 / v_h, 0.0, False)
                g = iB[j]
                s[g] = _rc_interp(bj, bcb[j], bhj, scb[j], shj, 1.0 / vcb[j], 1.0 / v_h, r_hm)
                s_left[g] = scb[j]
                s_right[g] = shj
            j = np.flatnonzero(~mid)
            if j.size:
                xj, bj, bhj, shj, bmj = xb[j], bb[j], b_h[j], s_h[j], bmb[j]
                f_h, fp_h, fpp_h = _f_upper_map(xj, shj)
                ok = (fpp_h > -_SQRT_DBL_MAX) & (fpp_h < _SQRT_DBL_MAX)
                r_hh = _rc_param_left(bhj, bmj, f_h, 0.0, fp_h, -0.5, fpp_h, True)
                f = np.where(ok, _rc_interp(bj, bhj, bmj, f_h, 0.0, fp_h, -0.5, r_hh), -_DBL_MAX)
                hq = bmj - bhj
                tq = (bj - bhj) / hq
                f = np.where(f > 0.0, f, (f_h * (1.0 - tq) + 0.5 * hq * tq) * (1.0 - tq))
                g = iB[j]
                s[g] = -2.0 * ndtri(f)
                s_left[g] = shj
                kind[g] = np.where(bj > 0.5 * bmj, _UPPER, _MIDDLE)

        # ---- two Householder(3) steps on the branch's objective, with bracketing
        ds = np.zeros(n)
        for it in range(2):
            if it:
                out = ~((s > s_left) & (s < s_right))
                if out.any():
                    s[out] = 0.5 * (s_left[out] + s_right[out])
            nb = _NB(x, s, bmax)
            lower = kind == _LOWER
            upper = kind == _UPPER
            above = np.where(lower, nb.lnb > ln_beta, nb.b > beta)
            below = np.where(lower, nb.lnb < ln_beta, nb.b < beta)
            np.copyto(s_right, s, where=above & (s < s_right))
            np.copyto(s_left, s, where=below & (s > s_left))
            h = x / s
            b_halley = h * h / s - 0.25 * s
            b_hh3 = b_halley * b_halley - 3.0 * (h / s) ** 2 - 0.25
            # middle: g = b - beta
            newton = (beta - nb.b) / nb.bp
            step = _householder(newton, b_halley, b_hh3)
            # lower: g = 1/ln(b) - 1/ln(beta)
            if lower.any():
                lnb, bpob = nb.lnb, nb.bpob
                newton_l = (ln_beta - lnb) * lnb / ln_beta / bpob
                inv = 1.0 + 2.0 / lnb
                halley_l = b_halley - bpob * inv
                hh3_l = (
                    b_hh3
                    + 2.0 * bpob * bpob * (1.0 + 3.0 / lnb * (1.0 + 1.0 / lnb))
                    - 3.0 * b_halley * bpob * inv
                )
                step_l = _householder(newton_l, halley_l, hh3_l)
                # (b' itself may underflow here; only ln b and b'/b are used)
                ok_l = np.isfinite(lnb) & (bpob > 0.0) & np.isfinite(bpob)
                step_l = np.where(ok_l, step_l, 0.5 * (s_left + s_right) - s)
                step = np.where(lower, step_l, step)
            # upper: g = ln((b_max - beta)/(b_max - b))
            if upper.any():
                cb = nb.cb
                gq = np.log((bmax - beta) / cb)
                gp = nb.bp / cb
                step_u = _householder(-gq / gp, b_halley + gp, b_hh3 + gp * (2.0 * gp + 3.0 * b_halley))
                step_u = np.where((cb > 0.0) & (nb.bp > _DBL_MIN), step_u, 0.5 * (s_left + s_right) - s)
                step = np.where(upper, step_u, step)
            ds = np.maximum(-0.5 * s, step)
            s = s + ds

        # anything not converged (extreme inputs) goes to the safeguarded fallback
        bad = ~(np.isfinite(s) & (s > 0.0) & (np.abs(ds) <= 1e-6 * s))
        if bad.any():
            i = np.flatnonzero(bad)
            s[i] = _fallback_iv(beta[i], ln_beta[i], x[i], bmax[i], s_left[i], s_right[i])
    return s


def _fallback_iv(beta, ln_beta, x, bmax, lo, hi):
    """Safeguarded Newton on ln b(s) = ln beta with bisection (in log s), for the rare elements the
    main iteration has not converged on (extreme inputs).  ln b is increasing in s, so the bracket
    [lo, hi] always contains the root; every step either lands inside it or bisects it."""
    with np.errstate(all="ignore"):
        lo = np.where(np.isfinite(lo) & (lo > 0.0), lo, 1e-300)
        hi = np.where(np.isfinite(hi) & (hi > lo) & (hi < 1e3), hi, 1e3)
        for _ in range(110):  # widen until ln b(lo) < ln beta < ln b(hi)
            low_bad = ~(_NB(x, lo, bmax).lnb < ln_beta) & (lo > 1e-300)
            nb_hi = _NB(x, hi, bmax)
            high_bad = ~(nb_hi.lnb > ln_beta) & (nb_hi.cb > 0.0) & (hi < 1e300)
            if not (low_bad.any() or high_bad.any()):
                break
            lo = np.where(low_bad, np.maximum(lo * 1e-3, 1e-300), lo)
            hi = np.where(high_bad, hi * 4.0, hi)
        s = np.sqrt(lo) * np.sqrt(hi)
        for _ in range(300):
            nb = _NB(x, s, bmax)
            g = nb.lnb - ln_beta
            lo = np.where(g < 0.0, s, lo)
            hi = np.where(g > 0.0, s, hi)
            newton = s - g / nb.bpob
            inside = (newton > lo) & (newton < hi)
            s_new = np.where(inside, newton, np.sqrt(lo) * np.sqrt(hi))
            s_new = np.where(g == 0.0, s, s_new)
            done = (np.abs(s_new - s) <= 4.0 * _EPS * s) | (hi - lo <= 4.0 * _EPS * hi)
            s = s_new
            if done.all():
                break
        return np.where(np.isfinite(s) & (s > 0.0), s, np.nan)


def _iv_block(th, price, S, K, T, r, q, out) -> None:
    with np.errstate(all="ignore"):
        th, price, S, K, T, r, q = (
            np.broadcast_to(np.asarray(v, dtype=np.float64), out.shape) for v in (th, price, S, K, T, r, q)
        )
        sqt = np.sqrt(T)
        Sq = S * np.exp(q * -T)
        Kr = K * np.exp(r * -T)
        upper = np.where(th > 0, Sq, Kr)
        x = _log_moneyness(S, K, T, r, q)
        # the same intrinsic value bs_greeks adds, so that σ -> price -> σ round trips
        intrinsic = _intrinsic(th, x, Kr)
        tol = 8.0 * _EPS * (Sq + Kr)
        ok = (T > 0.0) & (S > 0.0) & (K > 0.0) & np.isfinite(price) & np.isfinite(upper)
        ok &= (price >= intrinsic - tol) & (price < upper)
        out[...] = np.nan
        i = np.flatnonzero(ok)
        if i.size == 0:
            return
        x = x[i]
        otm_price = price[i] - intrinsic[i]
        # normalised price beta = otm / sqrt(Sq Kr), in log form: it underflows long before the price
        ln_beta = np.log(otm_price) - 0.5 * (np.log(Sq[i]) + np.log(Kr[i]))
        beta = np.exp(ln_beta)
        xn = -np.abs(x)
        bmax = np.exp(0.5 * xn)
        sig = np.zeros(i.size)  # otm_price <= 0: the price is the intrinsic value, σ = 0
        positive = otm_price > 0.0
        live = positive & (beta < bmax)
        sig[positive & ~live] = np.nan  # at the upper bound after rounding
        j = np.flatnonzero(live)
        if j.size:
            sig[j] = _normalised_iv(beta[j], ln_beta[j], xn[j]) / sqt[i][j]
        out[i] = sig


def implied_vol(option_type, price, spot, strike, t_years, rate, dividend_yield):
    """Black–Scholes–Merton implied volatility (continuous dividend yield), vectorised.

    Arguments broadcast like :func:`bs_greeks`.  Returns a Python float when every argument is a
    scalar, else a float64 array of the broadcast shape.

    A price outside the no-arbitrage bounds ``max(θ(S e^{-qT} − K e^{-rT}), 0) <= price <
    (S e^{-qT} for calls, K e^{-rT} for puts)`` – or NaN, or an option whose volatility is not
    identifiable (``t_years <= 0``, zero spot or strike) – gives NaN in arrays and raises
    ``ValueError`` for scalar input.  A price equal to the lower bound (within rounding) gives 0.
    Invalid spot/strike/t_years/rate/dividend_yield/option_type raise ``ValueError`` as in
    :func:`bs_greeks`.
    """
    ot = _parse_option_type(option_type)
    P = _as_float("price", price)
    S, K, T, r, q, _, _ = _market_args(spot, strike, t_years, rate, dividend_yield)
    try:
        shape = np.broadcast_shapes(ot.shape, P.shape, S.shape, K.shape, T.shape, r.shape, q.shape)
    except ValueError as exc:
        raise ValueError(f"arguments cannot be broadcast together: {exc}") from None
    scalar = ot.scalar and all(a.ndim == 0 for a in (P, S, K, T, r, q))
    n = math.prod(shape)
    th = ot.sign if ot.scalar else _flatten(ot.sign, shape)
    args = [th] + [_flatten(a, shape) for a in (P, S, K, T, r, q)]
    out = np.empty(n)

    def block(lo: int, hi: int) -> None:
        _iv_block(*(_sl(a, lo, hi) for a in args), out[lo:hi])

    run_blocks(n, block, _IV_BLOCK)
    if scalar:
        val = float(out[0])
        if math.isnan(val):
            raise ValueError(_iv_scalar_reason(float(th), *(float(a) for a in (P, S, K, T, r, q))))
        return val
    return out.reshape(shape)


def _iv_scalar_reason(th, price, S, K, T, r, q) -> str:
    if not math.isfinite(price):
        return f"price must be a finite number, got {price!r}"
    if T <= 0:
        return f"implied volatility is undefined for an expired option (t_years={T!r})"
    if S == 0 or K == 0:
        return "implied volatility is undefined for a zero spot or strike"
    Sq = S * math.exp(-q * T)
    Kr = K * math.exp(-r * T)
    lower = max(th * (Sq - Kr), 0.0)
    upper = Sq if th > 0 else Kr
    kind = "call" if th > 0 else "put"
    if price < lower:
        return f"price {price!r} is below the no-arbitrage lower bound {lower!r} of this {kind}"
    if price >= upper:
        return f"price {price!r} is at or above the no-arbitrage upper bound {upper!r} of this {kind}"
    return "implied volatility could not be determined for these inputs (price at the upper bound)"
