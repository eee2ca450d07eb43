"""Argument checks shared by every backend: one place, one wording."""

from numbers import Real

import numpy as np
from numba import njit

from ._arrays import host_array
from ._config import JIT_OPTIONS

REDUCTIONS = ("none", "mean", "sum")
INPUT_TYPES = ("logits", "log_probs", "probs")
# Class indices travel to the kernels as int64, so ignore_index must be one.
_INT64 = np.iinfo(np.int64)


def check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def input_type_code(input_type):
    """'logits' -> 0, 'log_probs' -> 1, 'probs' -> 2 (the kernels' codes)."""
    if input_type not in INPUT_TYPES:
        raise ValueError(f"input_type must be one of {INPUT_TYPES}, got {input_type!r}")
    return INPUT_TYPES.index(input_type)


def check_label_smoothing(label_smoothing):
    """A real number in [0, 1], as a float.  Strings and booleans are refused
    (``float("0.1")`` would parse; PyTorch refuses them too)."""
    if isinstance(label_smoothing, (bool, np.bool_)) or not isinstance(label_smoothing, Real):
        raise TypeError(f"label_smoothing must be a float in [0, 1], got {label_smoothing!r}")
    value = float(label_smoothing)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    return value


def check_ignore_index(ignore_index):
    """An integer that fits int64, as a Python int (so the kernels always see int64)."""
    if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(ignore_index, (int, np.integer)):
        raise TypeError(f"ignore_index must be an integer, got {ignore_index!r}")
    value = int(ignore_index)
    if not _INT64.min <= value <= _INT64.max:
        raise ValueError(f"ignore_index must fit in int64 (-2**63 <= ignore_index < 2**63), got {value}")
    return value


def check_shape(name, shape, expected, what):
    if tuple(shape) != tuple(expected):
        raise ValueError(f"{name} has shape {tuple(shape)}, expected {tuple(expected)} ({what})")


def class_weight(weight, n_classes):
    """Per-class weights as float64 of length ``n_classes`` (ones when None)."""
    if weight is None:
        return np.ones(n_classes, dtype=np.float64)
    array = host_array(weight)
    if array.dtype.kind not in "fiu" and array.dtype.name != "bfloat16":
        raise TypeError(f"weight must be a real array, got dtype {array.dtype}")
    check_shape("weight", array.shape, (n_classes,), "one weight per class")
    return array.astype(np.float64)


def out_of_range_targets(target, n_classes, ignore_index):
    """Boolean mask of class indices outside [0, n_classes) that are not ``ignore_index``.

    Values are compared exactly, whatever the integer dtype: unsigned targets
    as uint64 (a uint64 beyond int64 equals no ``ignore_index``, which fits
    int64, and is out of range), signed ones as int64.  Mixing uint64 with a
    negative int64 would otherwise round both to float64 or wrap.
    """
    target = host_array(target)
    ignore_index = check_ignore_index(ignore_index)
    if target.dtype.kind == "u":
        wide = target.astype(np.uint64, copy=False)
        outside = wide >= np.uint64(n_classes)
        return outside & (wide != np.uint64(ignore_index)) if ignore_index >= 0 else outside
    wide = target.astype(np.int64, copy=False)
    return (wide != np.int64(ignore_index)) & ((wide < 0) | (wide >= n_classes))


# Targets are checked in runs of this many, each run with a vector loop; only
# a run holding a bad value is searched for its first one.
_TARGET_RUN = 4096


@njit(**JIT_OPTIONS)
def _first_out_of_range(flat, n_classes, ignore_index, unsigned):
    """The index of the first value of ``flat`` that ``out_of_range_targets``
    flags, or -1: one read, compared as ``out_of_range_targets`` compares
    (uint64 for unsigned targets, int64 for signed ones)."""
    for start in range(0, flat.size, _TARGET_RUN):
        run = flat[start:start + _TARGET_RUN]
        bad = 0
        for j in range(run.size):
            bad += 1 if _outside(run[j], n_classes, ignore_index, unsigned) else 0
        if bad > 0:
            for j in range(run.size):
                if _outside(run[j], n_classes, ignore_index, unsigned):
                    return start + j
    return -1


@njit(inline="always", **JIT_OPTIONS)
def _outside(value, n_classes, ignore_index, unsigned):
    if unsigned:
        wide = np.uint64(value)
        return wide >= np.uint64(n_classes) and (ignore_index < 0 or wide != np.uint64(ignore_index))
    wide = np.int64(value)
    return wide != ignore_index and (wide < 0 or wide >= n_classes)


def _index(position):
    """"[i, j]" for a position, "" for a 0-d array's."""
    return "[" + ", ".join(str(int(i)) for i in position) + "]" if len(position) else ""


def shift_position(position, origin):
    """``position`` in a chunk -> in the whole array, the chunk starting at ``origin``
    (leading axes).  A chunk of fewer axes than ``origin`` is one entry of the
    leading ones (a 0-d target of an iterable of single rows): its position
    starts with them."""
    position, origin = tuple(position), tuple(origin)
    position = (0,) * (len(origin) - len(position)) + position
    return tuple(int(p) + int(o) for p, o in zip(position, origin + (0,) * len(position)))


