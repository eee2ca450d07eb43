"""logsumexp, log_softmax, softmax and entropy against the float64 reference."""

import numpy as np
import pytest

import nbce
from conftest import FLOAT_DTYPES, assert_close, make_logits, np_dtype
import reference as ref

FUNCTIONS = {
    "logsumexp": (nbce.logsumexp, ref.logsumexp),
    "log_softmax": (nbce.log_softmax, ref.log_softmax),
    "softmax": (nbce.softmax, ref.softmax),
    "entropy": (nbce.entropy, ref.entropy),
}

SHAPES_2D = [(7, 1), (7, 2), (5, 3), (9, 17), (4, 1000), (3, 32768 + 5), (0, 5), (1, 6)]


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES_2D)
def test_matches_reference_2d(name, dtype, shape, rng):
    ours, theirs = FUNCTIONS[name]
    x = make_logits(rng, shape, dtype)
    got = ours(x)
    expected_dtype = np.float64 if dtype == "float64" else np.float32
    assert got.dtype == expected_dtype
    assert got.shape == np.shape(theirs(x))
    assert_close(got, theirs(x), dtype)


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_huge_row(name, dtype, rng):
    x = make_logits(rng, (2, 262144), dtype, scale=10.0)
    assert_close(FUNCTIONS[name][0](x), FUNCTIONS[name][1](x), dtype)


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2])
def test_axes_of_a_3d_array(name, axis, rng):
    ours, theirs = FUNCTIONS[name]
    x = make_logits(rng, (3, 5, 4), "float64")
    assert_close(ours(x, axis=axis), theirs(x, axis=axis), "float64")


VIEWS = {
    "transposed": lambda x: x.T,
    "column slice": lambda x: x[:, 1:-1],
    "strided classes": lambda x: x[:, ::3],
    "strided rows": lambda x: x[::2],
    "reversed classes": lambda x: x[:, ::-1],
    "fortran order": np.asfortranarray,
}


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_non_contiguous_views(name, view, dtype, rng):
    ours, theirs = FUNCTIONS[name]
    x = VIEWS[view](make_logits(rng, (6, 2500), dtype))
    assert_close(ours(x), theirs(x), dtype)


def test_4d_class_axis_1_like_pytorch(rng):
    x = make_logits(rng, (2, 11, 3, 5), "float32")
    for name, (ours, theirs) in FUNCTIONS.items():
        assert_close(ours(x, axis=1), theirs(x, axis=1), "float32")


def test_one_dimensional_input(rng):
    x = make_logits(rng, (10,), "float64")
    assert np.ndim(nbce.logsumexp(x)) == 0
    assert_close(nbce.logsumexp(x), ref.logsumexp(x), "float64")
    assert_close(nbce.softmax(x), ref.softmax(x), "float64")


def test_byte_swapped_and_lists(rng):
    x = make_logits(rng, (4, 9), "float64")
    assert_close(nbce.logsumexp(x.astype(">f8")), ref.logsumexp(x), "float64")
    assert_close(nbce.logsumexp(x.tolist()), ref.logsumexp(x), "float64")


def test_memmap_input(tmp_path, rng):
    x = make_logits(rng, (8, 300), "float32")
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert_close(nbce.logsumexp(mapped), ref.logsumexp(x), "float32")


EDGE_ROWS = {
    "all -inf": [-np.inf, -np.inf, -np.inf],
    "one finite": [-np.inf, 2.0, -np.inf],
    "+inf": [1.0, np.inf, 0.0],
    "nan": [1.0, np.nan, 0.0],
    "nan after -inf": [-np.inf, np.nan],
    "negative nan": [1.0, -np.float64(np.nan), 2.0],
    "huge": [3e38, -3e38, 1e38],
    "tiny differences": [1e4, 1e4 + 1e-3, 1e4 - 1e-3],
}


@pytest.mark.parametrize("row", EDGE_ROWS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_edge_rows_logsumexp(row, dtype):
    x = np.array([EDGE_ROWS[row]], dtype=dtype)
    np.testing.assert_allclose(nbce.logsumexp(x), ref.logsumexp(x), rtol=1e-6)


@pytest.mark.parametrize("row", ["all -inf", "one finite", "nan", "tiny differences"])
def test_edge_rows_softmax(row):
    x = np.array([EDGE_ROWS[row]])
    np.testing.assert_allclose(nbce.softmax(x), ref.softmax(x), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(nbce.log_softmax(x), ref.log_softmax(x), rtol=1e-12)


def test_nan_in_a_later_block_propagates():
    x = np.zeros((2, 10000), dtype=np.float32)
    x[0, 9000] = np.nan
    out = nbce.logsumexp(x)
    assert np.isnan(out[0]) and np.isfinite(out[1])
    assert np.isnan(nbce.entropy(x)[0])


def test_entropy_bounds_and_masked_classes():
    x = np.zeros((1, 8))
    np.testing.assert_allclose(nbce.entropy(x), np.log(8), rtol=1e-14)
    x[0, 4:] = -np.inf
    np.testing.assert_allclose(nbce.entropy(x), np.log(4), rtol=1e-14)
    x[0, :] = -np.inf
    x[0, 0] = 5.0
    np.testing.assert_allclose(nbce.entropy(x), 0.0, atol=1e-15)


def test_softmax_subnormal_outputs_float64():
    x = np.array([[0.0, -740.0]])
    np.testing.assert_allclose(nbce.softmax(x), ref.softmax(x), rtol=1e-13)
    assert nbce.softmax(x)[0, 1] > 0


def test_bfloat16_input_is_not_copied_to_float32(rng):
    x = make_logits(rng, (3, 40), "bfloat16")
    assert nbce.logsumexp(x).dtype == np.float32
    assert_close(nbce.logsumexp(x), ref.logsumexp(x), "bfloat16")
    assert np_dtype("bfloat16").itemsize == 2


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_rows_holding_positive_infinity_are_nan_as_in_pytorch(dtype):
    # +inf at a class that is not the target once gave an infinite loss and
    # log_softmax [-inf, nan, -inf]; PyTorch gives NaN for the whole row.
    x = np.array([[0.0, np.inf, 1.0], [np.inf, np.inf, 0.0], [-np.inf, -np.inf, -np.inf], [0.0, 1.0, -np.inf]])
    x = x.astype(np_dtype(dtype))
    expected_rows = np.array([True, True, True, False])
    for values in (nbce.log_softmax(x), nbce.softmax(x)):
        np.testing.assert_array_equal(np.isnan(values).all(axis=1), expected_rows)
        assert np.isfinite(values[3, :2]).all()
    np.testing.assert_array_equal(nbce.logsumexp(x)[:3], [np.inf, np.inf, -np.inf])
    for target in ([0, 0, 0, 0], [2, 2, 1, 1]):
        loss = nbce.cross_entropy(x, np.array(target), reduction="none")
        np.testing.assert_array_equal(np.isnan(loss), expected_rows)
    assert np.isnan(nbce.entropy(x)[:3]).all()
    assert np.isnan(nbce.evaluate(x[:1], np.array([0])).loss)
    np.testing.assert_allclose(nbce.log_softmax(x), ref.log_softmax(x), rtol=1e-6)
