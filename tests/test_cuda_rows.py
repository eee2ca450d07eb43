"""The GPU row kernel: launches, allocations and copies per call, huge
magnitudes, warp-wide groups, determinism, unsigned device targets.

On the simulator (8 threads per block unless a test says otherwise).
"""

import math

import numpy as np
import pytest

import nbce
from conftest import make_logits, np_dtype

cuda_backend = pytest.importorskip("nbce.cuda")
from numba import cuda  # noqa: E402  (after the simulator switch in conftest)
from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray  # noqa: E402

from nbce.cuda import _device  # noqa: E402

pytestmark = pytest.mark.skipif(not _device.SIMULATOR, reason="counts calls on the simulator")


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(cuda_backend, "THREADS", 8)
    monkeypatch.setattr(cuda_backend, "MIN_ELEMENTS_PER_THREAD", 4)


class Counts:
    def __init__(self):
        self.launches = self.allocations = self.to_device = self.to_host = 0


@pytest.fixture
def counted(monkeypatch):
    """Counts kernel launches, device allocations, host-to-device and device-to-host copies."""
    counts = Counts()
    launch, empty, to_device = cuda_backend.launch, _device.device_empty, _device.to_device
    copy_to_device, copy_to_host = _device.copy_to_device, FakeCUDAArray.copy_to_host

    def counting_launch(*args):
        counts.launches += 1
        return launch(*args)

    def counting_empty(*args, **kwargs):
        counts.allocations += 1
        return empty(*args, **kwargs)

    def counting_to_device(*args, **kwargs):
        counts.to_device += 1
        return to_device(*args, **kwargs)

    def counting_copy_to_device(*args, **kwargs):
        counts.to_device += 1
        return copy_to_device(*args, **kwargs)

    def counting_copy_to_host(self, *args, **kwargs):
        counts.to_host += 1
        return copy_to_host(self, *args, **kwargs)

    monkeypatch.setattr(cuda_backend, "launch", counting_launch)
    monkeypatch.setattr(_device, "device_empty", counting_empty)
    monkeypatch.setattr(_device, "to_device", counting_to_device)
    monkeypatch.setattr(_device, "copy_to_device", counting_copy_to_device)
    monkeypatch.setattr(FakeCUDAArray, "copy_to_host", counting_copy_to_host)
    return counts


def _count(counted, call):
    call()  # the first call of a shape may fill the workspace
    before = vars(counted).copy()
    call()
    return {k: getattr(counted, k) - before[k] for k in before}


CALLS = {
    # name: (call on (x, t, p) device arrays, launches, device-to-host reads)
    "cross_entropy mean": (lambda x, t, p: nbce.cross_entropy(x, t), 1, 1),
    "cross_entropy none": (lambda x, t, p: nbce.cross_entropy(x, t, reduction="none"), 1, 1),
    "label smoothing + weights": (lambda x, t, p: nbce.cross_entropy(x, t, label_smoothing=0.1, reduction="sum"), 1, 1),
    "soft targets": (lambda x, t, p: nbce.cross_entropy(x, p), 1, 0),
    "logsumexp": (lambda x, t, p: nbce.logsumexp(x), 1, 0),
    "entropy": (lambda x, t, p: nbce.entropy(x), 1, 0),
    "log_softmax": (lambda x, t, p: nbce.log_softmax(x), 2, 0),
    "binary logits mean": (lambda x, t, p: nbce.binary_cross_entropy_with_logits(x, p), 1, 0),
    "binary logits none": (lambda x, t, p: nbce.binary_cross_entropy_with_logits(x, p, reduction="none"), 1, 0),
    "binary probabilities sum": (lambda x, t, p: nbce.binary_cross_entropy(p, p, reduction="sum"), 1, 1),
}


@pytest.mark.parametrize("name", CALLS)
@pytest.mark.parametrize("shape", [(6, 40), (2, 300)], ids=["rows", "split-rows"])
def test_one_read_one_launch_no_allocation_no_copy(name, shape, counted, rng):
    assert (cuda_backend._launch_shape(*shape)[0] > 1) == (shape == (2, 300))
    """A repeated shape with device operands: one launch (two for log_softmax,
    whose element-wise pass writes the output), rows split over blocks or not,
    no device allocation besides the returned result, no host-to-device copy,
    and only the 8-byte bad-target flag read back when the targets live on the
    device (or, for binary_cross_entropy, the probabilities must be checked)."""
    call, launches, reads = CALLS[name]
    x = make_logits(rng, shape, "float32")
    t = cuda.to_device(rng.integers(0, shape[1], shape[0]))
    p = cuda.to_device(nbce.softmax(make_logits(rng, shape, "float32")))
    d = cuda.to_device(x)
    counts = _count(counted, lambda: call(d, t, p))
    assert counts["launches"] == launches
    assert counts["allocations"] == 1
    assert counts["to_device"] == 0
    assert counts["to_host"] == reads


