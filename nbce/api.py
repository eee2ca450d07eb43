"""The public functions of nbce.

Every function accepts anything ``numpy.asarray`` accepts (ndarrays, memmaps,
lists, strided views, CPU tensors through the array protocol) and returns
NumPy results: float64 for float64 input, float32 for float32, float16 and
bfloat16 input.  Batch reductions ("mean", "sum") accumulate in float64.
"""

import numpy as np

from . import _checks
from ._arrays import as_float_array, as_rows, normalize_axis, result_dtype
from ._dispatch import backend_for

__all__ = [
    "cross_entropy",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "logsumexp",
    "log_softmax",
    "softmax",
    "entropy",
]


def _scores(values, axis, name="logits"):
    """(backend, array, axis, rows) for a class-axis input with at least one class."""
    backend = backend_for(values)
    array = as_float_array(values, name)
    if array.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension (the class axis), got a scalar")
    axis = normalize_axis(axis, array.ndim, name)
    if array.shape[axis] == 0:
        raise ValueError(f"{name} has no classes: its class axis {axis} has length 0")
    return backend, array, axis, as_rows(array, axis)


def _reduce(loss, reduction, dtype, batch_shape, denominator):
    """Apply ``reduction`` to per-row float64 losses; the mean divides by ``denominator``.

    A float64 value beyond the result dtype's range rounds to inf, as float32
    arithmetic would have given.
    """
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if reduction == "none":
            return loss.reshape(batch_shape).astype(dtype, copy=False)
        total = np.sum(loss)
        if reduction == "sum":
            return dtype.type(total)
        return dtype.type(np.float64(total) / np.float64(denominator))


def logsumexp(x, *, axis=-1):
    r"""Log-sum-exp along ``axis``: :math:`\log \sum_j e^{x_j}`, computed in one pass.

    The result has ``x``'s shape without ``axis``.  Stable for any magnitude:
    -inf entries contribute nothing (all -inf gives -inf), +inf gives +inf,
    NaN gives NaN.
    """
    backend, array, _, rows = _scores(x, axis, "x")
    lse, _ = backend.softmax_stats(rows, False)
    return lse.reshape(rows.batch_shape).astype(result_dtype(array.dtype), copy=False)


def _normalized(x, axis, exponentiate):
    backend, array, axis, rows = _scores(x, axis, "x")
    out = backend.normalize(rows, exponentiate, result_dtype(array.dtype))
    return np.moveaxis(out.reshape(*rows.batch_shape, rows.length), -1, axis)


def log_softmax(x, *, axis=-1):
    r"""Log-softmax along ``axis``: :math:`x_i - \log \sum_j e^{x_j}`.

    Evaluated in float64 and rounded to the result dtype.  Same shape as
    ``x``; for a class axis other than the last the result is a view with the
    class axis moved back into place.
    """
    return _normalized(x, axis, False)


def softmax(x, *, axis=-1):
    r"""Softmax along ``axis``: :math:`e^{x_i} / \sum_j e^{x_j}` (see :func:`log_softmax`)."""
    return _normalized(x, axis, True)


def entropy(logits, *, axis=-1):
    r"""Shannon entropy (nats) of ``softmax(logits)`` along ``axis``.

    :math:`H = -\sum_i p_i \log p_i = \log s - \frac{1}{s}\sum_i e^{x_i - c}(x_i - c)`
    with :math:`s = \sum_i e^{x_i - c}` and :math:`c` the row maximum, streamed
    in one pass.  Classes with probability 0 (-inf logits) contribute 0.
    """
    backend, array, _, rows = _scores(logits, axis)
    _, ent = backend.softmax_stats(rows, True)
    return ent.reshape(rows.batch_shape).astype(result_dtype(array.dtype), copy=False)


def _class_indices(target, batch_shape, n_classes, ignore_index):
    """Class-index targets as a flat int64 array, after checking shape and range."""
    _checks.check_shape("target", target.shape, batch_shape,
                        "class-index targets have the logits' shape without the class axis")
    bad = _checks.out_of_range_targets(target, n_classes, ignore_index)
    if bad.any():
        position = np.unravel_index(int(np.argmax(bad)), target.shape)
        _checks.raise_bad_target(position, target[position], n_classes, ignore_index)
    return np.ascontiguousarray(target, dtype=np.int64).reshape(-1)


