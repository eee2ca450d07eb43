"""logsumexp, log_softmax, softmax and entropy against the float64 reference."""

import numpy as np
import pytest

import nbce
from nbce import _arrays
from nbce.cpu import kernels
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


# --- The element-wise pass: the error bounds stated in nbce.cpu._normalize ---

U32 = 2.0**-24


def _bound_rows(dtype):
    """Ordinary rows, a wide spread, -inf masks, equal and opposite huge logits."""
    rng = np.random.default_rng(7)
    top = {"float32": float(np.finfo(np.float32).max), "bfloat16": 3.38e38, "float16": 65504.0}[dtype]
    huge = 3e38 if dtype in ("float32", "bfloat16") else 6e4
    rows = [rng.standard_normal(64) * 3, rng.standard_normal(64) * 30, rng.uniform(-110, 0, 64),
            np.where(np.arange(64) % 3 == 0, -np.inf, rng.standard_normal(64)),
            np.full(64, huge), np.where(np.arange(64) % 2 == 0, huge, -huge), np.full(64, -top)]
    return np.array(rows).astype(np_dtype(dtype))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_float32_output_pass_within_its_stated_bound(dtype):
    """Given the row statistics (c, log s), log p is within 2u |log p| and p
    within u (2 |log p| + 2.1) p + 2**-148, u = 2**-24 (float64 reference
    from the same float32 values, c and log s)."""
    from nbce._arrays import storage_view
    from nbce.cpu import _normalize

    x = _bound_rows(dtype)
    wide = x.astype(np.float64)
    c = wide.max(axis=1, keepdims=True)
    with np.errstate(over="ignore"):
        log_s = np.log(np.exp(wide - c).sum(axis=1, keepdims=True))
        d = wide - c
        exact_lp = d - log_s
    exact_p = np.exp(exact_lp)
    words = storage_view(x)
    for r in range(x.shape[0]):
        lp = np.full(x.shape[1], np.nan, np.float32)
        p = np.full(x.shape[1], np.nan, np.float32)
        _normalize.write_normalized(words[r], 0, x.shape[1], c[r, 0], log_s[r, 0], False, lp, 0)
        _normalize.write_normalized(words[r], 0, x.shape[1], c[r, 0], log_s[r, 0], True, p, 0)
        finite = np.isfinite(exact_lp[r]) & (exact_lp[r] >= -np.finfo(np.float32).max)
        assert np.all(np.abs(lp[finite] - exact_lp[r][finite]) <= 2 * U32 * np.abs(exact_lp[r][finite]))
        np.testing.assert_array_equal(lp[~finite], -np.inf)
        with np.errstate(invalid="ignore"):
            allowed = U32 * (2 * np.abs(exact_lp[r]) + 2.1) * exact_p[r] + 2.0**-148
        allowed[~np.isfinite(exact_lp[r])] = 0.0
        assert np.all(np.abs(p - exact_p[r]) <= allowed)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("shape", [(6, 1), (0, 7), (3, 5000), (2, 32768 + 5)])
def test_narrow_results_within_the_bound_plus_the_row_statistics(dtype, shape, rng):
    """End to end: the pass's bound plus an absolute 1e-6 in log s (float32 block sums)."""
    x = make_logits(rng, shape, dtype, scale=8.0)
    lp, expected_lp = nbce.log_softmax(x), ref.log_softmax(x)
    assert lp.dtype == np.float32 and lp.shape == x.shape
    assert np.all(np.abs(lp - expected_lp) <= 2 * U32 * np.abs(expected_lp) + 1e-6)
    p, expected_p = nbce.softmax(x), ref.softmax(x)
    assert np.all(np.abs(p - expected_p) <= (U32 * (2 * np.abs(expected_lp) + 2.1) + 1.1e-6) * expected_p + 2.0**-148)


EXTREME_ROWS = {
    "±3e38": [3e38, -3e38, 1e38, 0.0],
    "largest": [3.4028235e38, 3.4028235e38, -3.4028235e38, 1.0],
    "-inf mask": [-np.inf, 2.0, -np.inf, 1.0],
    "equal huge": [1e30, 1e30, 1e30, 1e30],
    "equal huge negative": [-1e30, -1e30, -1e30, -1e30],
    "all -inf": [-np.inf] * 4,
    "+inf": [0.0, np.inf, 1.0, 2.0],
}


