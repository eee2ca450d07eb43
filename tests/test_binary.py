"""binary_cross_entropy and binary_cross_entropy_with_logits against the reference."""

import numpy as np
import pytest

import nbce
from conftest import assert_close, make_logits, np_dtype
import reference as ref

REDUCTIONS = ["none", "mean", "sum"]
SHAPES = [(0,), (1,), (17,), (6, 5), (3, 4, 7), (2, 5000)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_probabilities(shape, reduction, dtype, rng):
    p = rng.random(shape).astype(np_dtype(dtype))
    y = rng.random(shape).astype(np_dtype(dtype))
    got = nbce.binary_cross_entropy(p, y, reduction=reduction)
    assert_close(got, ref.binary_cross_entropy(p, y, reduction=reduction), dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_logits(shape, reduction, dtype, rng):
    x = make_logits(rng, shape, dtype, scale=4.0)
    y = (rng.random(shape) < 0.5).astype(np_dtype(dtype))
    got = nbce.binary_cross_entropy_with_logits(x, y, reduction=reduction)
    assert_close(got, ref.binary_cross_entropy_with_logits(x, y, reduction=reduction), dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_weights_broadcast(reduction, rng):
    x = make_logits(rng, (8, 6), "float64")
    y = rng.random((8, 6))
    weight = rng.random((8, 1))
    pos_weight = rng.random(6) * 3
    got = nbce.binary_cross_entropy_with_logits(x, y, weight=weight, pos_weight=pos_weight, reduction=reduction)
    expected = ref.binary_cross_entropy_with_logits(x, y, weight=weight, pos_weight=pos_weight, reduction=reduction)
    assert_close(got, expected, "float64")
    p = 1 / (1 + np.exp(-x))
    assert_close(nbce.binary_cross_entropy(p, y, weight=weight, reduction=reduction),
                 ref.binary_cross_entropy(p, y, weight=weight, reduction=reduction), "float64")


@pytest.mark.parametrize("kind", ["int64", "uint8", "bool", "python int"])
def test_integer_weights_count_as_their_values(kind, rng):
    x = make_logits(rng, (8, 6), "float32")
    y = rng.random((8, 6)).astype(np.float32)
    weight = rng.integers(0, 4, 6)
    if kind == "python int":
        weight, pos_weight = 2, 3
    else:
        weight, pos_weight = weight.astype(kind), (weight + 1).astype(kind)
    floats = np.asarray(weight, np.float64), np.asarray(pos_weight, np.float64)
    got = nbce.binary_cross_entropy_with_logits(x, y, weight=weight, pos_weight=pos_weight, reduction="none")
    assert np.array_equal(got, nbce.binary_cross_entropy_with_logits(x, y, weight=floats[0], pos_weight=floats[1],
                                                                      reduction="none"))
    p = 1 / (1 + np.exp(-x))
    assert nbce.binary_cross_entropy(p, y, weight=weight) == nbce.binary_cross_entropy(p, y, weight=floats[0])


@pytest.mark.parametrize("probs, target, message", [
    (np.array(0.5), np.array(-3.0), r"target = -3.0 is not a probability"),
    (1.5, 1.0, r"probs = 1.5 is not a probability"),
    (np.float32(-0.5), np.float32(1.0), r"probs = -0.5 is not a probability"),
    ([0.5, 1.5], [1.0, 1.0], r"probs\[1\] = 1.5 is not a probability"),
])
def test_values_outside_the_unit_interval_raise_at_any_rank(probs, target, message):
    # A 0-d input once gave the formula's value (0.693 for a target of -3).
    with pytest.raises(ValueError, match=message):
        nbce.binary_cross_entropy(probs, target, reduction="none")


def test_logits_stable_at_huge_magnitudes():
    x = np.array([1e4, -1e4, 1e6, -1e6, 3e38, -3e38, 0.0], np.float32)
    y = np.array([0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.5], np.float32)
    got = nbce.binary_cross_entropy_with_logits(x, y, reduction="none")
    np.testing.assert_allclose(got, [1e4, 1e4, 0.0, 0.0, 3e38, 3e38, np.log(2)], rtol=1e-6)


def test_probability_log_is_clamped_at_minus_100():
    p = np.array([0.0, 1.0, 0.0, 1.0])
    y = np.array([1.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(nbce.binary_cross_entropy(p, y, reduction="none"), [100.0, 100.0, 0.0, 0.0])


def test_zero_dimensional_inputs():
    assert_close(nbce.binary_cross_entropy(np.float64(0.3), np.float64(1.0)), -np.log(0.3), "float64")
    got = nbce.binary_cross_entropy_with_logits(np.float64(2.0), np.float64(0.0), reduction="none")
    assert np.shape(got) == ()
    assert_close(got, np.log1p(np.exp(2.0)), "float64")


def test_nan_propagates(rng):
    x = np.array([0.5, np.nan, 0.2])
    y = np.array([1.0, 1.0, 0.0])
    out = nbce.binary_cross_entropy(x, y, reduction="none")
    assert np.isnan(out[1]) and np.isfinite(out[[0, 2]]).all()
    assert np.isnan(nbce.binary_cross_entropy_with_logits(x, y))


def test_strided_inputs(rng):
    x = make_logits(rng, (10, 12), "float32")[::2, ::3]
    y = rng.random((10, 12)).astype(np.float32)[1::2, ::3]
    assert_close(nbce.binary_cross_entropy_with_logits(x, y), ref.binary_cross_entropy_with_logits(x, y), "float32")


def test_logits_far_below_zero_do_not_cancel(backend):
    """(1 - y) x + c (log1p(e^-|x|) - x) cancels for x << 0; the loss there is
    -pos_weight y x + c log1p(e^x), never negative (the form PyTorch rounds to 0)."""
    x = np.array([-1e12, -50.0, -1e12])
    y = np.array([0.1184783048901004, 0.3, 1.0])
    got = backend.to_host(nbce.binary_cross_entropy_with_logits(backend.to_device(x), backend.to_device(y),
                                                                pos_weight=0.0, reduction="none"))
    np.testing.assert_allclose(got, [0.0, 0.7 * np.log1p(np.exp(-50.0)), 0.0], rtol=1e-12, atol=0)


# Shapes whose rows cross the kernel's chunk boundaries (``_binary.CHUNK``
# elements each), with the weight layouts that keep rows apart.
CHUNK = 1 << 15


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_rows_across_chunks(reduction, dtype, rng):
    shape = (5, CHUNK // 3 + 7, 3)
    x = make_logits(rng, shape, dtype, scale=4.0)
    y = rng.random(shape).astype(np_dtype(dtype))
    weight = rng.random((5, 1, 1))
    pos_weight = rng.random(3) * 3
    got = nbce.binary_cross_entropy_with_logits(x, y, weight=weight, pos_weight=pos_weight, reduction=reduction)
    expected = ref.binary_cross_entropy_with_logits(x, y, weight=weight, pos_weight=pos_weight, reduction=reduction)
    assert_close(got, expected, dtype)
    p = rng.random(shape).astype(np_dtype(dtype))
    assert_close(nbce.binary_cross_entropy(p, y, weight=weight, reduction=reduction),
                 ref.binary_cross_entropy(p, y, weight=weight, reduction=reduction), dtype)


@pytest.mark.parametrize("layout", ["transposed", "column", "every_other"])
def test_layouts_across_chunks(layout, rng):
    x = make_logits(rng, (3 * CHUNK + 11,), "float32")
    y = (rng.random(x.shape) < 0.5).astype(np.float32)
    if layout == "transposed":
        x, y = x[:-11].reshape(CHUNK, 3).T, y[:-11].reshape(CHUNK, 3).T
    elif layout == "column":
        x, y = x[:, None], y[:, None]
    else:
        x, y = x[1::2], y[::2][:x[1::2].size]
    for reduction in REDUCTIONS:
        assert_close(nbce.binary_cross_entropy_with_logits(x, y, reduction=reduction),
                     ref.binary_cross_entropy_with_logits(x, y, reduction=reduction), "float32")


def test_results_do_not_depend_on_the_thread_count(rng):
    import numba

    shape = (7, 3 * CHUNK // 7 + 5)
    x = make_logits(rng, shape, "float32")
    y = rng.random(shape).astype(np.float32)
    p = rng.random(shape).astype(np.float32)
    weight = rng.random(shape[1])
    before = numba.get_num_threads()
    results = []
    try:
        for threads in sorted({1, before}):
            numba.set_num_threads(threads)
            results.append([nbce.binary_cross_entropy_with_logits(x, y, weight=weight, reduction="sum"),
                            nbce.binary_cross_entropy(p, y, reduction="mean")])
    finally:
        numba.set_num_threads(before)
    assert all(np.array_equal(r, results[0]) for r in results)


def test_small_losses_keep_their_relative_accuracy():
    # softplus(x) for x << 0 and -log(1 - p) for tiny p: PyTorch's formulas
    # would lose them to cancellation (logits) or to 1 - p rounding to 1 (float32).
    x = np.array([-20.0, -50.0, -80.0], np.float32)
    got = nbce.binary_cross_entropy_with_logits(x, np.zeros(3, np.float32), reduction="none")
    np.testing.assert_allclose(got, np.log1p(np.exp(x.astype(np.float64))), rtol=1e-6)
    p = np.array([1e-9, 3e-12, 2e-30], np.float32)
    got = nbce.binary_cross_entropy(p, np.zeros(3, np.float32), reduction="none")
    np.testing.assert_allclose(got, -np.log1p(-p.astype(np.float64)), rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_infinite_logits_follow_pytorch(dtype):
    """(1 - y) x + (1 + (pw - 1) y) softplus(-x) with inf - inf = NaN, as PyTorch evaluates it."""
    x = np.repeat([np.inf, -np.inf], 4).astype(dtype)
    y = np.tile([0.0, 1.0, 0.5, 2.0], 2).astype(dtype)
    pos_weight = np.float64(1.5)
    with np.errstate(invalid="ignore"):
        wide = x.astype(np.float64)
        expected = (1 - y) * wide + (1 + (pos_weight - 1) * y) * (np.log1p(np.exp(-np.abs(wide))) + np.maximum(-wide, 0))
    got = nbce.binary_cross_entropy_with_logits(x, y, pos_weight=pos_weight, reduction="none")
    np.testing.assert_array_equal(got, expected.astype(dtype))
