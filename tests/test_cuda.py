"""The GPU backend, on Numba's CUDA simulator in CI (on a real GPU with NBCE_TEST_REAL_GPU=1).

Threads per block are lowered to 8 so that the simulator runs several blocks,
partial blocks and rows split over several blocks.
"""

import warnings

import numpy as np
import pytest

import nbce
import reference as ref
from conftest import make_logits

cuda_backend = pytest.importorskip("nbce.cuda")
from numba import cuda  # noqa: E402  (after the simulator switch in conftest)


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(cuda_backend, "THREADS", 8)
    monkeypatch.setattr(cuda_backend, "MIN_ELEMENTS_PER_THREAD", 4)


def host(result):
    return np.asarray(result.copy_to_host())


def close(got, expected, dtype="float64"):
    rtol = 1e-12 if dtype == "float64" else 2e-6
    np.testing.assert_allclose(host(got), expected, rtol=rtol, atol=rtol)


SHAPES = [(5, 1), (4, 3), (3, 17), (2, 200), (0, 4)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_softmax_family(shape, dtype, rng):
    x = make_logits(rng, shape, dtype)
    d = cuda.to_device(x)
    close(nbce.logsumexp(d), ref.logsumexp(x), dtype)
    close(nbce.entropy(d), ref.entropy(x), dtype)
    close(nbce.log_softmax(d), ref.log_softmax(x), dtype)
    close(nbce.softmax(d), ref.softmax(x), dtype)
    assert nbce.logsumexp(d).dtype == (np.float64 if dtype == "float64" else np.float32)


def test_launch_shapes_cover_three_regimes():
    splits, group, _ = cuda_backend._launch_shape(1000, 3)
    assert splits == 1 and group == 1          # many rows per block
    splits, group, _ = cuda_backend._launch_shape(1000, 300)
    assert splits == 1 and group == 8          # a block per row
    splits, group, _ = cuda_backend._launch_shape(2, 300)
    assert splits > 1 and group == 8           # rows split over blocks


def test_rows_split_over_blocks_merge_exactly(rng):
    x = make_logits(rng, (2, 300), "float64", scale=20.0)
    close(nbce.logsumexp(cuda.to_device(x)), ref.logsumexp(x))
    close(nbce.entropy(cuda.to_device(x)), ref.entropy(x))


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
@pytest.mark.parametrize("offset", [0, 1, 3])
@pytest.mark.parametrize("shape", [(3, 1), (3, 7), (3, 8), (3, 9), (5, 33), (2, 300)])
def test_wide_loads_at_every_alignment(shape, offset, dtype, rng):
    """Rows start anywhere in a 16-byte slot: the first and last slot of each
    row are cut by its ends, whole slots in between are read with one wide load."""
    x = make_logits(rng, shape, dtype)
    flat = cuda.to_device(np.concatenate([np.zeros(offset, dtype), x.ravel()]))
    d = flat[offset:].reshape(*shape)
    assert cuda_backend.dev.address(d) % 16 == offset * x.itemsize % 16
    close(nbce.logsumexp(d), ref.logsumexp(x), dtype)
    close(nbce.entropy(d), ref.entropy(x), dtype)
    t = rng.integers(0, shape[1], shape[0])
    result = nbce.evaluate(d, cuda.to_device(t), top_k=(1, 2))
    expected = nbce.evaluate(x, t, top_k=(1, 2))
    assert result.accuracy == expected.accuracy
    np.testing.assert_allclose(result.loss, expected.loss, rtol=1e-6)


EDGE_ROWS = np.array([
    [-np.inf, -np.inf, -np.inf, -np.inf],
    [-np.inf, 2.0, -np.inf, 1.0],
    [1.0, np.inf, 0.0, 2.0],
    [1.0, np.nan, 0.0, 2.0],
    [3e38, -3e38, 1e38, 0.0],
])


def test_edge_rows():
    got = host(nbce.logsumexp(cuda.to_device(EDGE_ROWS)))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref.logsumexp(EDGE_ROWS)))
    np.testing.assert_allclose(got, ref.logsumexp(EDGE_ROWS), rtol=1e-12)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("options", [
    dict(),
    dict(weight="random", ignore_fraction=0.3, label_smoothing=0.2),
    dict(input_type="log_probs", label_smoothing=0.1),
    dict(input_type="probs"),
], ids=["plain", "weighted-ignored-smoothed", "log_probs", "probs"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cross_entropy_class_indices(reduction, options, dtype, rng):
    options = dict(options)
    n, c = 6, 37
    x = make_logits(rng, (n, c), dtype)
    if options.get("input_type") == "log_probs":
        x = ref.log_softmax(x).astype(dtype)
    elif options.get("input_type") == "probs":
        x = ref.softmax(x).astype(dtype)
    if options.get("weight") == "random":
        options["weight"] = rng.random(c) + 0.5
    t = rng.integers(0, c, n)
    if options.pop("ignore_fraction", 0):
        t[::3] = -100
    got = nbce.cross_entropy(cuda.to_device(x), cuda.to_device(t), reduction=reduction, **options)
    expected = ref.cross_entropy(x, t, reduction=reduction, **options)
    close(got, expected, dtype)
    if reduction != "none":
        assert got.shape == ()


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_cross_entropy_soft_targets_and_host_targets(reduction, rng):
    x = make_logits(rng, (5, 9), "float64")
    y = rng.random((5, 9))
    y /= y.sum(axis=1, keepdims=True)
    w = rng.random(9)
    got = nbce.cross_entropy(cuda.to_device(x), cuda.to_device(y), weight=w, label_smoothing=0.1, reduction=reduction)
    close(got, ref.cross_entropy(x, y, weight=w, label_smoothing=0.1, reduction=reduction))
    t = rng.integers(0, 9, 5)  # host targets move to the device
    close(nbce.cross_entropy(cuda.to_device(x), t, reduction=reduction), ref.cross_entropy(x, t, reduction=reduction))


def test_all_ignored_mean_is_nan(rng):
    x = cuda.to_device(make_logits(rng, (3, 4), "float32"))
    assert np.isnan(host(nbce.cross_entropy(x, np.full(3, -100))))


def test_bad_target_raises_the_cpu_error(rng):
    x = make_logits(rng, (4, 5), "float32")
    t = np.array([0, 1, 7, 9])
    with pytest.raises(ValueError) as on_cpu:
        nbce.cross_entropy(x, t)
    with pytest.raises(ValueError) as on_gpu:
        nbce.cross_entropy(cuda.to_device(x), cuda.to_device(t))
    assert str(on_gpu.value) == str(on_cpu.value)
    assert "target[2] = 7" in str(on_gpu.value)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("shape", [(4, 6), (700,), (3, 50, 7)])
def test_binary(reduction, shape, rng):
    """Element-wise, over several blocks (a 1-D input too), with weights per
    element or per row and pos_weight per last-axis entry."""
    x = make_logits(rng, shape, "float64")
    y = rng.random(shape)
    pw = rng.random(shape[-1]) * 2
    w = rng.random(shape if len(shape) < 3 else shape[:-1] + (1,))
    got = nbce.binary_cross_entropy_with_logits(cuda.to_device(x), cuda.to_device(y), weight=w, pos_weight=pw,
                                                reduction=reduction)
    close(got, ref.binary_cross_entropy_with_logits(x, y, weight=w, pos_weight=pw, reduction=reduction))
    p = 1 / (1 + np.exp(-x))
    close(nbce.binary_cross_entropy(cuda.to_device(p), cuda.to_device(y), reduction=reduction),
          ref.binary_cross_entropy(p, y, reduction=reduction))


def test_binary_bad_probability(rng):
    p = np.array([[0.2, 0.5], [1.5, 0.1]])
    with pytest.raises(ValueError, match=r"probs\[1, 0\] = 1.5"):
        nbce.binary_cross_entropy(cuda.to_device(p), cuda.to_device(np.zeros((2, 2))))


def test_reductions_are_deterministic(rng):
    x = cuda.to_device(make_logits(rng, (40, 30), "float32"))
    t = cuda.to_device(rng.integers(0, 30, 40))
    first = host(nbce.cross_entropy(x, t))
    assert all(host(nbce.cross_entropy(x, t)) == first for _ in range(3))


def test_bfloat16_words_widen_like_ml_dtypes():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from nbce.cuda import _device

    values = np.array([1.5, -2.25, 3e38, -1e-39, 0.0], dtype=ml_dtypes.bfloat16)

    @_device.jit
    def widen(words, out):  # a kernel: device functions run from the host only on the simulator
        i = cuda.grid(1)
        if i < words.size:
            out[i] = _device.bfloat16_to_float32(words[i])

    out = cuda.device_array(values.size, np.float32)
    with warnings.catch_warnings():  # numba-cuda's own warning about a one-block grid
        warnings.simplefilter("ignore", cuda_backend.dev.NumbaPerformanceWarning)
        widen[1, 8](cuda.to_device(values.view(np.uint16)), out)
    np.testing.assert_array_equal(out.copy_to_host(), values.astype(np.float32))


SLICES = {
    "reversed": (slice(None, None, -1), slice(None, None, -1)),
    "every_other_row": (slice(None, None, 2), slice(None)),
    "columns_sliced": (slice(None), slice(1, -1)),
}


@pytest.mark.parametrize("layout", ["fortran"] + sorted(SLICES))
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_numba_device_arrays_in_any_layout(layout, axis, rng):
    """Strided and reversed views are gathered on the device; a class axis
    that is not last comes back in its place, as a view."""
    whole = make_logits(rng, (9, 12), "float32")
    if layout == "fortran":
        x, view = whole, cuda.to_device(np.asfortranarray(whole))
    else:
        x, view = whole[SLICES[layout]], cuda.to_device(whole)[SLICES[layout]]
    assert tuple(view.strides) == x.strides or layout == "fortran"
    close(nbce.logsumexp(view, axis=axis), ref.logsumexp(x, axis=axis), "float32")
    got = nbce.log_softmax(view, axis=axis)
    assert tuple(got.shape) == x.shape
    close(got, ref.log_softmax(x, axis=axis), "float32")


def test_class_axis_in_the_middle_and_first(rng):
    x = make_logits(rng, (4, 5, 3, 2), "float64")  # (N, C, d1, d2), PyTorch's class axis 1
    t = rng.integers(0, 5, (4, 3, 2))
    d = cuda.to_device(x)
    close(nbce.cross_entropy(d, cuda.to_device(t), axis=1, reduction="none"),
          nbce.cross_entropy(x, t, axis=1, reduction="none"))
    close(nbce.softmax(d, axis=0), ref.softmax(x, axis=0))
    close(nbce.entropy(d, axis=2), ref.entropy(x, axis=2))
    y = make_logits(rng, (2, 3), "float64")
    close(nbce.binary_cross_entropy_with_logits(cuda.to_device(y.T), cuda.to_device(np.ones((3, 2))),
                                                reduction="none"),
          nbce.binary_cross_entropy_with_logits(y.T, np.ones((3, 2)), reduction="none"))


def test_bfloat16_words_on_one_side_only(rng):
    """Logits and their class probabilities, or binary targets and weights,
    each widen by their own storage when only one of them is bfloat16."""
    ml_dtypes = pytest.importorskip("ml_dtypes")

    def device_floats(a):
        if a.dtype == ml_dtypes.bfloat16:
            return cuda_backend.DeviceFloats(cuda.to_device(a.view(np.uint16)), np.dtype(np.float32), True, None)
        return cuda_backend.DeviceFloats(cuda.to_device(a), a.dtype, False, None)

    x = make_logits(rng, (6, 20), "float32")
    p = nbce.softmax(make_logits(rng, (6, 20), "float32"))
    weight = rng.uniform(0.5, 2.0, 20)
    for logits, probs in ((x, p.astype(ml_dtypes.bfloat16)), (x.astype(ml_dtypes.bfloat16), p)):
        rows = cuda_backend.as_rows(device_floats(logits), 1)
        got = cuda_backend.cross_entropy_soft(rows, cuda_backend.as_rows(device_floats(probs), 1), weight, 0.1, 0, "none",
                                               np.float64)
        close(got, nbce.cross_entropy(logits, probs, weight=weight, label_smoothing=0.1, reduction="none"), "float32")
        out = cuda_backend.binary_cross_entropy(True, device_floats(logits), device_floats(probs), weight, None, "none",
                                                np.float64)
        expected = nbce.binary_cross_entropy_with_logits(logits, probs, weight=weight, reduction="none")
        close(out, expected, "float32")


def test_operands_on_another_gpu_are_refused():
    class Device:
        def __init__(self, index):
            self.index = index

    class Tensor:  # stands in for a torch CUDA tensor on GPU 1
        __module__ = "torch"
        device = Device(1)

    assert cuda_backend.device_ordinal(Tensor()) == 1
    with pytest.raises(ValueError, match="target is on GPU 1 but the logits are on GPU 0"):
        cuda_backend.check_same_device(cuda_backend.device_ordinal(Tensor()), 0, "target")
    cuda_backend.check_same_device(None, 0, "target")  # unknown: Numba device arrays


def test_binary_refusals_and_device_weight_broadcasting_match_the_cpu(rng):
    """Targets outside [0, 1] are refused as on the CPU (probabilities first);
    device weights broadcast by NumPy's rules, (R, 1) included."""
    x, y = rng.standard_normal((4, 5)), rng.uniform(0.0, 1.0, (4, 5))
    for w in (rng.uniform(0, 2, (4, 1)), rng.uniform(0, 2, (5,)), rng.uniform(0, 2, (1, 5)), rng.uniform(0, 2, ())):
        for keyword in ("weight", "pos_weight"):
            got = nbce.binary_cross_entropy_with_logits(cuda.to_device(x), cuda.to_device(y), reduction="none",
                                                        **{keyword: cuda.to_device(w)})
            close(got, nbce.binary_cross_entropy_with_logits(x, y, reduction="none", **{keyword: w}))
    with pytest.raises(ValueError, match=r"weight of shape \(3,\) cannot be broadcast"):
        nbce.binary_cross_entropy_with_logits(cuda.to_device(x), cuda.to_device(y), weight=cuda.to_device(np.ones(3)))
    p = rng.uniform(0.0, 1.0, (4, 5))
    bad_target = y.copy()
    bad_target[2, 3] = 1.5
    bad_probs = p.copy()
    bad_probs[3, 0] = -0.5
    for probs, target, match in ((p, bad_target, r"target\[2, 3\] = 1.5"), (bad_probs, bad_target, r"probs\[3, 0\]")):
        for a, b in ((probs, target), (cuda.to_device(probs), cuda.to_device(target))):
            with pytest.raises(ValueError, match=match):
                nbce.binary_cross_entropy(a, b)


def test_infinite_and_nan_rows_match_the_cpu():
    """Rows holding +inf: logsumexp +inf, the rest NaN (PyTorch's semantics); only -inf: NaN
    but logsumexp -inf; NaN propagates — the same on both backends."""
    inf = np.inf
    x = np.array([[inf, 0.0, 1.0], [-inf, -inf, -inf], [0.0, np.nan, 1.0], [-inf, 2.0, 0.0], [inf, inf, 0.0]])
    t = np.array([1, 0, 2, 0, 2])
    d = cuda.to_device(x)
    for function in (nbce.logsumexp, nbce.entropy, nbce.log_softmax, nbce.softmax):
        np.testing.assert_array_equal(host(function(d)), function(x))
    np.testing.assert_array_equal(host(nbce.cross_entropy(d, t, reduction="none")),
                                  nbce.cross_entropy(x, t, reduction="none"))
    np.testing.assert_array_equal(host(nbce.cross_entropy(d, t, reduction="none", label_smoothing=0.1)),
                                  nbce.cross_entropy(x, t, reduction="none", label_smoothing=0.1))


NORMALIZERS = {"log_softmax": (nbce.log_softmax, ref.log_softmax), "softmax": (nbce.softmax, ref.softmax)}


def poisoned(shape, dtype=np.float32, order="C"):
    return cuda.to_device(np.full(shape, np.nan, dtype=dtype, order=order))


def transposed(data):
    """A transposed view of a 2-D device array (numba-cuda's ``.T`` makes a copy on a GPU)."""
    return cuda_backend.dev.strided_view(data, 0, tuple(data.shape)[::-1], tuple(data.strides)[::-1])


@pytest.mark.parametrize("name", NORMALIZERS)
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_out_is_returned_and_every_element_written(name, dtype, rng):
    ours, theirs = NORMALIZERS[name]
    x = make_logits(rng, (4, 37), dtype)
    out = poisoned(x.shape, np.float64 if dtype == "float64" else np.float32)
    assert ours(cuda.to_device(x), out=out) is out
    assert not np.isnan(host(out)).any()
    close(out, theirs(x), dtype)


OUT_LAYOUTS = {
    "fortran": lambda shape: poisoned(shape, order="F"),
    "transposed": lambda shape: transposed(poisoned(shape[::-1])),
    "strided rows": lambda shape: poisoned((2 * shape[0], shape[1]))[::2],
    "strided classes": lambda shape: poisoned((shape[0], 3 * shape[1]))[:, 1::3],
}


@pytest.mark.parametrize("name", NORMALIZERS)
@pytest.mark.parametrize("layout", OUT_LAYOUTS)
@pytest.mark.parametrize("axis", [0, 1])
def test_non_contiguous_out(name, layout, axis, rng):
    ours, theirs = NORMALIZERS[name]
    x = make_logits(rng, (6, 21), "float32")
    out = OUT_LAYOUTS[layout](x.shape)
    assert ours(cuda.to_device(x), axis=axis, out=out) is out
    close(out, theirs(x, axis=axis), "float32")


def test_out_of_a_3d_class_axis_in_the_middle(rng):
    """A class-last array with its class axis moved into place (the layout of
    out=None's result) is written; a C-ordered (N, C, L) out is refused."""
    x = make_logits(rng, (3, 5, 4), "float64")
    out = poisoned((3, 4, 5), np.float64)
    moved = cuda_backend.move_class_axis(out, 1)
    assert nbce.softmax(cuda.to_device(x), axis=1, out=moved) is moved
    close(moved, ref.softmax(x, axis=1))
    with pytest.raises(ValueError, match=r"out's axes other than the class axis \(1\) must merge"):
        nbce.softmax(cuda.to_device(x), axis=1, out=poisoned(x.shape, np.float64))


@pytest.mark.parametrize("name", NORMALIZERS)
def test_in_place(name, rng):
    ours, theirs = NORMALIZERS[name]
    x = make_logits(rng, (5, 40), "float32")
    d = cuda.to_device(x)
    assert ours(d, out=d) is d
    close(d, theirs(x), "float32")
    transposed_x = transposed(cuda.to_device(np.ascontiguousarray(x.T)))  # class stride 5: gathered, then written in place
    assert ours(transposed_x, out=transposed_x) is transposed_x
    close(transposed_x, theirs(x), "float32")


def test_bad_out_is_refused(rng):
    x = make_logits(rng, (4, 6), "float32")
    d = cuda.to_device(x)
    cases = [
        (poisoned((4, 5)), ValueError, r"out has shape \(4, 5\), expected \(4, 6\)"),
        (poisoned((4, 6), np.float64), TypeError, "out has dtype float64, expected float32"),
        (np.empty((4, 6), np.float32), TypeError, "out must be a CUDA array .* for x in CUDA memory, got numpy.ndarray"),
        (poisoned((4, 6))[::-1], ValueError, r"out has strides \(-24, 4\)"),
        (d[1:], ValueError, r"out has shape"),
    ]
    for out, error, match in cases:
        for function in (nbce.softmax, nbce.log_softmax):
            with pytest.raises(error, match=match):
                function(d, out=out)
    with pytest.raises(TypeError, match="out must be a NumPy array or a PyTorch CPU tensor for host input, got "
                                        "numba.cuda"):
        nbce.softmax(x, out=poisoned((4, 6)))


def test_partial_overlap_is_refused(rng):
    whole = cuda.to_device(make_logits(rng, (8, 10), "float32"))
    with pytest.raises(ValueError, match="out overlaps x's memory without being x itself"):
        nbce.softmax(whole[:4], out=whole[2:6])
    square = cuda.to_device(make_logits(rng, (6, 6), "float32"))
    with pytest.raises(ValueError, match="overlaps"):
        nbce.log_softmax(square, out=transposed(square))
    expected = ref.softmax(whole[:4].copy_to_host())
    assert nbce.softmax(whole[:4], out=whole[4:]) is not None  # disjoint halves of one array
    close(whole[4:], expected, "float32")


def test_out_rows_of_an_empty_batch(rng):
    x = cuda.to_device(np.zeros((0, 5), np.float32))
    out = cuda.device_array((0, 5), np.float32)
    assert nbce.log_softmax(x, out=out) is out


def test_out_requiring_grad_is_refused_as_on_the_cpu(rng):
    class Tensor:  # stands in for a torch CUDA tensor that requires grad
        requires_grad = True

    from nbce._checks import check_out_without_grad

    with pytest.raises(ValueError, match="out requires grad"):
        check_out_without_grad(Tensor())
