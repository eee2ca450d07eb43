"""Logits of any magnitude: every CPU result formed from (x - max) - log s.

Rows of equal and near-equal huge logits, in every dtype, against the float64
reference, which is itself checked against a decimal evaluation of the same
rows.  Forming x - logsumexp(x) instead absorbs log s once |max| >~ 1e12:
rows [M, M, M] gave log_softmax 0 and cross-entropy 0 for M >= 1e20.
CPU backend only: the GPU kernels are checked in their own modules.
"""

import math

import numpy as np
import pytest

import nbce
import reference as ref
from conftest import FLOAT_DTYPES, assert_close, np_dtype

# Magnitudes per dtype, up to the largest finite value of each.
MAGNITUDES = {
    "float64": [1e12, 1e16, 1e20, 1e300, np.finfo(np.float64).max],
    "float32": [1e12, 1e16, 1e20, 3.4e38],
    "float16": [2048.0, 65504.0],
    "bfloat16": [1e12, 1e20, 3.38e38],
}
CASES = [(dtype, m) for dtype in FLOAT_DTYPES for m in MAGNITUDES[dtype]]


def _ulp_steps_below(value, dt, steps):
    """``value`` moved ``steps`` representable values of ``dt`` towards -inf."""
    for _ in range(steps):
        value = _next_down(value, dt)
    return value


def _next_down(value, dt):
    if dt.itemsize == 2:  # no nextafter for 16-bit types: step the bit pattern
        bits = np.array(value, dtype=dt).view(np.uint16)
        bits = bits - np.uint16(1) if np.float64(value) > 0 else bits + np.uint16(1)
        return bits.view(dt)[()]
    return np.nextafter(dt.type(value), dt.type(-np.inf))


def rows_for(dtype, magnitude):
    """Rows of the dtype: equal (+M, -M), near-equal (1, 2 and 5 steps below
    M), and mixed with small, opposite and -inf logits."""
    dt = np_dtype(dtype)
    m = dt.type(magnitude)
    down = [_ulp_steps_below(m, dt, k) for k in range(6)]
    rows = [
        [m] * 6,
        [-m] * 6,
        [m, down[1], down[2], down[5], m, down[1]],
        [-down[5], -m, -down[1], -m, -down[2], -m],
        [m, m, 0.0, -m, -np.inf, 1.0],
    ]
    return np.array([[np.float64(v) for v in row] for row in rows]).astype(dt)


def rounded(expected, dtype):
    """The float64 reference as the result dtype holds it: a float32 result
    beyond float32's range is infinite (as PyTorch's would be)."""
    with np.errstate(over="ignore"):
        return np.asarray(expected).astype(np.float64 if dtype == "float64" else np.float32)


@pytest.mark.parametrize("dtype,magnitude", CASES)
def test_reference_is_exact_at_huge_magnitudes(dtype, magnitude):
    x = rows_for(dtype, magnitude)
    exact = np.array([ref.exact_log_softmax(row) for row in x])
    np.testing.assert_allclose(ref.log_softmax(x), exact, rtol=1e-15, atol=0)


@pytest.mark.parametrize("dtype,magnitude", CASES)
def test_log_softmax_and_softmax(dtype, magnitude):
    x = rows_for(dtype, magnitude)
    assert_close(nbce.log_softmax(x), rounded(ref.log_softmax(x), dtype), dtype)
    assert_close(nbce.softmax(x), ref.softmax(x), dtype)
    assert_close(nbce.entropy(x), ref.entropy(x), dtype)
    assert_close(nbce.logsumexp(x), ref.logsumexp(x), dtype)


@pytest.mark.parametrize("dtype,magnitude", CASES)
@pytest.mark.parametrize("options", [
    {},
    dict(weight=[0.5, 2.0, 1.0, 3.0, 1.5, 0.25]),
    dict(label_smoothing=0.2),
    dict(weight=[0.5, 2.0, 1.0, 3.0, 1.5, 0.25], label_smoothing=0.1),
])
def test_cross_entropy_class_indices(dtype, magnitude, options):
    x = rows_for(dtype, magnitude)
    x = x[:, :4] if options.get("label_smoothing") else x  # smoothing meets the -inf column otherwise
    if "weight" in options:
        options = dict(options, weight=np.array(options["weight"][: x.shape[1]]))
    t = np.array([0, 3, 1, 2, 2])
    for reduction in ["none", "mean"]:
        assert_close(nbce.cross_entropy(x, t, reduction=reduction, **options),
                     rounded(ref.cross_entropy(x, t, reduction=reduction, **options), dtype), dtype)


@pytest.mark.parametrize("dtype,magnitude", CASES)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_soft_targets(dtype, magnitude, smoothing):
    x = rows_for(dtype, magnitude)[:, :4]
    y = np.array([[0.1, 0.2, 0.3, 0.4]] * x.shape[0])
    assert_close(nbce.cross_entropy(x, y, reduction="none", label_smoothing=smoothing),
                 rounded(ref.cross_entropy(x, y, reduction="none", label_smoothing=smoothing), dtype), dtype)


