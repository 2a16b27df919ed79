"""Black–Scholes–Merton prices, Greeks and implied volatility (continuous dividend yield).

Public API (binding, see docs/quant.md and section 5 of the product contract):

* :func:`bs_greeks` – price, delta, gamma, vega, theta, rho; vectorised with NumPy broadcasting.
* :func:`implied_vol` – σ from a price; vectorised.
* :data:`GREEKS` – the keys of the dict :func:`bs_greeks` returns, in order.

Conventions: raw partial derivatives.  ``vega = ∂V/∂σ``, ``rho = ∂V/∂r``, ``theta = ∂V/∂t`` with t
the calendar time (the time to expiry *decreases*), per year – so theta is usually negative.  No
per-day or per-percent scaling.

Why this module is small: it is the stable import path callers are written against; the code
lives in private modules split by concern, which may be reorganised freely:

* :mod:`app.quant._inputs` – argument coercion and validation shared by both functions;
* :mod:`app.quant._bsm_core` – the formula pieces the kernel and the solver must share bit for bit;
* :mod:`app.quant._black_scholes` – the (benchmarked) Greeks kernel;
* :mod:`app.quant._implied_vol` – the implied-volatility solver (Jäckel, "Let's Be Rational").
"""

from __future__ import annotations

from app.quant._black_scholes import GREEKS, bs_greeks
from app.quant._implied_vol import implied_vol

__all__ = ["GREEKS", "bs_greeks", "implied_vol"]
