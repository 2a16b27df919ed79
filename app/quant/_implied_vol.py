"""The implied-volatility solver behind :func:`implied_vol`.

Why a module of its own: the solver is a self-contained algorithm – P. Jäckel, "Let's Be
Rational" (Wilmott, 2015) – about as large as everything else in the Greeks code together, and
nothing in the Greeks kernel depends on it.  It shares only argument validation
(:mod:`app.quant._inputs`) and the formula pieces it must invert bit for bit
(:mod:`app.quant._bsm_core`).  Import the public function from :mod:`app.quant.greeks`.

The price is reduced to the normalised out-of-the-money call ``β = V_otm / √(S e^{−qT} K e^{−rT})``
at ``x = −|ln(F/K)|``; a four-branch rational initial guess (rational cubic interpolation after
Delbourgo & Gregory); then two third-order Householder steps on the branch's transformed objective,
with bracketing; a safeguarded Newton/bisection fallback handles anything that has not converged.
The normalised price is evaluated in log form, so option prices down to ~1e-300 are inverted
without underflow.
"""

from __future__ import annotations

import math
from typing import overload

import numpy as np
import numpy.typing as npt
from scipy.special import erfcx, ndtr, ndtri

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
    FloatArray,
    Operand,
    OptionTypeLike,
    as_float,
    block_slice,
    flatten,
    market_args,
    parse_option_type,
)
from app.quant._parallel import run_blocks

__all__ = ["implied_vol"]

_EPS = float(np.finfo(np.float64).eps)
_DBL_MIN = float(np.finfo(np.float64).tiny)
_DBL_MAX = float(np.finfo(np.float64).max)
_SQRT_DBL_MAX = math.sqrt(_DBL_MAX)
_SQRT3 = math.sqrt(3.0)
_TWO_PI = 2.0 * math.pi
_TWO_PI_OVER_SQRT27 = 2.0 * math.pi / math.sqrt(27.0)
_PI_OVER_SIX = math.pi / 6.0


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
    b: FloatArray
    cb: FloatArray
    lnb: FloatArray
    bp: FloatArray
    bpob: FloatArray

    def __init__(self, x: FloatArray, s: FloatArray, bmax: FloatArray, full: bool = True) -> None:
        with np.errstate(all="ignore"):
            t = 0.5 * s
            a = -x / s
            a[x == 0.0] = 0.0
            lnphi0 = -0.5 * (a * a + t * t) - LN_SQRT_2PI
            phi0 = np.exp(lnphi0)
            e2 = erfcx((a + t) * INV_SQRT2)
            d = erfcx((a - t) * INV_SQRT2)
            d -= e2
            d *= SQRT_PI_2
            ser = t < TAU * np.maximum(a, 1.0)
            if ser.any():
                d[ser] = series_d(np.minimum(a[ser], 50.0), t[ser])
            b = phi0 * d
            if full:
                lnb = lnphi0 + np.log(d)
                bpob = 1.0 / d
                cb = bmax - b
            big = (t - a) > 0.85
            if big.any():
                m2 = phi0[big] * (SQRT_PI_2 * e2[big])
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
                phi0[zero] = np.where(x[zero] == 0.0, INV_SQRT_2PI, 0.0)
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


def _nb_value(x: FloatArray, s: FloatArray, bmax: FloatArray) -> FloatArray:
    return _NB(x, s, bmax, full=False).b


def _nb_vega(x: FloatArray, s: FloatArray) -> FloatArray:
    with np.errstate(all="ignore"):
        a = np.where(x == 0.0, 0.0, -x / s)
        t = 0.5 * s
        v = np.exp(-0.5 * (a * a + t * t) - LN_SQRT_2PI)
        return np.where(s > 0.0, v, np.where(x == 0.0, INV_SQRT_2PI, 0.0))


# rational cubic interpolation (Delbourgo & Gregory), as used by Jäckel for the initial guess

_MIN_R = -(1.0 - math.sqrt(_EPS))
_MAX_R = 2.0 / (_EPS * _EPS)


def _rc_interp(
    x: Operand, xl: Operand, xr: Operand, yl: Operand, yr: Operand, dl: Operand, dr: Operand, r: FloatArray
) -> FloatArray:
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


def _rc_param(num: Operand, den: Operand) -> FloatArray:
    r = num / den
    r = np.where(np.abs(den) < _DBL_MIN, np.where(num > 0.0, _MAX_R, _MIN_R), r)
    return np.where(np.abs(num) < _DBL_MIN, 0.0, r)


def _rc_min_param(dl: Operand, dr: Operand, s: Operand, prefer_shape: bool) -> FloatArray:
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


def _rc_param_right(
    xl: Operand,
    xr: Operand,
    yl: Operand,
    yr: Operand,
    dl: Operand,
    dr: Operand,
    d2r: Operand,
    prefer_shape: bool,
) -> FloatArray:
    h = xr - xl
    r = _rc_param(0.5 * h * d2r + (dr - dl), dr - (yr - yl) / h)
    return np.maximum(r, _rc_min_param(dl, dr, (yr - yl) / h, prefer_shape))