def cross_entropy(logits, target, *, axis=-1, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, input_type="logits"):
    r"""Cross-entropy between class scores and targets, with PyTorch's semantics.

    With :math:`\log p_c` the log-probabilities of a row (``input_type``:
    ``"logits"`` gives :math:`x_c - \operatorname{logsumexp}(x)`, ``"log_probs"``
    gives :math:`x_c`, ``"probs"`` gives :math:`\max(\log x_c, -100)`), weights
    :math:`w` (ones by default), :math:`C` classes and smoothing :math:`\varepsilon`:

    * class-index targets :math:`t` (any integer dtype, the logits' shape
      without ``axis``):
      :math:`\ell = -(1-\varepsilon)\, w_t \log p_t - \frac{\varepsilon}{C}\sum_c w_c \log p_c`;
      rows with :math:`t` = ``ignore_index`` give 0 and are not read.
      ``"mean"`` divides the sum by :math:`\sum w_t` over the rows not ignored
      (NaN when that is 0).
    * class-probability targets :math:`y` (floats, the logits' shape):
      :math:`\ell = -\sum_c w_c\, y'_c \log p_c` with
      :math:`y' = (1-\varepsilon) y + \varepsilon / C`; ``"mean"`` divides by the
      number of rows.  Terms with :math:`w_c y'_c = 0` count as 0, so masked
      (-inf) classes with zero target are not NaN.

    Parameters
    ----------
    logits : array_like, float64/float32/float16/bfloat16, ndim >= 1
    target : array_like of integers or floats
    axis : int, the class axis (PyTorch's layout is ``axis=1``)
    weight : array_like of shape (C,), optional
    ignore_index : int, class-index targets only
    reduction : "none" | "mean" | "sum"
    label_smoothing : float in [0, 1]
    input_type : "logits" | "log_probs" | "probs"

    Raises ``ValueError`` for out-of-range class indices (naming the position),
    shape mismatches and bad options; ``TypeError`` for non-float logits or
    targets that are neither integers nor floats.
    """
    backend, array, axis, rows = _scores(logits, axis)
    _checks.check_reduction(reduction)
    code = _checks.input_type_code(input_type)
    smoothing = _checks.check_label_smoothing(label_smoothing)
    ignore_index = _checks.check_ignore_index(ignore_index)
    n_classes = rows.length
    class_weight = _checks.class_weight(weight, n_classes)
    dtype = result_dtype(array.dtype)

    target = np.asarray(target)
    if target.dtype.kind in "iu":
        indices = _class_indices(target, rows.batch_shape, n_classes, ignore_index)
        loss, target_weight = backend.class_index_loss(rows, indices, class_weight, ignore_index,
                                                       smoothing, code)
        denominator = np.sum(target_weight) if reduction == "mean" else None
    elif target.dtype.kind == "f" or target.dtype.name == "bfloat16":
        probabilities = as_float_array(target, "target")
        _checks.check_shape("target", probabilities.shape, array.shape,
                            "class-probability targets have the logits' shape")
        loss = backend.soft_target_loss(rows, as_rows(probabilities, axis), class_weight, smoothing, code)
        denominator = rows.n_rows
    else:
        raise TypeError(
            f"target must hold integer class indices or float class probabilities, got dtype {target.dtype}"
        )
    return _reduce(loss, reduction, dtype, rows.batch_shape, denominator)


def _elementwise_operand(values, shape, name):
    """``values`` broadcast to ``shape`` (no copy), viewed as rows of the last axis."""
    array = as_float_array(values, name)
    try:
        array = np.broadcast_to(array, shape)
    except ValueError:
        raise ValueError(f"{name} of shape {array.shape} cannot be broadcast to the input shape {shape}") from None
    return as_rows(array, -1)


_ONE = np.ones((), dtype=np.float64)


def _binary(x, target, weight, pos_weight, reduction, from_logits):
    backend = backend_for(x)
    name = "logits" if from_logits else "probs"
    array = as_float_array(x, name)
    _checks.check_reduction(reduction)
    target_array = as_float_array(target, "target")
    _checks.check_shape("target", target_array.shape, array.shape, f"the shape of {name}")
    shape = array.shape if array.ndim else (1,)
    x_rows = as_rows(array.reshape(shape), -1)
    y_rows = as_rows(target_array.reshape(shape), -1)
    w_rows = _elementwise_operand(_ONE if weight is None else weight, shape, "weight")
    pw_rows = _elementwise_operand(_ONE if pos_weight is None else pos_weight, shape, "pos_weight")
    dtype = result_dtype(array.dtype)
    elementwise, row_sums, bad = backend.binary_loss(
        from_logits, x_rows, y_rows, w_rows, pw_rows, dtype if reduction == "none" else None)
    if bad.any():
        flat = np.asarray(array.reshape(shape), dtype=np.float64)
        position = tuple(int(i) for i in np.argwhere((flat < 0) | (flat > 1))[0])[: array.ndim]
        _checks.raise_bad_probability(position, array[position] if array.ndim else array[()])
    if reduction == "none":
        return elementwise.reshape(array.shape)
    return _reduce(row_sums, reduction, dtype, None, array.size)


def binary_cross_entropy(probs, target, *, weight=None, reduction="mean"):
    r"""Binary cross-entropy of probabilities, PyTorch's ``binary_cross_entropy``.

    :math:`\ell = -w\,[\,y \max(\log p, -100) + (1-y)\max(\log(1-p), -100)\,]`,
    element-wise; ``target`` (soft labels in [0, 1]) has ``probs``' shape and
    ``weight`` broadcasts to it.  ``"mean"`` averages over all elements.
    Probabilities outside [0, 1] raise ``ValueError``; NaN propagates.
    """
    return _binary(probs, target, weight, None, reduction, False)


def binary_cross_entropy_with_logits(logits, target, *, weight=None, pos_weight=None, reduction="mean"):
    r"""Binary cross-entropy of logits, PyTorch's ``binary_cross_entropy_with_logits``.

    :math:`\ell = w\,[\,(1-y)\,x + (1 + (p_w - 1)\,y)\,(\log(1 + e^{-|x|}) + \max(-x, 0))\,]`,
    i.e. :math:`-w\,[\,p_w\, y \log\sigma(x) + (1-y)\log(1-\sigma(x))\,]` without
    overflow for any finite :math:`x`.  ``pos_weight`` broadcasts over the last
    axis (one weight per class in multi-label problems), ``weight`` to the
    input's shape.
    """
    return _binary(logits, target, weight, pos_weight, reduction, True)
