"""Accuracy of the vectorized log, log1p and softplus against float64 references."""

import numpy as np
import pytest
from numba import njit

from nbce.cpu._binary import clamped_log, clamped_log1m, softplus
from nbce.cpu._log import log1p_unit, vlog

FUNCTIONS = {"log": vlog, "log1p_unit": log1p_unit, "softplus": softplus, "clamped_log": clamped_log,
             "clamped_log1m": clamped_log1m}


def _apply(name, x):
    out = np.empty_like(x)
    _kernels[name](x, out)
    return out


def _make_kernel(fn):
    @njit
    def kernel(x, out):
        for i in range(x.size):
            out[i] = fn(x[i])

    return kernel


_kernels = {name: _make_kernel(fn) for name, fn in FUNCTIONS.items()}


def _ulps(got, exact, dtype):
    """|got - exact| in ulps of the correctly rounded value (finite, non-zero ones)."""
    rounded = exact.astype(dtype)
    finite = np.isfinite(rounded) & (rounded != 0)
    assert np.array_equal(got[~finite], rounded[~finite], equal_nan=True)
    return np.abs(got[finite].astype(np.float64) - exact[finite]) / np.spacing(np.abs(rounded[finite])).astype(np.float64)


def _every_magnitude(dtype, n, rng):
    """``n`` positive finite floats with uniformly random bit patterns (subnormals included)."""
    if dtype == np.float32:
        return rng.integers(1, 0x7F800000, n, dtype=np.int32).view(np.float32)
    return rng.integers(1, 0x7FF0000000000000, n, dtype=np.int64).view(np.float64)


# float32 against float64 libm (exact to far below a float32 ulp).  For float64
# the reference is libm itself, within ~0.5 ulp of the exact value, and the
# difference of two float64 values is a whole number of ulps: a bound of 2
# there means "within 2.5 ulp of libm" (against mpmath: 1).
@pytest.mark.parametrize("dtype,bound", [(np.float32, 0.9), (np.float64, 1.0)])
def test_log_ulp_error(dtype, bound, rng):
    x = np.concatenate([_every_magnitude(dtype, 500_000, rng), np.linspace(0.5, 2.0, 500_000).astype(dtype)])
    assert _ulps(_apply("log", x), np.log(x.astype(np.float64)), dtype).max() <= bound


def test_log_special_values():
    for dtype in (np.float32, np.float64):
        x = np.array([0.0, -0.0, np.inf, -1.0, -np.inf, np.nan, 1.0, np.finfo(dtype).smallest_subnormal], dtype)
        got = _apply("log", x)
        np.testing.assert_array_equal(got[:7], np.array([-np.inf, -np.inf, np.inf, np.nan, np.nan, np.nan, 0.0], dtype))
        assert got[7] == np.log(x[7].astype(np.float64)).astype(dtype)


@pytest.mark.parametrize("dtype,bound", [(np.float32, 1.4), (np.float64, 2.0)])
def test_log1p_on_the_unit_interval(dtype, bound, rng):
    t = np.concatenate([np.linspace(0.0, 1.0, 500_000), rng.random(500_000) ** 30]).astype(dtype)
    assert _ulps(_apply("log1p_unit", t), np.log1p(t.astype(np.float64)), dtype).max() <= bound


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softplus_over_the_whole_range(dtype, rng):
    """At most 2 ulp everywhere: 10**6 points, half of them random bit patterns
    of either sign (every magnitude), half dense where log1p(exp(-|x|)) matters."""
    magnitudes = _every_magnitude(dtype, 250_000, rng)
    dense = np.linspace(-120.0, 100.0, 500_000) if dtype == np.float32 else np.linspace(-760.0, 40.0, 500_000)
    x = np.concatenate([magnitudes, -magnitudes, dense.astype(dtype)])
    assert _ulps(_apply("softplus", x), np.logaddexp(0.0, x.astype(np.float64)), dtype).max() <= 2.0
    edges = np.array([np.inf, -np.inf, np.nan, 0.0], dtype)
    np.testing.assert_array_equal(_apply("softplus", edges), np.array([np.inf, 0.0, np.nan, np.log(2.0)], dtype))


@pytest.mark.parametrize("dtype,bound", [(np.float32, 1.5), (np.float64, 2.0)])
def test_clamped_logs_of_probabilities(dtype, bound, rng):
    p = np.concatenate([rng.random(500_000), rng.random(500_000) ** 8]).astype(dtype)
    wide = p.astype(np.float64)
    with np.errstate(divide="ignore"):
        assert _ulps(_apply("clamped_log", p), np.maximum(np.log(wide), -100.0), dtype).max() <= bound
        assert _ulps(_apply("clamped_log1m", p), np.maximum(np.log1p(-wide), -100.0), dtype).max() <= bound
    edges = np.array([0.0, 1.0, np.nan, 1e-45 if dtype == np.float32 else 1e-300], dtype)
    np.testing.assert_array_equal(_apply("clamped_log", edges), np.array([-100.0, 0.0, np.nan, -100.0], dtype))
    np.testing.assert_array_equal(_apply("clamped_log1m", edges)[:3], np.array([0.0, -100.0, np.nan], dtype))
