"""Every bad-input rule: a clear ValueError or TypeError, never a wrong number."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import nbce
from conftest import np_dtype
from nbce._tally import UNDEFINED_ROW

X = np.zeros((4, 5), np.float32)
T = np.array([0, 1, 2, 3])


@pytest.mark.parametrize("bad", [5, -1, -101, 1000])
def test_target_out_of_range_names_position_and_value(bad):
    t = T.copy()
    t[2] = bad
    with pytest.raises(ValueError, match=rf"target\[2\] = {bad} is not a class index.*0 <= target < 5"):
        nbce.cross_entropy(X, t)


def test_target_out_of_range_multidimensional():
    x = np.zeros((2, 5, 3))
    t = np.zeros((2, 3), np.int64)
    t[1, 2] = 9
    with pytest.raises(ValueError, match=r"target\[1, 2\] = 9"):
        nbce.cross_entropy(x, t, axis=1)


def test_huge_unsigned_target_is_out_of_range():
    t = np.array([0, 1, 2, 2**64 - 1], dtype=np.uint64)
    with pytest.raises(ValueError, match="18446744073709551615"):
        nbce.cross_entropy(X, t)


def test_ignore_index_is_not_an_error():
    t = np.array([0, -100, 2, 3])
    assert np.isfinite(nbce.cross_entropy(X, t))


@pytest.mark.parametrize("target,match", [
    (np.array([0, 1, 2]), r"target has shape \(3,\), expected \(4,\)"),
    (np.zeros((4, 4), np.float32), r"target has shape \(4, 4\), expected \(4, 5\)"),
    (np.zeros((4, 5), np.float32).T, r"class-probability targets"),
])
def test_target_shape_mismatch(target, match):
    with pytest.raises(ValueError, match=match):
        nbce.cross_entropy(X, target)


@pytest.mark.parametrize("target", [np.array([True, False, True, True]), np.array([1 + 0j] * 4), np.array(["a"] * 4)])
def test_target_dtype(target):
    with pytest.raises(TypeError, match="target must hold integer class indices or float class probabilities"):
        nbce.cross_entropy(X, target)


def test_weight_length():
    with pytest.raises(ValueError, match=r"weight has shape \(4,\), expected \(5,\)"):
        nbce.cross_entropy(X, T, weight=np.ones(4))


@pytest.mark.parametrize("axis", [2, -3, 7])
def test_axis_out_of_range(axis):
    with pytest.raises(ValueError, match=f"axis {axis} is out of range for logits with 2 dimension"):
        nbce.cross_entropy(X, T, axis=axis)
    with pytest.raises(ValueError, match="out of range"):
        nbce.logsumexp(X, axis=axis)


def test_axis_type():
    with pytest.raises(TypeError, match="axis must be an integer"):
        nbce.softmax(X, axis=1.0)


def test_unknown_reduction_and_input_type():
    with pytest.raises(ValueError, match=r"reduction must be one of \('none', 'mean', 'sum'\), got 'avg'"):
        nbce.cross_entropy(X, T, reduction="avg")
    with pytest.raises(ValueError, match="reduction must be one of"):
        nbce.binary_cross_entropy(X, X, reduction="max")
    with pytest.raises(ValueError, match=r"input_type must be one of \('logits', 'log_probs', 'probs'\)"):
        nbce.cross_entropy(X, T, input_type="scores")


@pytest.mark.parametrize("eps", [-0.1, 1.5, float("nan")])
def test_label_smoothing_range(eps):
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        nbce.cross_entropy(X, T, label_smoothing=eps)


@pytest.mark.parametrize("eps", ["0.1x", "0.1", b"0.1", True, None, [0.1]])
def test_label_smoothing_type(eps):
    with pytest.raises(TypeError, match="label_smoothing must be a float"):
        nbce.cross_entropy(X, T, label_smoothing=eps)


@pytest.mark.parametrize("eps", [0, 1, 0.25, np.float32(0.25), np.float64(0.5), np.int64(0)])
def test_label_smoothing_accepts_real_numbers(eps):
    assert np.isfinite(nbce.cross_entropy(X, T, label_smoothing=eps))


@pytest.mark.parametrize("logits", [np.zeros((4, 5), np.int64), np.zeros((4, 5), np.complex64),
                                    np.zeros((4, 5), bool), [[1, 2], [3, 4]]])
def test_non_float_logits(logits):
    with pytest.raises(TypeError, match=r"logits must be a floating-point array .* got dtype"):
        nbce.cross_entropy(logits, np.array([0, 1, 0, 1])[: len(logits)])


def test_scalar_and_classless_logits():
    with pytest.raises(ValueError, match="at least one dimension"):
        nbce.cross_entropy(np.float32(1.0), np.int64(0))
    with pytest.raises(ValueError, match="has no classes"):
        nbce.cross_entropy(np.zeros((3, 0)), np.zeros(3, np.int64))


def test_ignore_index_type():
    with pytest.raises(TypeError, match="ignore_index must be an integer"):
        nbce.cross_entropy(X, T, ignore_index=1.5)


@pytest.mark.parametrize("ignore_index", [2**63, 2**64 - 1, 2**64 - 2**40, -(2**63) - 1, 10**30,
                                          np.uint64(2**64 - 1)])
def test_ignore_index_must_fit_int64(ignore_index):
    message = rf"ignore_index must fit in int64 .* got {int(ignore_index)}"
    with pytest.raises(ValueError, match=message):
        nbce.cross_entropy(X, T.astype(np.uint64), ignore_index=ignore_index)
    with pytest.raises(ValueError, match=message):
        nbce.Evaluator(ignore_index=ignore_index)


@pytest.mark.parametrize("ignore_index", [2**63 - 1, -(2**63), np.uint64(3), np.int8(-100)])
def test_ignore_index_at_the_int64_limits(ignore_index):
    t = np.array([0, 1, 2, 0], np.int64)
    t[1] = int(ignore_index)
    got = nbce.cross_entropy(X, t, ignore_index=ignore_index, reduction="none")
    np.testing.assert_allclose(got, [np.log(5), 0.0, np.log(5), np.log(5)], rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64])
def test_unsigned_targets_equal_to_ignore_index_are_ignored(dtype):
    t = np.array([0, 3, 2, 3], dtype)
    got = nbce.cross_entropy(X, t, ignore_index=3, reduction="none")
    np.testing.assert_allclose(got, [np.log(5), 0.0, np.log(5), 0.0], rtol=1e-6)
    with pytest.raises(ValueError, match=r"target\[1\] = 3 is not a class index"):
        nbce.cross_entropy(X[:, :3], t, ignore_index=-100)


@pytest.mark.parametrize("value", [2**63, 2**63 + 5, 2**64 - 2**40, 2**64 - 1])
@pytest.mark.parametrize("ignore_index", [-100, -1, 2**63 - 1, 0])
def test_uint64_targets_beyond_int64_are_errors_with_their_true_value(value, ignore_index):
    # compared without wrap-around: 2**64 - 1 is not -1, 2**63 is not -2**63
    t = np.array([1, 2, value, 3], np.uint64)
    with pytest.raises(ValueError, match=rf"target\[2\] = {value} is not a class index"):
        nbce.cross_entropy(X, t, ignore_index=ignore_index)
    with pytest.raises(ValueError, match=rf"target\[2\] = {value} is not a class index"):
        nbce.evaluate(X, t, ignore_index=ignore_index)


def run_isolated(code):
    """Run ``code`` in a fresh interpreter, so that a crash fails the test
    instead of killing pytest; return its stdout."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"exit status {done.returncode}\n{done.stderr[-3000:]}"
    return done.stdout