@pytest.mark.parametrize("row", EXTREME_ROWS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_extreme_rows_match_the_reference(row, dtype):
    x = np.array([EXTREME_ROWS[row]] * 3, dtype=dtype)
    rtol = 1e-12 if dtype == "float64" else 2e-7
    with np.errstate(over="ignore"):
        expected_lp = ref.log_softmax(x).astype(dtype)
    np.testing.assert_allclose(nbce.log_softmax(x), expected_lp, rtol=rtol, atol=0)
    np.testing.assert_allclose(nbce.softmax(x), ref.softmax(x), rtol=rtol * 4, atol=1e-300)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_one_class_gives_zero_and_one(dtype):
    x = make_logits(np.random.default_rng(3), (4, 1), dtype)
    np.testing.assert_array_equal(nbce.log_softmax(x), 0.0)
    np.testing.assert_array_equal(nbce.softmax(x), 1.0)


# --- out= ---

NORMALIZERS = {"log_softmax": (nbce.log_softmax, ref.log_softmax), "softmax": (nbce.softmax, ref.softmax)}


def _poisoned(shape, dtype):
    return np.full(shape, np.nan, dtype=dtype)


@pytest.mark.parametrize("name", NORMALIZERS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_out_is_returned_and_every_element_written(name, dtype, rng):
    ours, theirs = NORMALIZERS[name]
    x = make_logits(rng, (5, 2100), dtype)
    out = _poisoned(x.shape, np.float64 if dtype == "float64" else np.float32)
    assert ours(x, out=out) is out
    assert not np.isnan(out).any()
    assert_close(out, theirs(x), dtype)
    np.testing.assert_array_equal(out, ours(x))


OUT_LAYOUTS = {
    "fortran": lambda shape: np.asfortranarray(_poisoned(shape, np.float32)),
    "transposed": lambda shape: _poisoned(shape[::-1], np.float32).T,
    "strided rows": lambda shape: _poisoned((2 * shape[0], shape[1]), np.float32)[::2],
    "strided classes": lambda shape: _poisoned((shape[0], 3 * shape[1]), np.float32)[:, 1::3],
}


@pytest.mark.parametrize("name", NORMALIZERS)
@pytest.mark.parametrize("layout", OUT_LAYOUTS)
def test_non_contiguous_out(name, layout, rng):
    ours, theirs = NORMALIZERS[name]
    x = make_logits(rng, (7, 300), "float32")
    out = OUT_LAYOUTS[layout](x.shape)
    assert ours(x, out=out) is out
    assert_close(out, theirs(x), "float32")
    if out.base is not None and out.base.size > out.size:  # the elements between out's were not touched
        assert np.isnan(out.base).sum() == out.base.size - out.size


@pytest.mark.parametrize("name", NORMALIZERS)
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_out_with_any_class_axis(name, axis, rng):
    ours, theirs = NORMALIZERS[name]
    x = make_logits(rng, (3, 40, 5), "float64")
    out = _poisoned(x.shape, np.float64)
    assert ours(x, axis=axis, out=out) is out
    assert_close(out, theirs(x, axis=axis), "float64")


@pytest.mark.parametrize("name", NORMALIZERS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("view", ["contiguous", "transposed", "strided classes", "short rows", "short rows transposed"])
def test_in_place(name, dtype, view, rng):
    ours, theirs = NORMALIZERS[name]
    whole = make_logits(rng, (6, 3000), dtype)
    short = make_logits(rng, (300, 7), dtype)
    x = {"contiguous": whole, "transposed": whole.T, "strided classes": whole[:, ::3], "short rows": short,
         "short rows transposed": short.T}[view]
    expected = theirs(x)
    assert ours(x, out=x) is x
    assert_close(x, expected, dtype)


@pytest.mark.parametrize("name", NORMALIZERS)
def test_ndarray_subclass_out_and_in_place(name, rng):
    """An ``out=`` of an ndarray subclass (np.matrix stays 2-D when reshaped,
    memmaps are subclasses too) is written through a flat view of its memory."""
    ours, theirs = NORMALIZERS[name]
    x = make_logits(rng, (4, 50), "float32")
    expected = theirs(x)
    out = np.full(x.shape, np.nan, np.float32).view(np.matrix)
    assert ours(x, out=out) is out
    assert_close(np.asarray(out), expected, "float32")
    inside = x.copy().view(np.matrix)
    assert ours(inside, out=inside) is inside
    assert_close(np.asarray(inside), expected, "float32")


def test_empty_batch_and_one_dimensional_out(rng):
    x = np.zeros((0, 5), np.float32)
    out = np.empty((0, 5), np.float32)
    assert nbce.softmax(x, out=out) is out
    v = make_logits(rng, (9,), "float64")
    out = _poisoned(9, np.float64)
    assert nbce.log_softmax(v, out=out) is out
    assert_close(out, ref.log_softmax(v), "float64")


X32 = np.zeros((4, 6), np.float32)


@pytest.mark.parametrize("out, error, match", [
    (np.empty((4, 5), np.float32), ValueError, r"out has shape \(4, 5\), expected \(4, 6\)"),
    (np.empty((6, 4), np.float32), ValueError, r"expected \(4, 6\) \(the shape of x\)"),
    (np.empty((4, 6), np.float64), TypeError, r"out has dtype float64, expected float32"),
    (np.empty((4, 6), ">f4"), TypeError, r"expected float32 in native byte order"),
    (np.empty((4, 6), np.float16), TypeError, r"out has dtype float16, expected float32"),
    ([[0.0] * 6] * 4, TypeError, r"out must be a NumPy array or a PyTorch CPU tensor for host input, got builtins.list"),
    (np.broadcast_to(np.float32(0), (4, 6)), ValueError, "out is read-only"),
    (np.lib.stride_tricks.as_strided(np.zeros(6, np.float32), (4, 6), (0, 4)), ValueError,
     r"out has strides \(0, 4\).*positive multiples of the item size"),
    (np.zeros((4, 6), np.float32)[::-1], ValueError, r"out has strides \(-24, 4\)"),
], ids=["shape", "transposed shape", "dtype", "byte order", "half", "list", "read-only", "zero stride",
        "negative stride"])
def test_bad_out_is_refused(out, error, match):
    for function in (nbce.softmax, nbce.log_softmax):
        with pytest.raises(error, match=match):
            function(X32, out=out)


def test_float64_out_needs_float64_and_halves_need_float32(rng):
    x = make_logits(rng, (3, 4), "float16")
    with pytest.raises(TypeError, match="expected float32"):
        nbce.softmax(x, out=x)
    with pytest.raises(TypeError, match="out has dtype float32, expected float64"):
        nbce.softmax(np.zeros((3, 4)), out=np.empty((3, 4), np.float32))


def test_partial_overlap_is_refused_and_disjoint_views_are_not(rng):
    whole = make_logits(rng, (8, 10), "float32")
    with pytest.raises(ValueError, match="out overlaps x's memory without being x itself"):
        nbce.softmax(whole[:4], out=whole[2:6])
    with pytest.raises(ValueError, match="overlaps"):
        nbce.log_softmax(whole[:, :5], out=whole[:, 1:6])
    with pytest.raises(ValueError, match="overlaps"):  # the same memory in another layout
        square = make_logits(rng, (6, 6), "float32")
        nbce.softmax(square, out=square.T)
    expected = ref.softmax(whole[:4])
    nbce.softmax(whole[:4], out=whole[4:])  # disjoint halves of one array
    assert_close(whole[4:], expected, "float32")
    expected = ref.log_softmax(whole[:, ::2])
    nbce.log_softmax(whole[:, ::2], out=whole[:, 1::2])  # interleaved, sharing no element
    assert_close(whole[:, 1::2], expected, "float32")


def test_torch_out_tensors(rng):
    torch = pytest.importorskip("torch")
    x = make_logits(rng, (5, 70), "float32")
    out = torch.full((5, 70), float("nan"))
    assert nbce.softmax(x, out=out) is out
    assert_close(out.numpy(), torch.softmax(torch.from_numpy(x), dim=1).double().numpy(), "float32")
    tensor = torch.from_numpy(x.copy())
    assert nbce.log_softmax(tensor, out=tensor) is tensor  # in place, as torch's own out= allows
    assert_close(tensor.numpy(), torch.log_softmax(torch.from_numpy(x), dim=1).double().numpy(), "float32")
    with pytest.raises(ValueError, match="out requires grad"):
        nbce.softmax(x, out=torch.zeros((5, 70), requires_grad=True))
    with pytest.raises(TypeError, match="expected float32"):
        nbce.softmax(x, out=torch.zeros((5, 70), dtype=torch.bfloat16))


def _kernel_signatures():
    return {(name, sig) for name, f in vars(kernels).items() for sig in getattr(f, "signatures", ())}


@pytest.mark.parametrize("function", ["logsumexp", "log_softmax", "entropy"])
def test_empty_inputs_reach_the_kernels_read_only_like_the_rest(function):
    """Empty or not, an input is handed to the kernels as a read-only view: one
    compiled specialization per dtype, not two (each costs seconds of
    compilation on first use)."""
    empty = np.ones((0, 5), np.float32)
    assert empty.flags.writeable and not _arrays.as_rows(empty, -1).base.flags.writeable
    getattr(nbce, function)(np.ones((2, 5), np.float32))
    known = _kernel_signatures()
    assert getattr(nbce, function)(empty).shape[0] == 0
    assert _kernel_signatures() == known
