"""Branch-free, vectorizable logarithms for float32 and float64 (the companions of ``_exp``).

LLVM does not vectorize calls to libm's log or log1p, so a binary
cross-entropy over millions of elements would run one libm call at a time.
Both functions here use fdlibm's form of log(1 + f):

    s = f / (2 + f),   z = s*s,   log(1 + f) = f - (h - s*(h + R(z))),   h = f*f/2,

with R(z) = 2 (z/3 + z**2/5 + ...) = z*P(z), P a near-minimax polynomial (see
``_polynomial``).  The leading f is exact and everything after it is a small
correction, so the rounding errors stay below an ulp or so.

* ``vlog(x)``: x = 2**k * m with m in [sqrt(1/2), sqrt(2)) from the exponent
  bits (subnormal x are scaled into the normal range first), f = m - 1 (exact),
  log x = k ln2_hi + (log(1 + f) + k ln2_lo).  IEEE edges: log(0) = -inf,
  log(+inf) = +inf, log(x < 0) = log(nan) = nan.
* ``log1p_unit(t)`` = log(1 + t) for t in [0, 1] (f = t, no reduction: z <= 1/9),
  the softplus core log1p(exp(-|x|)); NaN propagates.

Accuracy (``tests/test_log.py``, 10**6 points each): ``vlog`` at most 0.9 ulp
(float32 against float64 libm, positive float32 values of every magnitude,
subnormals included); ``log1p_unit`` 1.4 ulp (float32) on [0, 1].  float64
results differ from libm's by at most 1 ulp (``vlog``) and 2 ulp
(``log1p_unit``), and from mpmath's correctly rounded values by 1 ulp.  The losses built on them are in
``nbce.cpu._binary``.
"""

import math

import numpy as np
from numpy.polynomial import Chebyshev, Polynomial
from numba import literal_unroll, njit

from .._config import ELEMENTWISE_FASTMATH
from ._bits import log_exponent, log_mantissa
from ._exp import overload_by_float, split_ln2

# |s| <= (sqrt(2) - 1) / (sqrt(2) + 1) for m in [sqrt(1/2), sqrt(2)); s <= 1/3 for t in [0, 1].
_Z_LOG = ((math.sqrt(2) - 1) / (math.sqrt(2) + 1)) ** 2
_Z_UNIT = 1 / 9


def _polynomial(dtype, degree, z_max):
    """Power-basis coefficients (constant first) of P(z) = R(z)/z = 2 sum_k z**k / (2k + 3)
    on [0, z_max]: the interpolant at Chebyshev points (near-minimax).

    P is summed from its series (60 terms: z**60 < 1e-57), which float64
    evaluates without cancellation.  Degrees: the truncation error of
    log(1 + f) is at most z_max * |error of P| / 2 relative, i.e. 3e-9 (float32,
    degree 2) and 1e-17 (float64, degree 6) for ``vlog``; 4e-10 (float32,
    degree 4) and 6e-17 (float64, degree 9) for ``log1p_unit``.
    """
    def series(z):
        return sum(2 * z**k / (2 * k + 3) for k in range(60))

    fit = Chebyshev.interpolate(series, degree, domain=[0.0, z_max])
    return [dtype(c) for c in fit.convert(kind=Polynomial).coef]


def _log1p_terms(dtype, degree, z_max):
    """log(1 + f) from f (see the module docstring), for |s| <= sqrt(z_max)."""
    leading, *rest = _polynomial(dtype, degree, z_max)[::-1]  # Horner order: highest power first
    coefficients = tuple(rest)
    half, two = dtype(0.5), dtype(2.0)

    @njit(fastmath=set(ELEMENTWISE_FASTMATH), cache=True, error_model="numpy")  # a division: no zero check
    def log1p_kernel(f):
        s = f / (two + f)
        z = s * s
        p = leading
        for c in literal_unroll(coefficients):  # unrolled: the coefficients become immediates
            p = p * z + c
        h = half * f * f
        return f - (h - s * (h + z * p))

    return log1p_kernel


def _make_log(dtype, degree):
    """IEEE log for ``dtype`` (see the module docstring)."""
    log1p_kernel = _log1p_terms(dtype, degree, _Z_LOG)
    ln2_hi, ln2_lo = split_ln2(dtype, 32 if dtype == np.float64 else 12)  # k*ln2_hi exact for |k| <= 1100 (150)
    info = np.finfo(dtype)
    tiny, scale, scale_bits = dtype(info.tiny), dtype(2.0**info.nmant), dtype(info.nmant)
    zero, one, inf, nan = dtype(0), dtype(1), dtype(np.inf), dtype(np.nan)

    @njit(fastmath=set(ELEMENTWISE_FASTMATH), cache=True, error_model="numpy")  # a division: no zero check
    def log_kernel(x):
        subnormal = x < tiny
        normal = x * scale if subnormal else x
        k = log_exponent(normal) - (scale_bits if subnormal else zero)
        y = k * ln2_hi + (log1p_kernel(log_mantissa(normal) - one) + k * ln2_lo)
        y = y if x < inf else inf
        y = y if x > zero else (-inf if x == zero else nan)
        return y if x == x else x

    return log_kernel


_log_float32 = _make_log(np.float32, 2)
_log_float64 = _make_log(np.float64, 6)
_log1p_unit_float32 = _log1p_terms(np.float32, 4, _Z_UNIT)
_log1p_unit_float64 = _log1p_terms(np.float64, 9, _Z_UNIT)


def vlog(x):  # pragma: no cover - replaced by the overload in compiled code
    """log(x) for float32/float64 scalars, vectorizable inside loops."""
    return np.log(x)


def log1p_unit(t):  # pragma: no cover - replaced by the overload in compiled code
    """log(1 + t) for float32/float64 t in [0, 1], vectorizable inside loops."""
    return np.log1p(t)


overload_by_float(vlog, _log_float32, _log_float64)
overload_by_float(log1p_unit, _log1p_unit_float32, _log1p_unit_float64)
