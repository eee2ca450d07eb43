"""The public functions of nbce.

Every function accepts anything ``numpy.asarray`` accepts (ndarrays, memmaps,
lists, strided views) and PyTorch CPU tensors (float32, float16, bfloat16:
read in place, bfloat16 through its 16-bit words viewed as
``ml_dtypes.bfloat16``; a tensor that requires grad is detached, nbce
computes no gradient), and returns NumPy results: float64 for float64 input,
float32 for float32, float16 and bfloat16 input (``log_softmax`` and
``softmax`` write into the caller's ``out=`` array instead when given, and
return it).  Batch reductions ("mean", "sum") accumulate in float64.

Logits in CUDA memory (Numba device arrays, CuPy arrays, PyTorch CUDA
tensors) run on the GPU backend and give device results of the caller's
array type; a reduction gives a 0-d device array.  ``stream`` (every
function) selects the CUDA stream; by default CuPy's or PyTorch's current
stream, else the default stream.  It is ignored for host arrays.
"""

import numpy as np

from . import _checks
from ._arrays import normalize_axis, result_dtype
from ._dispatch import backend_for, in_device_context

__all__ = [
    "cross_entropy",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "logsumexp",
    "log_softmax",
    "softmax",
    "entropy",
]


def _scores(values, axis, stream, name="logits"):
    """(backend, array, axis, rows, stream) for a class-axis input with at least one class."""
    backend = backend_for(values)
    stream = backend.resolve_stream(stream, values)
    array = backend.as_float_array(values, name, stream)
    if array.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension (the class axis), got a scalar")
    axis = normalize_axis(axis, array.ndim, name)
    if array.shape[axis] == 0:
        raise ValueError(f"{name} has no classes: its class axis {axis} has length 0")
    return backend, array, axis, backend.as_rows(array, axis, stream), stream


@in_device_context
def logsumexp(x, *, axis=-1, stream=None):
    r"""Log-sum-exp along ``axis``: :math:`\log \sum_j e^{x_j}`, computed in one pass.

    The result has ``x``'s shape without ``axis``.  Stable for any magnitude:
    -inf entries contribute nothing (all -inf gives -inf), +inf gives +inf,
    NaN gives NaN.
    """
    return _row_statistic(x, "logsumexp", axis, stream, "x")


def _row_statistic(values, which, axis, stream, name):
    backend, array, _, rows, stream = _scores(values, axis, stream, name)
    return backend.wrap_like(backend.row_statistic(rows, which, result_dtype(array.dtype), stream), values)


def _normalized(x, axis, exponentiate, out, stream):
    backend, array, axis, rows, stream = _scores(x, axis, stream, "x")
    dtype = result_dtype(array.dtype)
    if out is not None:
        backend.normalize(rows, exponentiate, dtype, stream, out=backend.output_rows(out, array, axis, dtype, stream))
        return out
    result = backend.normalize(rows, exponentiate, dtype, stream)
    result = backend.wrap_like(result.reshape(*rows.batch_shape, rows.length), x)
    return result if axis == array.ndim - 1 else backend.move_class_axis(result, axis)


@in_device_context
def log_softmax(x, *, axis=-1, out=None, stream=None):
    r"""Log-softmax along ``axis``: :math:`x_i - \log \sum_j e^{x_j}`.

    Formed as :math:`(x_i - m) - \log s` with :math:`m` the row maximum and
    :math:`s = \sum_j e^{x_j - m}`, so no magnitude loses the log-sum (forming
    :math:`x_i - \operatorname{logsumexp}(x)` would, once :math:`|m| \gtrsim 10^{12}`).
    A row holding +inf, or only -inf, gives NaN, as in PyTorch.  Same shape
    as ``x``.

    On the CPU, :math:`m` and :math:`\log s` are float64 and the element-wise
    pass runs in the result dtype.  float32 results (float32, float16, bfloat16 ``x``):
    :math:`x_i - m \le 0 \le \log s`, so nothing cancels and, given
    :math:`(m, \log s)`, the relative error is at most :math:`2 \cdot 2^{-24}`
    (about 2 ulp); the float32 sums behind :math:`\log s` add an absolute
    error of order :math:`10^{-7}` to :math:`10^{-6}`.  float64 results: the
    same with :math:`2^{-53}` and float64 sums.  See ``nbce.cpu._normalize``.

    ``out``: an array to write the result into, which is returned, like a
    NumPy ufunc's ``out``: ``x``'s shape, exactly the result dtype (float64
    for float64 ``x``, float32 otherwise), writable, where ``x`` lives (a
    NumPy array or PyTorch CPU tensor for host ``x``; a Numba, CuPy or
    PyTorch CUDA array on ``x``'s GPU for device ``x``), strides positive
    multiples of the item size (on the GPU its axes other than ``axis`` must
    also merge into one strided axis, as in 2-D arrays, C-ordered arrays with
    the class axis last, and class-last arrays with the class axis moved into
    place, the layout ``out=None`` returns).  ``out=x``
    works in place; any other overlap with ``x`` is a ``ValueError``, as are
    a wrong shape or layout; a wrong dtype or location is a ``TypeError``.
    Reusing ``out`` saves a fresh result's page faults.  Without ``out``, a
    class axis other than the last gives a view with the class axis moved
    back into place.
    """
    return _normalized(x, axis, False, out, stream)