def test_issue_repro_uint64_targets_with_huge_ignore_index():
    # Once a segfault (uint64 compared with a wrapped int64, then row[t] with
    # t ~ -2**40) and a uint64 padding value scored as class C - 1.
    out = run_isolated("""
        import json
        import numpy as np, nbce
        x = np.zeros((4, 6), np.float32); v = 2**64 - 2**40
        for call in (lambda: nbce.cross_entropy(x, np.array([0, v, 3, 2], np.uint64), ignore_index=v),
                     lambda: nbce.cross_entropy(x[:2], np.array([0, 2**64 - 1], np.uint64),
                                                ignore_index=2**64 - 1, reduction="none")):
            try:
                print("returned", call())
            except ValueError as error:
                print("ValueError:", error)
        print(json.dumps(nbce.cross_entropy(x[:2], np.array([0, 2**63 - 1], np.uint64), ignore_index=2**63 - 1,
                                            reduction="none").tolist()))
    """)
    first, second, third = out.splitlines()
    assert first == f"ValueError: ignore_index must fit in int64 (-2**63 <= ignore_index < 2**63), got {2**64 - 2**40}"
    assert second == f"ValueError: ignore_index must fit in int64 (-2**63 <= ignore_index < 2**63), got {2**64 - 1}"
    np.testing.assert_allclose(json.loads(third), [np.log(6), 0.0], rtol=1e-6)


