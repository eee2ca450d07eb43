"""Accuracy of the vectorized exp against libm in float64."""

import numpy as np
import pytest
from numba import njit

from nbce.cpu._exp import exp_term, exp_term_keeping_nan, vexp


@njit
def _apply(fn_is_term, x, out):
    for i in range(x.size):
        out[i] = exp_term(x[i]) if fn_is_term else vexp(x[i])


@njit
def _apply_keeping_nan(x, out):
    for i in range(x.size):
        out[i] = exp_term_keeping_nan(x[i])


def _ulps(got, x, dtype):
    with np.errstate(over="ignore"):
        exact = np.exp(x.astype(np.float64))
        rounded = exact.astype(dtype)
    finite = np.isfinite(rounded) & (rounded > np.finfo(dtype).tiny)
    return np.abs(got[finite].astype(np.float64) - exact[finite]) / np.spacing(rounded[finite]).astype(np.float64)


# Measured maxima: 1.05 ulp (float32, degree-6 polynomial), 1.0 ulp (float64).
# The reference is libm's float64 exp: exact to 2**-29 float32 ulp, and within
# 0.5 ulp for float64.
@pytest.mark.parametrize("dtype,lo,hi,bound", [(np.float32, -104.0, 88.7, 1.1), (np.float64, -745.0, 709.7, 1.0)])
def test_vexp_ulp_error(dtype, lo, hi, bound):
    x = np.linspace(lo, hi, 1_000_001).astype(dtype)
    out = np.empty_like(x)
    _apply(False, x, out)
    assert _ulps(out, x, dtype).max() <= bound


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vexp_special_values(dtype):
    x = np.array([-np.inf, np.inf, np.nan, 0.0, -0.0, 1.0, 1e30, -1e30], dtype)
    out = np.empty_like(x)
    _apply(False, x, out)
    np.testing.assert_array_equal(out, np.array([0.0, np.inf, np.nan, 1.0, 1.0, np.e, np.inf, 0.0], dtype))


def test_vexp_subnormal_results():
    x = np.array([-100.0, -103.0], np.float32)
    out = np.empty_like(x)
    _apply(False, x, out)
    smallest = np.float64(np.finfo(np.float32).smallest_subnormal)
    assert np.all(np.abs(out - np.exp(x.astype(np.float64))) <= smallest)
    assert (out > 0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_summand_exp(dtype):
    # Summand semantics: same accuracy on the normal range, 0 below it and for
    # -inf; a NaN of either sign gives 0, or NaN from the variant that keeps
    # it (how short rows find their NaNs), which is otherwise the same.
    lo = -87.3 if dtype == np.float32 else -708.3
    x = np.linspace(lo, 0.0, 500_001).astype(dtype)
    out = np.empty_like(x)
    _apply(True, x, out)
    assert _ulps(out, x, dtype).max() <= 1.1
    kept = np.empty_like(x)
    _apply_keeping_nan(x, kept)
    np.testing.assert_array_equal(kept, out)
    edge = np.array([-np.inf, -1e30, 2 * lo, 0.0, np.nan, np.copysign(np.nan, -1.0)], dtype)
    out = np.empty_like(edge)
    _apply(True, edge, out)
    np.testing.assert_array_equal(out, np.array([0.0, 0.0, 0.0, 1.0, 0.0, 0.0], dtype))
    _apply_keeping_nan(edge, out)
    np.testing.assert_array_equal(out, np.array([0.0, 0.0, 0.0, 1.0, np.nan, np.nan], dtype))