@in_device_context
def softmax(x, *, axis=-1, out=None, stream=None):
    r"""Softmax along ``axis``: :math:`e^{x_i} / \sum_j e^{x_j}` (see
    :func:`log_softmax` for :math:`m`, :math:`s`, the NaN rows and ``out``).

    On the CPU, :math:`e^{\log p_i}` with :math:`\log p_i` as in
    :func:`log_softmax`, in the result dtype with a vectorized exp: given
    :math:`(m, \log s)`, float32 results have a relative error of at most
    :math:`2^{-24}(2|\log p_i| + 2.1)` (below :math:`1.6 \cdot 10^{-6}` for
    :math:`p_i \ge e^{-12}`, below :math:`1.1 \cdot 10^{-5}` for any result
    above float32's smallest normal; an absolute :math:`2^{-148}` below it);
    float64 results the same with :math:`2^{-53}`.  An absolute error
    :math:`\delta` in :math:`\log s` scales every result by :math:`e^{-\delta}`.
    """
    return _normalized(x, axis, True, out, stream)


@in_device_context
def entropy(logits, *, axis=-1, stream=None):
    r"""Shannon entropy (nats) of ``softmax(logits)`` along ``axis``.

    :math:`H = -\sum_i p_i \log p_i = \log s - \frac{1}{s}\sum_i e^{x_i - c}(x_i - c)`
    with :math:`s = \sum_i e^{x_i - c}` and :math:`c` the row maximum, streamed
    in one pass.  Classes with probability 0 (-inf logits) contribute 0.
    """
    return _row_statistic(logits, "entropy", axis, stream, "logits")


@in_device_context
def cross_entropy(logits, target, *, axis=-1, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, input_type="logits", stream=None):
    r"""Cross-entropy between class scores and targets, with PyTorch's semantics.

    With :math:`\log p_c` the log-probabilities of a row (``input_type``:
    ``"logits"`` gives :math:`(x_c - m) - \log \sum_j e^{x_j - m}` with :math:`m`
    the row maximum, i.e. :math:`x_c - \operatorname{logsumexp}(x)` without
    its cancellation, NaN throughout a row holding +inf as in PyTorch;
    ``"log_probs"`` gives :math:`x_c`, ``"probs"`` gives :math:`\max(\log x_c, -100)`), weights
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
    weight : array_like of shape (C,), optional (any real dtype, bfloat16 included)
    ignore_index : int that fits int64, class-index targets only (compared
        exactly with targets of any integer dtype, uint64 included)
    reduction : "none" | "mean" | "sum"
    label_smoothing : real number in [0, 1] (a string is a ``TypeError``)
    input_type : "logits" | "log_probs" | "probs"

    Raises ``ValueError`` for out-of-range class indices (naming the position),
    shape mismatches and bad options; ``TypeError`` for non-float logits or
    targets that are neither integers nor floats.
    """
    backend, array, axis, rows, stream = _scores(logits, axis, stream)
    _checks.check_reduction(reduction)
    code = _checks.input_type_code(input_type)
    smoothing = _checks.check_label_smoothing(label_smoothing)
    ignore_index = _checks.check_ignore_index(ignore_index)
    dtype = result_dtype(array.dtype)

    kind = backend.target_dtype(target)
    if kind.kind in "iu":
        _checks.check_shape("target", _shape_of(target), rows.batch_shape,
                            "class-index targets have the logits' shape without the class axis")
        result = backend.cross_entropy_indices(rows, target, weight, ignore_index, smoothing, code, reduction, dtype,
                                               stream)
    elif kind.kind == "f" or kind.name == "bfloat16":
        probabilities = backend.as_float_array(target, "target", stream)
        _checks.check_shape("target", probabilities.shape, array.shape,
                            "class-probability targets have the logits' shape")
        result = backend.cross_entropy_soft(rows, backend.as_rows(probabilities, axis, stream), weight, smoothing,
                                            code, reduction, dtype, stream)
    else:
        raise TypeError(
            f"target must hold integer class indices or float class probabilities, got dtype {kind}"
        )
    return backend.wrap_like(result, logits)