def test_kernels_never_index_outside_a_row():
    # Whatever the host checks let through, the kernels read no memory
    # outside the row or the weights: such a row gives NaN (rank: undefined).
    out = run_isolated("""
        import json
        import numpy as np
        from nbce._arrays import as_rows
        from nbce.cpu import kernels
        x = np.zeros((5, 6), np.float32)
        rows = as_rows(x, -1)
        t = np.array([0, -1, -2**60, 6, 2**62], np.int64)
        loss, w = np.empty(5), np.empty(5)
        for smoothing in (0.0, 0.1):
            kernels.class_index_rows(rows.base, rows.geom, 6, t, np.ones(6), -100, smoothing, 0, loss, w, 16)
            print(json.dumps([loss.tolist(), w.tolist()]))
        loss, entropy, confidence, rank = np.empty(5), np.empty(5), np.empty(5), np.empty(5, np.int64)
        kernels.metric_rows(rows.base, rows.geom, 6, t, -100, loss, rank, entropy, confidence, 16)
        print(json.dumps([loss.tolist(), rank.tolist(), confidence.tolist()]))
        kernels.class_index_rows(rows.base, rows.geom, 6, t[:1], np.ones(3), -100, 0.1, 0, loss[:1], w[:1], 16)
        print(json.dumps(loss[:1].tolist()))
    """)
    nan, log6 = np.nan, np.log(6)
    *class_index, metrics, short_weight = [json.loads(line) for line in out.splitlines()]
    for loss, weight in class_index:
        np.testing.assert_allclose(loss, [log6, nan, nan, nan, nan], rtol=1e-14)
        np.testing.assert_array_equal(weight, [1.0, nan, nan, nan, nan])
    np.testing.assert_allclose(metrics[0], [log6, nan, nan, nan, nan], rtol=1e-14)
    np.testing.assert_array_equal(metrics[1], [0] + [UNDEFINED_ROW] * 4)
    np.testing.assert_allclose(metrics[2], [1 / 6, nan, nan, nan, nan], rtol=1e-14)
    assert np.isnan(short_weight[0])  # a weight vector shorter than the row is not read past its end


def test_bfloat16_class_weights_are_accepted(rng):
    bfloat16 = np_dtype("bfloat16")
    x = rng.standard_normal((6, 5)).astype(bfloat16)
    t = rng.integers(0, 5, 6)
    weight = np.array([0.5, 1.0, 2.0, 0.25, 3.0]).astype(bfloat16)
    np.testing.assert_array_equal(nbce.cross_entropy(x, t, weight=weight),
                                  nbce.cross_entropy(x, t, weight=weight.astype(np.float32)))


def test_binary_targets_outside_unit_interval():
    p = np.array([[0.2, 0.5], [0.3, 0.4]])
    y = np.array([[0.0, 1.0], [1.5, -0.5]])
    with pytest.raises(ValueError, match=r"target\[1, 0\] = 1.5 is not a probability: binary_cross_entropy "
                                         r"expects targets in \[0, 1\]"):
        nbce.binary_cross_entropy(p, y)
    with pytest.raises(ValueError, match=r"target\[1\] = -0.25 is not a probability"):
        nbce.binary_cross_entropy(np.array([0.5, 0.5]), np.array([1.0, -0.25]), reduction="none")
    with pytest.raises(ValueError, match=r"probs\[0, 1\] = 1.5"):  # probabilities are checked first
        nbce.binary_cross_entropy(np.array([[0.5, 1.5]]), np.array([[2.0, 0.0]]))
    # soft labels in [0, 1] and NaN pass; the logits form takes any target, as in PyTorch
    assert np.isfinite(nbce.binary_cross_entropy(p, np.array([[0.0, 1.0], [0.3, 0.7]])))
    assert np.isnan(nbce.binary_cross_entropy(p, np.array([[0.0, np.nan], [0.3, 0.7]])))
    assert np.isfinite(nbce.binary_cross_entropy_with_logits(p, y))


def test_probabilities_outside_unit_interval():
    p = np.array([[0.2, 1.5], [0.3, 0.4]])
    with pytest.raises(ValueError, match=r"probs\[0, 1\] = 1.5 is not a probability"):
        nbce.binary_cross_entropy(p, np.zeros_like(p))
    with pytest.raises(ValueError, match=r"probs\[1\] = -0.25"):
        nbce.binary_cross_entropy(np.array([0.5, -0.25]), np.zeros(2))