def test_host_targets_are_checked_on_the_host_and_copied_once(counted, rng):
    x = cuda.to_device(make_logits(rng, (6, 40), "float32"))
    t = rng.integers(0, 40, 6)
    counts = _count(counted, lambda: nbce.cross_entropy(x, t))
    assert counts == {"launches": 1, "allocations": 1, "to_device": 1, "to_host": 0}  # into the workspace


def _exact_reference(x, target):
    """float64 cross-entropy from differences to the row max (exact for these rows)."""
    x = np.asarray(x, dtype=np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    log_s = np.log(np.exp(shifted).sum(axis=-1))
    return log_s - np.take_along_axis(shifted, target[:, None], axis=-1)[:, 0], shifted - log_s[:, None]


HUGE = {"float64": [1e12, 1e16, 1e20, 1e300], "float32": [1e12, 1e20, 3.4e38], "float16": [6e4, 65504.0],
        "bfloat16": [1e20, 3.3e38]}


@pytest.mark.parametrize("dtype", list(HUGE))
def test_equal_and_near_equal_huge_logits(dtype):
    """Rows [M, M, M] and [M, M-, M] (M- the next value down): log Σ is never absorbed by M."""
    dt = np_dtype(dtype)
    words = np.dtype(f"u{dt.itemsize}")
    for m in HUGE[dtype]:
        x = np.full((2, 3), m, dtype=dt)
        x[1, 1] = (x[1, 1:2].view(words) - words.type(1)).view(dt)[0]
        target = np.array([0, 1])
        loss, log_softmax = _exact_reference(x, target)
        operand = _bfloat16_device(x) if dtype == "bfloat16" else cuda_backend.as_float_array(cuda.to_device(x), "x")
        rows = cuda_backend.as_rows(operand, 1)
        out = np.float64 if dtype == "float64" else np.float32
        got = cuda_backend.cross_entropy_indices(rows, cuda.to_device(target), None, -100, 0.0, 0, "none", out)
        np.testing.assert_allclose(got.copy_to_host(), loss, rtol=1e-6, atol=1e-7)
        for exponentiate, expected in ((False, log_softmax), (True, np.exp(log_softmax))):
            got = cuda_backend.normalize(rows, exponentiate, out).copy_to_host()
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
        entropy = cuda_backend.row_statistic(rows, "entropy", out).copy_to_host()
        np.testing.assert_allclose(entropy, -(np.exp(log_softmax) * log_softmax).sum(axis=1), rtol=1e-6)


def _bfloat16_device(x):
    """A bfloat16 device operand as nbce sees a torch bfloat16 tensor: 16-bit words
    (Numba device arrays have no bfloat16 dtype)."""
    return cuda_backend.DeviceFloats(cuda.to_device(x.view(np.uint16)), np.dtype(np.float32), True, None)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_tiny_confident_losses_are_not_floored(dtype):
    """loss = log1p(Σ_{j≠t} e^{x_j - x_t}) for a target at the max, to full relative precision."""
    gap = -80.0 if dtype == "float64" else -60.0
    x = np.full((3, 40), gap, dtype=dtype)
    x[:, 0] = 0.0
    expected = math.log1p(39 * math.exp(gap))
    got = nbce.cross_entropy(cuda.to_device(x), np.zeros(3, dtype=np.int64), reduction="none").copy_to_host()
    np.testing.assert_allclose(got, expected, rtol=1e-6 if dtype == "float32" else 1e-12)
    lsm = nbce.log_softmax(cuda.to_device(x)).copy_to_host()[:, 0]
    np.testing.assert_allclose(lsm, -expected, rtol=1e-6 if dtype == "float32" else 1e-12)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_groups_wider_than_a_warp_merge_in_shared_memory(dtype, monkeypatch, rng):
    """64 threads per block: a row's group spans two warps, merged through shared memory."""
    monkeypatch.setattr(cuda_backend, "THREADS", 64)
    x = make_logits(rng, (3, 700), dtype)
    t = rng.integers(0, 700, 3)
    assert cuda_backend._launch_shape(3, 700)[1] == 64
    d = cuda.to_device(x)
    for got, expected in [
        (nbce.cross_entropy(d, t, label_smoothing=0.2, reduction="none"),
         nbce.cross_entropy(x, t, label_smoothing=0.2, reduction="none")),
        (nbce.entropy(d), nbce.entropy(x)),
        (nbce.logsumexp(d), nbce.logsumexp(x)),
    ]:
        np.testing.assert_allclose(got.copy_to_host(), expected, rtol=2e-6, atol=2e-6)


def test_repeats_are_bit_identical_and_reductions_span_many_blocks(rng):
    """65 rows of 5 classes: 8 rows per block, 9 blocks; the last block sums the rows in a fixed order."""
    x = make_logits(rng, (65, 5), "float32")
    t = rng.integers(0, 5, 65)
    d = cuda.to_device(x)
    first = nbce.cross_entropy(d, t).copy_to_host()
    assert nbce.cross_entropy(d, t).copy_to_host().tobytes() == first.tobytes()
    np.testing.assert_allclose(first, nbce.cross_entropy(x, t), rtol=1e-6)
    weight = rng.uniform(0.5, 2.0, 5)
    np.testing.assert_allclose(nbce.cross_entropy(d, t, weight=weight).copy_to_host(),
                               nbce.cross_entropy(x, t, weight=weight), rtol=1e-6)
    np.testing.assert_allclose(nbce.cross_entropy(d, t, reduction="sum").copy_to_host(),
                               nbce.cross_entropy(x, t, reduction="sum"), rtol=1e-6)


def test_mean_of_ignored_rows_is_nan_and_empty_sum_is_zero(rng):
    d = cuda.to_device(make_logits(rng, (4, 6), "float32"))
    t = np.full(4, -100)
    assert np.isnan(nbce.cross_entropy(d, t).copy_to_host())
    empty = cuda.to_device(np.zeros((0, 6), np.float32))
    assert nbce.cross_entropy(empty, np.zeros(0, np.int64), reduction="sum").copy_to_host() == 0.0
    assert np.isnan(nbce.cross_entropy(empty, np.zeros(0, np.int64)).copy_to_host())


def test_unsigned_device_targets_past_int64_are_bad_never_ignored(rng):
    """uint64 2**64 - 1 is not the int64 -1, whatever ignore_index is; the error names the true value."""
    d = cuda.to_device(make_logits(rng, (2, 6), "float32"))
    t = cuda.to_device(np.array([0, 2**64 - 1], dtype=np.uint64))
    with pytest.raises(ValueError, match=r"target\[1\] = 18446744073709551615"):
        nbce.cross_entropy(d, t, ignore_index=-1, reduction="none")
    ok = cuda.to_device(np.array([0, 5], dtype=np.uint64))
    np.testing.assert_allclose(nbce.cross_entropy(d, ok, reduction="none").copy_to_host(),
                               nbce.cross_entropy(d.copy_to_host(), np.array([0, 5]), reduction="none"), rtol=1e-6)


def test_device_class_weights_are_accepted(rng):
    x = make_logits(rng, (5, 7), "float32")
    t = rng.integers(0, 7, 5)
    weight = rng.uniform(0.5, 2.0, 7)
    got = nbce.cross_entropy(cuda.to_device(x), t, weight=cuda.to_device(weight)).copy_to_host()
    np.testing.assert_allclose(got, nbce.cross_entropy(x, t, weight=weight), rtol=1e-6)
    with pytest.raises(ValueError, match="weight"):
        nbce.cross_entropy(cuda.to_device(x), t, weight=cuda.to_device(weight[:3]))


# The simulator runs every thread in Python, a few microseconds per element:
# 2^13 classes keep these tests to seconds (2^20 would take many minutes).
LONG_ROW = 1 << 13


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_long_rows_sum_in_float32_within_a_few_ulp(dtype, rng):
    """Long rows: per-slot float32 sums added to a float64 state keep the
    logsumexp and the loss within ~1e-6 of float64 (the row's length does not
    accumulate float32 rounding)."""
    x = make_logits(rng, (2, LONG_ROW), dtype, scale=4.0)
    t = rng.integers(0, LONG_ROW, 2)
    d = cuda.to_device(x)
    wide = x.astype(np.float64)
    top = wide.max(axis=1)
    lse = top + np.log(np.exp(wide - top[:, None]).sum(axis=1))
    np.testing.assert_allclose(nbce.logsumexp(d).copy_to_host(), lse, rtol=2e-7, atol=0)
    loss = lse - wide[np.arange(2), t]
    np.testing.assert_allclose(nbce.cross_entropy(d, t, reduction="none").copy_to_host(), loss, rtol=0, atol=2e-6)


def test_one_long_row_split_over_blocks(rng):
    """One float32 row split over blocks, finished by its last chunk."""
    x = make_logits(rng, (1, LONG_ROW), "float32", scale=5.0)
    assert cuda_backend._launch_shape(1, LONG_ROW)[0] > 1
    wide = x.astype(np.float64)
    top = wide.max()
    expected = top + np.log(np.exp(wide - top).sum())
    np.testing.assert_allclose(nbce.logsumexp(cuda.to_device(x)).copy_to_host(), [expected], rtol=2e-7)


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_a_nan_read_while_the_max_is_still_minus_inf_makes_the_row_nan(dtype):
    """A NaN before any finite value (first in the row, or after -inf) is not
    dropped with the -inf slots: the row's results are NaN, as on the CPU."""
    for row in ([np.nan, 0.0, 0.0], [-np.inf, np.nan, 1.0], [np.nan] + [0.0] * 9, [0.0, 0.0, np.nan]):
        x = np.array([row], dtype=dtype)
        for offset in (0, 1):  # the NaN in a wide slot, or in the row's element-wise head
            whole = np.concatenate([np.zeros((1, offset), dtype), x], axis=1)
            d = cuda.to_device(whole)[:, offset:]
            assert np.isnan(nbce.logsumexp(d).copy_to_host()).all(), (row, offset)
            assert np.isnan(nbce.cross_entropy(d, np.array([1]), reduction="none").copy_to_host()).all()