def _shape_of(values):
    shape = getattr(values, "shape", None)
    return tuple(shape) if shape is not None else np.shape(values)


def _binary(x, target, weight, pos_weight, reduction, from_logits, stream):
    backend = backend_for(x)
    stream = backend.resolve_stream(stream, x)
    name = "logits" if from_logits else "probs"
    array = backend.as_float_array(x, name, stream)
    _checks.check_reduction(reduction)
    target_array = backend.as_float_array(target, "target", stream)
    _checks.check_shape("target", target_array.shape, array.shape, f"the shape of {name}")
    dtype = result_dtype(array.dtype)
    result = backend.binary_cross_entropy(from_logits, array, target_array, weight, pos_weight, reduction, dtype,
                                          stream)
    return backend.wrap_like(result, x)


@in_device_context
def binary_cross_entropy(probs, target, *, weight=None, reduction="mean", stream=None):
    r"""Binary cross-entropy of probabilities, PyTorch's ``binary_cross_entropy``.

    :math:`\ell = -w\,[\,y \max(\log p, -100) + (1-y)\max(\log(1-p), -100)\,]`,
    element-wise; ``target`` (soft labels in [0, 1]) has ``probs``' shape and
    ``weight`` broadcasts to it by NumPy's rules.  ``"mean"`` averages over all
    elements.  Probabilities or targets outside [0, 1] raise ``ValueError``
    naming the first (probabilities checked first), as PyTorch refuses them;
    NaN propagates (PyTorch raises).  On the CPU :math:`\log(1-p)` is
    evaluated as :math:`\operatorname{log1p}(-p)` in the input's float type
    (float32 for float32 and half inputs), so tiny probabilities keep it.
    """
    return _binary(probs, target, weight, None, reduction, False, stream)


@in_device_context
def binary_cross_entropy_with_logits(logits, target, *, weight=None, pos_weight=None, reduction="mean",
                                     stream=None):
    r"""Binary cross-entropy of logits, PyTorch's ``binary_cross_entropy_with_logits``.

    :math:`\ell = w\,[\,(1-y)\,x + (1 + (p_w - 1)\,y)\,(\log(1 + e^{-|x|}) + \max(-x, 0))\,]`,
    i.e. :math:`-w\,[\,p_w\, y \log\sigma(x) + (1-y)\log(1-\sigma(x))\,]` without
    overflow for any finite :math:`x`.  ``weight`` and ``pos_weight`` broadcast
    to the input's shape by NumPy's rules: on the CPU a scalar, one value per
    last-axis entry (``pos_weight``'s usual (C,), one per class in
    multi-label problems), one per row (R, 1), or the full shape.

    On the CPU the loss is evaluated as
    :math:`w\,[\,(1-y)\,\mathrm{sp}(x) + p_w\, y\, \mathrm{sp}(-x)\,]` with
    :math:`\mathrm{sp}(x) = \log(1 + e^x)` (the same value for finite :math:`x`,
    without the cancellation of :math:`(1-y)\,x` against :math:`\mathrm{sp}(-x)`),
    in the input's float type (float32 for float32 and half inputs; softplus
    within 2 ulp); infinite logits take PyTorch's formula, NaN included.
    """
    return _binary(logits, target, weight, pos_weight, reduction, True, stream)
