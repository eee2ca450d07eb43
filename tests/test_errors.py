"""Every bad-input rule: a clear ValueError or TypeError, never a wrong number."""

import numpy as np
import pytest

import nbce

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


def test_label_smoothing_type():
    with pytest.raises(TypeError, match="label_smoothing must be a float"):
        nbce.cross_entropy(X, T, label_smoothing="0.1x")


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
