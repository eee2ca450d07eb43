"""A branch-free, vectorizable exp for float32 and float64.

LLVM does not vectorize calls to libm's exp, which leaves a log-sum-exp
kernel compute-bound far below memory bandwidth.  This exp is

    exp(x) = 2**n * exp(r),   n = rint(x / ln 2),   r = x - n*ln2_hi - n*ln2_lo,

with |r| <= ln(2)/2, exp(r) from a short polynomial (see ``_polynomial``) and
2**n assembled from exponent bits.  Everything is selects and multiply-adds,
so a loop over it becomes vector code (``tests/test_codegen.py`` checks the
assembly).  ``vexp`` has IEEE behaviour at the edges: exp(-inf) = 0,
exp(+inf) = inf, exp(nan) = nan, subnormal results, overflow to inf.
``exp_term`` is the cheaper summand used inside log-sum-exp loops, and
``exp_term_keeping_nan`` the same summand passing a NaN on.

Accuracy against float64 libm exp (``tests/test_exp.py``): at most 1.05 ulp
for float32 over [-104, 88.7], 1.0 ulp for float64 over [-745, 709.7].
"""

import math
from decimal import Decimal, getcontext

import numpy as np
from numpy.polynomial import chebyshev
from numba import literal_unroll, njit, types
from numba.core.errors import TypingError
from numba.extending import overload

from .._config import ELEMENTWISE_FASTMATH
from ._bits import biased_exponent_to_power_of_two, scale_by_power_of_two

getcontext().prec = 50
_LN2 = Decimal("0.69314718055994530941723212145817656807550013436026")


def _make_exp(dtype, degree, lowest, highest, hi_bits, full_range, keeps_nan=False):
    """Build an exp for ``dtype``.

    ``full_range=True``: IEEE behaviour everywhere (subnormal results, inf, nan).
    ``full_range=False``: the cheaper summand of a log-sum-exp, for arguments
    x <= ``highest`` (a row minus its maximum is <= 0): results below the
    normal range flush to 0 (they cannot change a sum that holds a 1), larger
    arguments give meaningless values, and NaN gives 0 (a long row's blocks
    find NaNs through their extrema), or NaN when ``keeps_nan`` (a short
    row's sum is how its NaNs below the maximum are found,
    ``_rows._finish_row``).  The two selects cost the same either way, but
    the long-row loops compiled with the NaN-passing ones ran 3-7 % slower
    (256×32000 float32 logsumexp, one thread), so each keeps its own.
    """
    ln2_hi, ln2_lo = split_ln2(dtype, hi_bits)
    log2e = dtype(1 / math.log(2))
    # Horner order: highest power first.
    leading, *rest = (dtype(c) for c in _polynomial(dtype, degree)[::-1])
    coefficients = tuple(rest)
    lo, hi = dtype(lowest), dtype(highest)
    zero, inf = dtype(0), dtype(np.inf)
    # Adding 1.5 * 2**mantissa_bits rounds to an integer and leaves n + bias in
    # the low mantissa bits: rint, the float->int conversion and the bias add
    # in one (fused) multiply-add.
    mantissa_bits, bias = np.finfo(dtype).nmant, np.finfo(dtype).maxexp - 1
    shifter = dtype(1.5 * 2.0**mantissa_bits + bias)

    @njit(fastmath=set(ELEMENTWISE_FASTMATH), cache=True)
    def exp_kernel(x):
        # Clamp first (NaN lands on `lo`, unless `keeps_nan`) so the integer part stays in range.
        xc = (lo if x < lo else x) if keeps_nan else (x if x > lo else lo)
        if full_range:
            xc = xc if xc < hi else hi
            n = np.rint(xc * log2e)
        else:
            shifted = xc * log2e + shifter
            n = shifted - shifter
        r = (xc - n * ln2_hi) - n * ln2_lo
        p = leading
        # Unrolled so the coefficients become immediates, not memory loads.
        for c in literal_unroll(coefficients):
            p = p * r + c
        if full_range:
            y = scale_by_power_of_two(p, n)
            y = y if x >= lo else zero
            y = y if x <= hi else inf
            return y if x == x else x
        y = p * biased_exponent_to_power_of_two(shifted)
        if keeps_nan:
            return zero if x < lo else y
        return y if x >= lo else zero

    return exp_kernel


def _polynomial(dtype, degree):
    """Power-basis coefficients (constant first) of exp(r) on |r| <= ln(2)/2.

    float64: the Taylor polynomial (degree 13: truncation error 4e-18).
    float32: the interpolant at Chebyshev points, near-minimax: degree 6 has a
    relative error of 2e-8 (0.2 ulp) where Taylor needs degree 7.
    """
    if dtype == np.float64:
        return [1 / math.factorial(k) for k in range(degree + 1)]
    half_width = math.log(2) / 2
    series = chebyshev.chebinterpolate(lambda t: np.exp(t * half_width), degree)
    return list(chebyshev.cheb2poly(series) / half_width ** np.arange(degree + 1))


def _float_bits_cleared(value, cleared):
    bits = np.array(value, dtype=np.float64).view(np.uint64)
    return float((bits & ~np.uint64((1 << cleared) - 1)).view(np.float64))


def split_ln2(dtype, hi_bits):
    """ln 2 = hi + lo, with hi short enough that n*hi is exact."""
    hi = _float_bits_cleared(float(_LN2), 52 - hi_bits)
    return dtype(hi), dtype(float(_LN2 - Decimal(hi)))


# ln2_hi keeps 12 (float32) or 32 (float64) significant bits: n*ln2_hi is
# exact for the |n| <= 150 (1075) that the clamps allow.
_exp_float32 = _make_exp(np.float32, 6, -104.0, 88.72283935546875, 12, True)
_exp_float64 = _make_exp(np.float64, 13, -745.2, 709.782712893384, 32, True)
# Summands: the lower clamp is the smallest normal result, the upper one keeps 2**n normal.
_term_float32 = _make_exp(np.float32, 6, -87.33654, 88.3, 12, False)
_term_float64 = _make_exp(np.float64, 13, -708.3964185322641, 709.0, 32, False)
_term_keeping_nan_float32 = _make_exp(np.float32, 6, -87.33654, 88.3, 12, False, keeps_nan=True)
_term_keeping_nan_float64 = _make_exp(np.float64, 13, -708.3964185322641, 709.0, 32, False, keeps_nan=True)


def overload_by_float(stub, float32_impl, float64_impl):
    """Compile calls of ``stub`` to ``float32_impl`` or ``float64_impl`` by argument type."""

    @overload(stub)
    def _impl(x):
        if x == types.float32:
            return lambda x: float32_impl(x)
        if x == types.float64:
            return lambda x: float64_impl(x)
        raise TypingError(f"{stub.__name__}: expected float32 or float64, got {x}")


def vexp(x):  # pragma: no cover - replaced by the overload in compiled code
    """exp(x) for float32/float64 scalars, vectorizable inside loops."""
    return np.exp(x)


def exp_term(x):  # pragma: no cover - replaced by the overload in compiled code
    """exp(x) as a log-sum-exp summand (see ``_make_exp``), vectorizable."""
    return np.exp(x)


def exp_term_keeping_nan(x):  # pragma: no cover - replaced by the overload in compiled code
    """``exp_term`` giving NaN for a NaN (see ``_make_exp``), vectorizable."""
    return np.exp(x)


overload_by_float(vexp, _exp_float32, _exp_float64)
overload_by_float(exp_term, _term_float32, _term_float64)
overload_by_float(exp_term_keeping_nan, _term_keeping_nan_float32, _term_keeping_nan_float64)