def _rc_param_left(
    xl: Operand,
    xr: Operand,
    yl: Operand,
    yr: Operand,
    dl: Operand,
    dr: Operand,
    d2l: Operand,
    prefer_shape: bool,
) -> FloatArray:
    h = xr - xl
    r = _rc_param(0.5 * h * d2l + (dr - dl), (yr - yl) / h - dl)
    return np.maximum(r, _rc_min_param(dl, dr, (yr - yl) / h, prefer_shape))


def _f_lower_map(x: FloatArray, s: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    ax = np.abs(x)
    z = ax / (_SQRT3 * s)
    y = z * z
    s2 = s * s
    e = 0.5 * erfcx(z * INV_SQRT2)  # Φ(-z) e^{z²/2}
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


def _inverse_f_lower_map(x: FloatArray, f: FloatArray) -> FloatArray:
    s: FloatArray = np.abs(x / (_SQRT3 * ndtri(np.cbrt(f / (_TWO_PI_OVER_SQRT27 * np.abs(x))))))
    return s


def _f_upper_map(x: FloatArray, s: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    f = ndtr(-0.5 * s)
    w = (x / s) ** 2
    fp = -0.5 * np.exp(0.5 * w)
    fpp = SQRT_PI_2 * np.exp(w + 0.125 * s * s) * w / s
    return f, fp, fpp


def _householder(newton: FloatArray, halley: FloatArray, hh3: FloatArray) -> FloatArray:
    return newton * (1.0 + 0.5 * halley * newton) / (1.0 + newton * (halley + hh3 * newton / 6.0))


_LOWER, _MIDDLE, _UPPER = 0, 1, 2
_IV_BLOCK = 8192  # the solver does ~10x the work per element of bs_greeks: smaller blocks balance better


def _normalised_iv(beta: FloatArray, ln_beta: FloatArray, x: FloatArray) -> FloatArray:
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


def _fallback_iv(
    beta: FloatArray, ln_beta: FloatArray, x: FloatArray, bmax: FloatArray, lo: FloatArray, hi: FloatArray
) -> FloatArray:
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


def _iv_block(
    th: Operand,
    price: Operand,
    S: Operand,
    K: Operand,
    T: Operand,
    r: Operand,
    q: Operand,
    *,
    out: FloatArray,
) -> None:
    with np.errstate(all="ignore"):
        th, price, S, K, T, r, q = (
            np.broadcast_to(np.asarray(v, dtype=np.float64), out.shape) for v in (th, price, S, K, T, r, q)
        )
        sqt = np.sqrt(T)
        Sq = S * np.exp(q * -T)
        Kr = K * np.exp(r * -T)
        upper = np.where(th > 0, Sq, Kr)
        x = log_moneyness(S, K, T, r, q)
        # the same intrinsic value bs_greeks adds, so that σ -> price -> σ round trips
        intrinsic = intrinsic_value(th, x, Kr)
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


@overload
def implied_vol(
    option_type: str,
    price: float,
    spot: float,
    strike: float,
    t_years: float,
    rate: float,
    dividend_yield: float,
) -> float: ...
@overload
def implied_vol(
    option_type: OptionTypeLike,
    price: npt.ArrayLike,
    spot: npt.ArrayLike,
    strike: npt.ArrayLike,
    t_years: npt.ArrayLike,
    rate: npt.ArrayLike,
    dividend_yield: npt.ArrayLike,
) -> float | FloatArray: ...
def implied_vol(
    option_type: OptionTypeLike,
    price: npt.ArrayLike,
    spot: npt.ArrayLike,
    strike: npt.ArrayLike,
    t_years: npt.ArrayLike,
    rate: npt.ArrayLike,
    dividend_yield: npt.ArrayLike,
) -> float | FloatArray:
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
    ot = parse_option_type(option_type)
    P = as_float("price", price)
    S, K, T, r, q, _, _ = market_args(spot, strike, t_years, rate, dividend_yield)
    try:
        shape = np.broadcast_shapes(ot.shape, P.shape, S.shape, K.shape, T.shape, r.shape, q.shape)
    except ValueError as exc:
        raise ValueError(f"arguments cannot be broadcast together: {exc}") from None
    scalar = ot.scalar and all(a.ndim == 0 for a in (P, S, K, T, r, q))
    n = math.prod(shape)
    th = ot.sign if isinstance(ot.sign, float) else flatten(ot.sign, shape)  # float iff ot.scalar
    args = [th] + [flatten(a, shape) for a in (P, S, K, T, r, q)]
    out = np.empty(n)

    def block(lo: int, hi: int) -> None:
        _iv_block(*(block_slice(a, lo, hi) for a in args), out=out[lo:hi])

    run_blocks(n, block, _IV_BLOCK)
    if scalar:
        val = float(out[0])
        if math.isnan(val):
            raise ValueError(_iv_scalar_reason(float(th), *(float(a) for a in (P, S, K, T, r, q))))
        return val
    return out.reshape(shape)


def _iv_scalar_reason(th: float, price: float, S: float, K: float, T: float, r: float, q: float) -> str:
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
