"""Argument coercion and validation for :func:`bs_greeks` and :func:`implied_vol`.

Why a module of its own: both public functions take the same market arguments (spot, strike,
t_years, rate, dividend_yield) and the same ``option_type``, and must accept and reject them
identically – same rules, same ``ValueError`` messages.  Keeping that in one place (and out of the
numerical kernels) is what guarantees it; :func:`market_args` is the shared validator.

It also holds the representation the kernels receive: every argument broadcast to the common
shape and flattened, except that a single value stays a Python float (it broadcasts for free in
every ufunc), see :data:`Operand` and :func:`flatten`.
"""

from __future__ import annotations

import math
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

__all__ = [
    "BoolArray",
    "FloatArray",
    "IndexArray",
    "Operand",
    "OptionTypeLike",
    "OptionTypes",
    "as_float",
    "block_slice",
    "check_finite",
    "check_nonneg",
    "flatten",
    "gather",
    "market_args",
    "parse_option_type",
    "take",
]

FloatArray: TypeAlias = npt.NDArray[np.float64]
BoolArray: TypeAlias = npt.NDArray[np.bool_]
IndexArray: TypeAlias = npt.NDArray[np.intp]
#: What a kernel receives per argument: a flat float64 block, or one value broadcast for free.
Operand: TypeAlias = FloatArray | float
#: ``"call"`` / ``"put"`` or an array(-like) of those strings.
OptionTypeLike: TypeAlias = str | npt.ArrayLike


class OptionTypes:
    """Parsed ``option_type``: a scalar sign (+1 call, -1 put) or a float array of signs."""

    __slots__ = ("sign", "scalar", "shape")

    def __init__(self, sign: float | FloatArray, scalar: bool, shape: tuple[int, ...]) -> None:
        self.sign = sign
        self.scalar = scalar
        self.shape = shape


_CALL_U4 = np.array(["call"], dtype="<U4").view(np.uint64)
_PUT_U4 = np.array(["put"], dtype="<U4").view(np.uint64)


def _bad_option_type(value: object) -> ValueError:
    return ValueError(f"option_type must be 'call' or 'put' (or an array of them), got {value!r}")


def parse_option_type(option_type: OptionTypeLike) -> OptionTypes:
    """Validate ``option_type``; the message names the first bad value and its index."""
    if isinstance(option_type, str):
        if option_type == "call":
            return OptionTypes(1.0, True, ())
        if option_type == "put":
            return OptionTypes(-1.0, True, ())
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
        return OptionTypes(np.zeros(arr.shape), False, arr.shape)
    is_call: BoolArray
    is_put: BoolArray
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
        return OptionTypes(1.0 if bool(is_call) else -1.0, True, ())
    sign: FloatArray = np.subtract(np.multiply(is_call, 2.0), 1.0)
    return OptionTypes(sign, False, arr.shape)


def as_float(name: str, value: npt.ArrayLike) -> FloatArray:
    """``value`` as a float64 array; ``ValueError`` naming ``name`` if it is not numeric."""
    if isinstance(value, str | bytes):
        raise ValueError(f"{name} must be a number or an array of numbers, got {value!r}")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a number or an array of numbers, got {value!r}") from exc
    return arr


def _first_bad(arr: FloatArray, bad: BoolArray) -> str:
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    where = "" if arr.ndim == 0 else f" at index {idx[0] if len(idx) == 1 else idx}"
    val = arr[idx]
    return f"{val.item()!r}{where}"


def check_nonneg(name: str, arr: FloatArray) -> float:
    """Require finite values >= 0 (NaN rejected); return the minimum (inf for an empty array)."""
    if arr.size == 0:
        return math.inf
    lo = float(arr.min())  # NaN propagates
    hi = float(arr.max())
    if not (lo >= 0.0) or not (hi < math.inf):
        bad = ~((arr >= 0.0) & (arr < math.inf))
        raise ValueError(f"{name} must be a finite number >= 0, got {_first_bad(arr, bad)}")
    return lo


def check_finite(name: str, arr: FloatArray) -> float:
    """Require finite values; return the minimum (inf for an empty array)."""
    if arr.size == 0:
        return math.inf
    lo = float(arr.min())
    hi = float(arr.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} must be a finite number, got {_first_bad(arr, ~np.isfinite(arr))}")
    return lo


def market_args(
    spot: npt.ArrayLike,
    strike: npt.ArrayLike,
    t_years: npt.ArrayLike,
    rate: npt.ArrayLike,
    dividend_yield: npt.ArrayLike,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray, float, float]:
    """Convert and validate the arguments bs_greeks and implied_vol share; also the spot and strike minima."""
    S = as_float("spot", spot)
    K = as_float("strike", strike)
    T = as_float("t_years", t_years)
    r = as_float("rate", rate)
    q = as_float("dividend_yield", dividend_yield)
    s_min = check_nonneg("spot", S)
    k_min = check_nonneg("strike", K)
    check_finite("t_years", T)
    check_finite("rate", r)
    check_finite("dividend_yield", q)
    return S, K, T, r, q, s_min, k_min


# --------------------------------------------------------------------------------------------------
# scalar-or-flat operands (what the blocked kernels receive)


def flatten(arr: FloatArray, shape: tuple[int, ...]) -> Operand:
    """A Python float for single values (broadcast for free), else a flat C-contiguous array."""
    if arr.size == 1:
        return float(arr.reshape(-1)[0])
    if arr.shape == shape and arr.flags.c_contiguous:
        return arr.reshape(-1)
    return np.ascontiguousarray(np.broadcast_to(arr, shape)).reshape(-1)


def block_slice(v: Operand, lo: int, hi: int) -> Operand:
    """Elements ``lo:hi`` of a flat operand (a single value is its own block)."""
    return v[lo:hi] if isinstance(v, np.ndarray) else v


def take(v: Operand, idx: IndexArray) -> Operand:
    """``v[idx]`` for a flat operand; a single value stays a single value."""
    return v[idx] if isinstance(v, np.ndarray) else v


def gather(v: Operand, idx: IndexArray) -> FloatArray:
    """``v[idx]`` as an array (a single value is repeated)."""
    return v[idx] if isinstance(v, np.ndarray) else np.full(idx.shape[0], v)
