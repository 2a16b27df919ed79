"""The pieces of the Black–Scholes–Merton formula that the Greeks kernel and the IV solver share.

Why a module of its own: :func:`implied_vol` must invert *exactly* the prices :func:`bs_greeks`
produces – it subtracts the same discounted intrinsic value from the same log-moneyness, so that
σ → price → σ round-trips to the last bit.  Both therefore import these helpers (and the
series threshold :data:`TAU`) from here rather than keeping copies that could drift apart.

* :func:`log_moneyness` – ``x = ln(S/K) + (r − q)T``, accurate relative to ``|x|`` (``log1p``);
* :func:`intrinsic_value` – the discounted intrinsic value ``max(θ K e^{−rT} expm1(x), 0)``;
* :func:`series_d` – ``D(a, t) = M(a − t) − M(a + t)`` (Mills ratio) from a cancellation-free
  series, for ``σ√T`` tiny against the moneyness.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erfcx

from app.quant._inputs import FloatArray, Operand

__all__ = [
    "INV_SQRT2",
    "INV_SQRT_2PI",
    "LN_SQRT_2PI",
    "SQRT_PI_2",
    "TAU",
    "intrinsic_value",
    "log_moneyness",
    "series_d",
]

INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
LN_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
SQRT_PI_2 = math.sqrt(math.pi / 2.0)
INV_SQRT2 = 1.0 / math.sqrt(2.0)
# Below t = s/2 < TAU * max(a, 1) the out-of-the-money price is summed from the series instead of
# the difference of two CDF terms (which loses up to log10(1/(2*TAU)) ~ 2.7 digits at the border).
# With this threshold four odd terms of the series reach full double precision.
TAU = 1e-3


def log_moneyness(S: Operand, K: Operand, T: Operand, r: Operand, q: Operand) -> FloatArray:
    """x = ln(S/K) + (r - q) T, accurate relative to |x|.

    ln(S/K) = log1p((S - K)/K): S - K is exact for S/K in [1/2, 2] (Sterbenz), so x keeps its
    relative accuracy close to the money; far below the strike (S < K/2) log(S/K) is used instead.
    The fast kernel performs exactly the same operations, so both paths agree to the last bit.
    """
    S, K = np.broadcast_arrays(np.asarray(S, dtype=np.float64), np.asarray(K, dtype=np.float64))
    u: FloatArray = (S - K) / K
    x: FloatArray = np.log1p(u)
    far = u < -0.5
    if far.any():
        x[far] = np.log(S[far] / K[far])
    xm: FloatArray = x + (np.asarray(r) - np.asarray(q)) * np.asarray(T)
    return xm


def intrinsic_value(th: Operand, x: FloatArray, Kr: FloatArray) -> FloatArray:
    """Discounted intrinsic value max(θ (S e^{-qT} - K e^{-rT}), 0) = max(θ K e^{-rT} expm1(x), 0)."""
    return np.maximum(np.expm1(x) * Kr * th, 0.0)


def series_d(a: FloatArray, t: FloatArray) -> FloatArray:
    """D(a, t) = M(a - t) - M(a + t) (M = Mills ratio) for small t / max(a, 1), cancellation free.

    D = 2 Σ_{k odd} I_k(a) t^k / k!,  I_k(a) = ∫_0^∞ y^k exp(-a y - y²/2) dy,
    I_0 = M(a) = √(π/2) erfcx(a/√2),  I_1 = 1 - a I_0,  I_{k+1} = k I_{k-1} - a I_k.
    Valid (relative error ~1e-13 or better) for t < TAU * max(a, 1) and a <= 50.
    """
    i0 = SQRT_PI_2 * erfcx(a * INV_SQRT2)
    i1 = 1.0 - a * i0
    i2 = i0 - a * i1
    i3 = 2.0 * i1 - a * i2
    i4 = 3.0 * i2 - a * i3
    i5 = 4.0 * i3 - a * i4
    i6 = 5.0 * i4 - a * i5
    i7 = 6.0 * i5 - a * i6
    t2 = t * t
    d: FloatArray = 2.0 * t * (i1 + t2 * (i3 / 6.0 + t2 * (i5 / 120.0 + t2 * (i7 / 5040.0))))
    return d