def raise_bad_target(position, value, n_classes, ignore_index):
    raise ValueError(
        f"target{_index(position)} = {int(value)} is not a class index: expected 0 <= target < {n_classes} "
        f"or target == ignore_index ({ignore_index})"
    )


def raise_bad_probability(position, value):
    raise ValueError(
        f"probs{_index(position)} = {float(value)} is not a probability: binary_cross_entropy expects "
        "values in [0, 1] (use binary_cross_entropy_with_logits for scores)"
    )


def raise_bad_binary_target(position, value):
    raise ValueError(
        f"target{_index(position)} = {float(value)} is not a probability: binary_cross_entropy expects "
        "targets in [0, 1], as PyTorch does"
    )


def _first_outside_unit_interval(values):
    """The index of the first element outside [0, 1] (NaN is not), or None;
    () for a 0-d array (``np.argwhere`` would find nothing there)."""
    wide = np.asarray(values, dtype=np.float64)
    outside = (wide < 0.0) | (wide > 1.0)
    if not outside.any():
        return None
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(outside)), outside.shape))


def raise_outside_unit_interval(probs, target):
    """``binary_cross_entropy``'s refusal, on host arrays one of which holds a
    value outside [0, 1]: the first bad probability, else the first bad target."""
    position = _first_outside_unit_interval(probs)
    if position is not None:
        raise_bad_probability(position, probs[position])
    position = _first_outside_unit_interval(target)
    if position is not None:
        raise_bad_binary_target(position, target[position])
    raise AssertionError("raise_outside_unit_interval called on values inside [0, 1]")


def class_indices(target, n_classes, ignore_index, origin=()):
    """Host class indices as a flat int64 array; a value outside [0, C) that is
    not ``ignore_index`` raises ``ValueError`` naming its position and its
    value (a uint64 beyond int64 reported as itself, not wrapped).  Every
    value left is in [0, C) or equals ``ignore_index`` (an int64), so the
    conversion to int64 is exact.

    ``origin`` (the index of ``target[0, 0, ...]`` in a larger array, leading
    axes first) shifts the reported position, for chunks.
    """
    target = host_array(target)
    if target.dtype.kind in "iu" and target.dtype.isnative and target.size > 0:  # Numba reads native order only
        flat = target.reshape(-1)  # a view for the usual contiguous targets
        first = _first_out_of_range(flat, n_classes, check_ignore_index(ignore_index), target.dtype.kind == "u")
    else:
        bad = out_of_range_targets(target, n_classes, ignore_index)
        first = int(np.argmax(bad)) if bad.any() else -1
    if first >= 0:  # its index in C order, as flat's
        position = np.unravel_index(first, target.shape)
        value = target[position]
        position = shift_position(position, origin)
        raise_bad_target(position, value, n_classes, ignore_index)
    return np.ascontiguousarray(target, dtype=np.int64).reshape(-1)


def check_out(shape, dtype, expected_shape, expected_dtype):
    """An ``out=`` array has x's shape (``ValueError``) and exactly the result
    dtype, native byte order included (``TypeError``).  ``dtype`` is a NumPy
    dtype, or a name for arrays whose dtype NumPy cannot describe."""
    if tuple(shape) != tuple(expected_shape):
        raise ValueError(f"out has shape {tuple(shape)}, expected {tuple(expected_shape)} (the shape of x)")
    expected = np.dtype(expected_dtype)
    if (dtype != expected.name) if isinstance(dtype, str) else (np.dtype(dtype) != expected):
        raise TypeError(f"out has dtype {dtype}, expected {expected.name} in native byte order "
                        "(the result dtype: float64 for float64 x, float32 for float32, float16 and bfloat16 x)")


def check_out_without_grad(out):
    """``ValueError`` for a PyTorch ``out`` that requires grad (on either
    backend), as PyTorch's own ``out=`` refuses it."""
    if getattr(out, "requires_grad", False):
        raise ValueError("out requires grad: nbce writes results without recording them for autograd")


def check_out_layout(shape, strides, itemsize):
    """``ValueError`` unless every stride of ``out`` (bytes) is a positive
    multiple of its item size: a zero stride writes several results to one
    element, and the kernels locate rows by non-negative element strides.
    An empty ``out`` has nothing to write."""
    if 0 in tuple(shape):
        return
    for n, stride in zip(shape, strides):
        if n > 1 and (stride <= 0 or stride % itemsize):
            raise ValueError(
                f"out has strides {tuple(strides)}: nbce writes only arrays whose strides are positive "
                f"multiples of the item size ({itemsize} bytes), such as C-ordered arrays and their slices"
            )


def check_out_overlap(overlaps, in_place):
    """``ValueError`` when ``out`` shares memory with ``x`` without being x itself
    (the same memory in the same layout, which is allowed: in place)."""
    if overlaps and not in_place:
        raise ValueError("out overlaps x's memory without being x itself: pass out=x (the same memory and "
                         "layout) to work in place, or an array of its own")