def test_binary_shape_rules():
    with pytest.raises(ValueError, match=r"target has shape \(3,\), expected \(4,\)"):
        nbce.binary_cross_entropy_with_logits(np.zeros(4), np.zeros(3))
    with pytest.raises(ValueError, match=r"pos_weight of shape \(3,\) cannot be broadcast to the input shape \(4, 5\)"):
        nbce.binary_cross_entropy_with_logits(np.zeros((4, 5)), np.zeros((4, 5)), pos_weight=np.ones(3))
    with pytest.raises(ValueError, match=r"weight of shape \(2,\) cannot be broadcast"):
        nbce.binary_cross_entropy(np.zeros((4, 5)), np.zeros((4, 5)), weight=np.ones(2))


def test_cuda_arrays_are_recognised():
    from nbce._dispatch import is_cuda_array

    class CudaInterface:
        __cuda_array_interface__ = {"shape": (2, 3), "typestr": "<f4", "data": (0, False), "version": 3}

    class DlpackOnGpu:
        def __dlpack_device__(self):
            return (2, 0)

    class DlpackOnHost:
        def __dlpack_device__(self):
            return (1, 0)

    assert is_cuda_array(CudaInterface()) and is_cuda_array(DlpackOnGpu())
    assert not is_cuda_array(DlpackOnHost()) and not is_cuda_array(np.zeros(3))


def test_mean_over_zero_target_weight_is_nan_even_with_smoothing(backend):
    """PyTorch's mean of the target terms is 0/0 there; the smoothed sum does not make it ±inf."""
    x = backend.to_device(np.zeros((1, 2)))
    got = backend.to_host(nbce.cross_entropy(x, np.array([0]), weight=[0.0, 1.0], label_smoothing=0.5))
    assert np.isnan(got)


def test_host_probability_targets_beside_device_logits(backend, rng):
    x = rng.standard_normal((3, 4))
    p = rng.uniform(0.0, 1.0, (3, 4))
    got = backend.to_host(nbce.cross_entropy(backend.to_device(x), p, reduction="none"))
    np.testing.assert_allclose(got, nbce.cross_entropy(x, p, reduction="none"), rtol=1e-12)
    got = backend.to_host(nbce.binary_cross_entropy_with_logits(backend.to_device(x), p, reduction="none"))
    np.testing.assert_allclose(got, nbce.binary_cross_entropy_with_logits(x, p, reduction="none"), rtol=1e-12)


def test_every_public_function_takes_its_arguments_by_name():
    """The first parameter too (the wrapper that opens a CUDA context block passes it on)."""
    x = np.array([[0.5, -1.0, 2.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    t, y = np.array([2, 0]), np.full(x.shape, 0.25)
    for name in ("logsumexp", "log_softmax", "softmax"):
        np.testing.assert_array_equal(getattr(nbce, name)(x=x), getattr(nbce, name)(x))
    assert nbce.entropy(logits=x).shape == (2,)
    assert nbce.cross_entropy(logits=x, target=t) == nbce.cross_entropy(x, t)
    assert nbce.binary_cross_entropy(probs=y, target=y) == nbce.binary_cross_entropy(y, y)
    assert nbce.binary_cross_entropy_with_logits(logits=x, target=y) == nbce.binary_cross_entropy_with_logits(x, y)


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                                   ">i4", ">i8", ">u8"])
@pytest.mark.parametrize("ignore_index", [-100, -1, 0, 5, 300])
def test_the_compiled_target_scan_flags_what_the_numpy_mask_flags(dtype, ignore_index, rng):
    """``class_indices`` scans native host targets in one compiled read (and
    big-endian ones with NumPy): it must report the first value
    ``out_of_range_targets`` flags, for every integer dtype (extremes
    included) and ``ignore_index``, across its 4096-value runs."""
    from nbce import _checks

    info = np.iinfo(dtype)
    specials = [info.max, info.min, 10, 11, min(200, info.max), max(info.min, min(ignore_index, info.max)), 3]
    for trial, special in enumerate(specials * 3):
        n = int(rng.integers(1, 9000))
        values = rng.integers(0, 10, n).astype(dtype)
        values[int(rng.integers(0, n))] = special
        if trial % 3 == 2:
            values[int(rng.integers(0, n))] = special  # two of them: the first is reported
        if trial % 4 == 3:
            values = values.reshape(1, n)[:, ::-1]  # 2-D and reversed: positions as (0, j)
        mask = _checks.out_of_range_targets(values, 10, ignore_index)
        if mask.any():
            first = np.unravel_index(int(np.argmax(mask)), values.shape)
            where = ", ".join(str(int(i)) for i in first)
            with pytest.raises(ValueError, match=rf"target\[{where}\] = {int(values[first])} "):
                _checks.class_indices(values, 10, ignore_index)
        else:
            np.testing.assert_array_equal(_checks.class_indices(values, 10, ignore_index),
                                          values.astype(np.int64).reshape(-1))