@pytest.mark.parametrize("dtype,magnitude", CASES)
def test_evaluation_metrics(dtype, magnitude):
    x = rows_for(dtype, magnitude)
    t = np.array([0, 3, 1, 2, 2])
    result = nbce.evaluate(x, t, top_k=(1, 2))
    expected = ref.evaluation(x, t, top_k=(1, 2))
    for name in ["loss", "entropy", "ece"]:
        assert_close(getattr(result, name), expected[name], dtype)


@pytest.mark.parametrize("offset", [0.0, 100.0, 1e8])
def test_tiny_confident_loss_is_not_floored_float64(offset):
    # loss = log(1 + e^-69.08) ~ 1e-30: x_t - logsumexp(x) would round it to 0
    x = np.array([[offset, offset - 69.0776, offset - 80.0]])
    expected = -ref.exact_log_softmax(x[0])[0]
    assert 1e-31 < expected < 1e-29
    for got in (nbce.cross_entropy(x, np.array([0])), -nbce.log_softmax(x)[0, 0],
                nbce.evaluate(x, np.array([0])).loss):
        np.testing.assert_allclose(got, expected, rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_tiny_confident_loss_is_not_floored_narrow(dtype):
    # e^-15 ~ 3e-7 is below half an ulp of 1 in float32
    x = np.array([[4.0, -11.0, -12.0]]).astype(np_dtype(dtype))
    expected = -ref.exact_log_softmax(x[0])[0]
    for got in (nbce.cross_entropy(x, np.array([0])), -nbce.log_softmax(x)[0, 0]):
        np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_equal_rows_give_log_c_for_every_huge_magnitude():
    # The rows: [M, M, M] gave 1.09863 (1e12), 2.0 (1e16), 0.0 (>= 1e20).
    for m in [1e12, 1e14, 1e16, 1e20, 1e300]:
        x = np.full((1, 3), m)
        assert nbce.cross_entropy(x, np.array([0])) == pytest.approx(math.log(3), rel=1e-15)
        np.testing.assert_allclose(nbce.softmax(x), 1 / 3, rtol=1e-15)
    x = np.full((1, 3), 3.4e38, np.float32)
    assert nbce.cross_entropy(x, np.array([1])) == pytest.approx(math.log(3), rel=1e-6)


@pytest.mark.parametrize("dtype,magnitude", [("float64", 1e20), ("float64", -1e300), ("float32", 3.4e38),
                                             ("float32", -1e16)])
def test_long_rows_of_equal_huge_logits(dtype, magnitude):
    # Rows streamed over many blocks (longer than BLOCK), so the vector loops
    # and the block merge run: every log-probability is -log C, whichever
    # function forms it.
    n = 2 * 2048 + 7
    x = np.full((3, n), magnitude, dtype)
    log_c = math.log(n)
    rtol = 1e-13 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(nbce.log_softmax(x), -log_c, rtol=rtol)
    np.testing.assert_allclose(nbce.softmax(x), 1 / n, rtol=rtol)
    np.testing.assert_allclose(nbce.entropy(x), log_c, rtol=rtol)
    t = np.array([0, n // 2, n - 1])
    np.testing.assert_allclose(nbce.cross_entropy(x, t, reduction="none"), log_c, rtol=rtol)
    np.testing.assert_allclose(nbce.cross_entropy(x, t, reduction="none", label_smoothing=0.3,
                                                  weight=np.full(n, 2.0)), 2 * log_c, rtol=rtol)
    y = np.full((3, n), 1 / n)
    np.testing.assert_allclose(nbce.cross_entropy(x, y, reduction="none", label_smoothing=0.1), log_c, rtol=rtol)
    np.testing.assert_allclose(nbce.evaluate(x, t).loss, log_c, rtol=rtol)


@pytest.mark.parametrize("masked", [255, 256, 2047, 2048])
def test_long_float64_rows_masked_with_the_lowest_float(masked, backend):
    # Entries at finfo.min (a common mask) before the rest of a long row: the
    # merge that rescales the blocks before a rise of ~1.8e308 drops their
    # terms, and with them their share of the entropy's moment (not NaN).
    n = 4096
    x = np.zeros((2, n))
    x[:, :masked] = np.finfo(np.float64).min
    x[0, 300 if masked < 300 else n - 5] = 1.0
    t = np.array([300 if masked < 300 else n - 5, n - 1])
    live = x[:, masked:]
    p = np.exp(live - live.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    entropy = -(p * np.log(p)).sum(axis=1)
    x_there, t_there = backend.to_device(x), backend.to_device(t)
    np.testing.assert_allclose(backend.to_host(nbce.entropy(x_there)), entropy, rtol=1e-13)
    np.testing.assert_allclose(nbce.evaluate(x_there, t_there).entropy, entropy.mean(), rtol=1e-13)
    expected = -np.log(p[np.arange(2), t - masked])
    got = nbce.cross_entropy(x_there, t_there, reduction="none")
    np.testing.assert_allclose(backend.to_host(got), expected, rtol=1e-13)
