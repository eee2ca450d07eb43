"""Argument checks shared by every backend: one place, one wording."""

import numpy as np

REDUCTIONS = ("none", "mean", "sum")
INPUT_TYPES = ("logits", "log_probs", "probs")


def check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def input_type_code(input_type):
    """'logits' -> 0, 'log_probs' -> 1, 'probs' -> 2 (the kernels' codes)."""
    if input_type not in INPUT_TYPES:
        raise ValueError(f"input_type must be one of {INPUT_TYPES}, got {input_type!r}")
    return INPUT_TYPES.index(input_type)


def check_label_smoothing(label_smoothing):
    try:
        value = float(label_smoothing)
    except (TypeError, ValueError):
        raise TypeError(f"label_smoothing must be a float in [0, 1], got {label_smoothing!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    return value


def check_ignore_index(ignore_index):
    if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(ignore_index, (int, np.integer)):
        raise TypeError(f"ignore_index must be an integer, got {ignore_index!r}")
    return int(ignore_index)


def check_shape(name, shape, expected, what):
    if tuple(shape) != tuple(expected):
        raise ValueError(f"{name} has shape {tuple(shape)}, expected {tuple(expected)} ({what})")


def class_weight(weight, n_classes):
    """Per-class weights as float64 of length ``n_classes`` (ones when None)."""
    if weight is None:
        return np.ones(n_classes, dtype=np.float64)
    array = np.asarray(weight)
    if array.dtype.kind not in "fiu":
        raise TypeError(f"weight must be a real array, got dtype {array.dtype}")
    check_shape("weight", array.shape, (n_classes,), "one weight per class")
    return array.astype(np.float64)


def out_of_range_targets(target, n_classes, ignore_index):
    """Boolean mask of class indices outside [0, n_classes) that are not ``ignore_index``."""
    return (target != ignore_index) & ((target < 0) | (target >= n_classes))


def _index(position):
    return "[" + ", ".join(str(int(i)) for i in position) + "]"


def shift_position(position, origin):
    """``position`` in a chunk -> in the whole array, the chunk starting at ``origin`` (leading axes)."""
    return tuple(int(p) + int(o) for p, o in zip(position, tuple(origin) + (0,) * len(position)))


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


def class_indices(target, n_classes, ignore_index, origin=()):
    """Host class indices as a flat int64 array; a value outside [0, C) that is
    not ``ignore_index`` raises ``ValueError`` naming its position.

    ``origin`` (the index of ``target[0, 0, ...]`` in a larger array, leading
    axes first) shifts the reported position, for chunks.
    """
    target = np.asarray(target)
    bad = out_of_range_targets(target, n_classes, ignore_index)
    if bad.any():
        position = np.unravel_index(int(np.argmax(bad)), target.shape)
        value = target[position]
        position = shift_position(position, origin)
        raise_bad_target(position, value, n_classes, ignore_index)
    return np.ascontiguousarray(target, dtype=np.int64).reshape(-1)
