"""cross_entropy against the float64 reference, over dtypes, shapes, axes and options."""

import numpy as np
import pytest

import nbce
from conftest import FLOAT_DTYPES, assert_close, make_logits
import reference as ref

REDUCTIONS = ["none", "mean", "sum"]


def class_targets(rng, shape, n_classes, dtype=np.int64, ignore_fraction=0.0, ignore_index=-100):
    t = rng.integers(0, n_classes, size=shape).astype(dtype)
    if ignore_fraction:
        t = np.where(rng.random(shape) < ignore_fraction, ignore_index, t).astype(dtype)
    return t


def soft_targets(rng, shape, dtype="float64", axis=-1):
    y = rng.random(shape)
    return (y / y.sum(axis=axis, keepdims=True)).astype(dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("n_rows,n_classes", [(7, 1), (7, 2), (5, 3), (9, 17), (6, 1000), (3, 32768 + 5), (0, 4), (1, 5)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_class_index_targets(dtype, n_rows, n_classes, reduction, rng):
    x = make_logits(rng, (n_rows, n_classes), dtype)
    t = class_targets(rng, (n_rows,), n_classes)
    got = nbce.cross_entropy(x, t, reduction=reduction)
    assert got.dtype == (np.float64 if dtype == "float64" else np.float32)
    assert_close(got, ref.cross_entropy(x, t, reduction=reduction), dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_huge_vocabulary(dtype, rng):
    x = make_logits(rng, (3, 262144), dtype, scale=5.0)
    t = class_targets(rng, (3,), 262144)
    assert_close(nbce.cross_entropy(x, t, reduction="none"), ref.cross_entropy(x, t, reduction="none"), dtype)
    assert_close(nbce.cross_entropy(x, t, label_smoothing=0.2),
                 ref.cross_entropy(x, t, label_smoothing=0.2), dtype)


OPTIONS = [
    dict(),
    dict(weight="random"),
    dict(ignore_index=2),
    dict(ignore_fraction=0.3),
    dict(label_smoothing=0.1),
    dict(label_smoothing=1.0),
    dict(weight="random", ignore_fraction=0.3, label_smoothing=0.25),
    dict(weight="with zeros", label_smoothing=0.05),
    dict(input_type="log_probs"),
    dict(input_type="log_probs", weight="random", label_smoothing=0.1),
    dict(input_type="probs"),
    dict(input_type="probs", label_smoothing=0.3, ignore_fraction=0.2),
]


def _prepare(options, rng, x, n_classes, axis):
    options = dict(options)
    if options.get("weight") == "random":
        options["weight"] = rng.random(n_classes) + 0.5
    elif options.get("weight") == "with zeros":
        options["weight"] = np.where(np.arange(n_classes) % 3 == 0, 0.0, 1.5)
    input_type = options.get("input_type", "logits")
    if input_type == "log_probs":
        x = ref.log_softmax(x, axis).astype(x.dtype)
    elif input_type == "probs":
        x = ref.softmax(x, axis).astype(x.dtype)
    return options, x


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "plain")
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_options_class_index(options, reduction, dtype, rng, backend):
    _, to_device, to_host = backend
    n_classes = 13
    x = make_logits(rng, (40, n_classes), dtype)
    options, x = _prepare(options, rng, x, n_classes, -1)
    fraction = options.pop("ignore_fraction", 0.0)
    ignore_index = options.get("ignore_index", -100)
    t = class_targets(rng, (40,), n_classes, ignore_fraction=fraction, ignore_index=ignore_index)
    got = to_host(nbce.cross_entropy(to_device(x), to_device(t), reduction=reduction, **options))
    assert_close(got, ref.cross_entropy(x, t, reduction=reduction, **options), dtype)


@pytest.mark.parametrize("options", OPTIONS[:2] + OPTIONS[4:6] + OPTIONS[8:11], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
def test_options_soft_targets(options, reduction, dtype, rng, backend):
    if backend.name == "cuda" and dtype == "bfloat16":
        pytest.skip("Numba device arrays have no bfloat16 dtype (bfloat16 reaches the GPU as torch tensors)")
    _, to_device, to_host = backend
    n_classes = 11
    x = make_logits(rng, (30, n_classes), dtype)
    options, x = _prepare(options, rng, x, n_classes, -1)
    y = soft_targets(rng, (30, n_classes), "float32")
    got = to_host(nbce.cross_entropy(to_device(x), to_device(y), reduction=reduction, **options))
    assert_close(got, ref.cross_entropy(x, y, reduction=reduction, **options), dtype)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
@pytest.mark.parametrize("target_kind", ["index", "soft"])
def test_class_axis_anywhere(axis, target_kind, rng):
    shape = (4, 6, 5)
    x = make_logits(rng, shape, "float64")
    batch = tuple(n for i, n in enumerate(shape) if i != axis % 3)
    if target_kind == "index":
        t = class_targets(rng, batch, shape[axis], ignore_fraction=0.2)
    else:
        t = soft_targets(rng, shape, axis=axis)
    for reduction in REDUCTIONS:
        got = nbce.cross_entropy(x, t, axis=axis, reduction=reduction, label_smoothing=0.1)
        assert_close(got, ref.cross_entropy(x, t, axis=axis, reduction=reduction, label_smoothing=0.1), "float64")


@pytest.mark.parametrize("target_dtype", ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"])
def test_any_integer_target_dtype(target_dtype, rng):
    x = make_logits(rng, (12, 7), "float32")
    t = class_targets(rng, (12,), 7, dtype=target_dtype)
    assert_close(nbce.cross_entropy(x, t), ref.cross_entropy(x, t.astype(np.int64)), "float32")


def test_strided_views_and_memmap(tmp_path, rng):
    base = make_logits(rng, (20, 3000), "float32")
    t = class_targets(rng, (10,), 1500)
    for view in (base[::2, ::2], base[::2, :1500], np.asfortranarray(base)[::2, :1500]):
        assert_close(nbce.cross_entropy(view, t), ref.cross_entropy(view, t), "float32")
    np.save(tmp_path / "x.npy", base)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    t_all = class_targets(rng, (20,), 3000)
    assert_close(nbce.cross_entropy(mapped, t_all), ref.cross_entropy(base, t_all), "float32")


def test_unbatched_input(rng):
    x = make_logits(rng, (9,), "float64")
    assert_close(nbce.cross_entropy(x, np.int64(4)), ref.cross_entropy(x, np.int64(4)), "float64")
    y = soft_targets(rng, (9,))
    assert_close(nbce.cross_entropy(x, y), ref.cross_entropy(x, y), "float64")


def test_all_ignored_mean_is_nan_and_none_is_zero(rng):
    x = make_logits(rng, (4, 5), "float32")
    t = np.full(4, -100)
    assert np.isnan(nbce.cross_entropy(x, t))
    assert nbce.cross_entropy(x, t, reduction="sum") == 0
    np.testing.assert_array_equal(nbce.cross_entropy(x, t, reduction="none"), np.zeros(4, np.float32))


def test_empty_batch(rng):
    x = np.zeros((0, 5), np.float32)
    t = np.zeros(0, np.int64)
    assert np.isnan(nbce.cross_entropy(x, t))
    assert nbce.cross_entropy(x, t, reduction="sum") == 0
    assert nbce.cross_entropy(x, t, reduction="none").shape == (0,)


def test_masked_logits_are_not_nan():
    x = np.array([[0.0, -np.inf, 1.0, -np.inf], [-np.inf, -np.inf, 3.0, -np.inf]], np.float32)
    t = np.array([2, 2])
    got = nbce.cross_entropy(x, t, reduction="none")
    np.testing.assert_allclose(got, [np.log1p(np.exp(-1.0)), 0.0], rtol=1e-6, atol=1e-7)
    # The target itself masked: infinite loss, as in PyTorch.
    assert nbce.cross_entropy(x, np.array([1, 2]), reduction="none")[0] == np.inf
    # Soft targets with zero mass on masked classes stay finite.
    y = np.array([[0.5, 0.0, 0.5, 0.0], [0.0, 0.0, 1.0, 0.0]], np.float32)
    np.testing.assert_allclose(nbce.cross_entropy(x, y, reduction="none"),
                               ref.cross_entropy(x, y, reduction="none"), rtol=1e-6)


def test_nan_propagates_to_its_row_and_the_mean():
    x = np.zeros((3, 4), np.float32)
    x[1, 2] = np.nan
    t = np.array([0, 0, 0])
    got = nbce.cross_entropy(x, t, reduction="none")
    assert np.isnan(got[1]) and np.isfinite(got[[0, 2]]).all()
    assert np.isnan(nbce.cross_entropy(x, t))


def test_confident_prediction_keeps_relative_accuracy():
    # softmax of the target ~ 1 - 1e-6: the loss is ~1e-6 and must keep its digits
    x = np.zeros((1, 1000), np.float32)
    x[0, 3] = 20.7
    expected = ref.cross_entropy(x, np.array([3]))
    got = nbce.cross_entropy(x, np.array([3]))
    np.testing.assert_allclose(got, expected, rtol=2e-3)
    assert 1e-7 < got < 1e-5


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_long_rows_with_late_maxima_and_ties(dtype):
    # Rows streamed over many blocks (longer than BLOCK): the maximum first
    # appears late, ties across blocks, and grows in every block.
    n = 3 * 2048 + 5
    x = np.zeros((4, n), dtype)
    x[0, 5000] = 25.0
    x[1, 100] = x[1, 4100] = 3.0
    x[2] = np.linspace(-5.0, 5.0, n)
    x[3, 10] = -40.0
    x[3, 6000] = 40.0
    t = np.array([5000, 4100, n - 1, 6000])
    got = nbce.cross_entropy(x, t, reduction="none")
    expected = ref.cross_entropy(x, t, reduction="none")
    np.testing.assert_allclose(got, expected, rtol=1e-6 if dtype == "float32" else 1e-13)
    np.testing.assert_allclose(nbce.entropy(x), ref.entropy(x), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_long_rows_with_maxima_at_the_edges_of_stream_blocks(dtype):
    # A row longer than BLOCK is streamed STREAM_BLOCK entries at a time: a
    # maximum on either side of a block edge and in the short last block, and
    # one rising at every entry (with ties), against the float64 reference.
    from nbce._config import BLOCK, STREAM_BLOCK

    n = BLOCK + STREAM_BLOCK + 3
    places = [0, STREAM_BLOCK - 1, STREAM_BLOCK, 3 * STREAM_BLOCK - 1, 3 * STREAM_BLOCK, n - 3, n - 1]
    rng = np.random.default_rng(7)
    x = rng.standard_normal((len(places) + 1, n)).astype(dtype)
    for row, place in enumerate(places):
        x[row, place] = 12.0
    x[-1] = np.repeat(np.arange((n + 1) // 2) * (16.0 / n), 2)[:n]  # rises every other entry, ties between
    t = np.array(places + [n - 1])
    rtol = 1e-13 if dtype == "float64" else 2e-6
    expected = ref.cross_entropy(x, t, reduction="none")
    np.testing.assert_allclose(nbce.cross_entropy(x, t, reduction="none"), expected, rtol=rtol)
    np.testing.assert_allclose(nbce.logsumexp(x), ref.logsumexp(x), rtol=rtol)
    np.testing.assert_allclose(nbce.entropy(x), ref.entropy(x), rtol=1e-5)
    result = nbce.evaluate(x, t)
    np.testing.assert_allclose(result.loss, expected.mean(), rtol=rtol)
    assert result.accuracy[1] == np.mean(np.argmax(x, axis=1) == t)
