"""CPU backend: prepares host arrays, launches the ``prange`` kernels, reduces.

The public layer (``nbce.api``) checks arguments with ``nbce._checks`` and
calls the functions below; the CUDA backend (``nbce.cuda``) offers the same
functions for device arrays.  Per-row results are float64.
"""

import threading

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .. import _checks
from .. import _arrays
from .._arrays import as_rows, host_array
from .._threads import launch, launches, n_tasks
from . import kernels

__all__ = ["as_float_array", "as_rows", "resolve_stream", "target_dtype", "softmax_stats", "row_statistic", "normalize", "output_rows", "class_weight",
           "class_index_loss", "cross_entropy_indices", "cross_entropy_soft",
           "soft_target_loss", "row_metrics", "to_host", "host_array", "binary_loss", "binary_cross_entropy", "finish", "reduce", "wrap_like", "move_class_axis"]


def as_float_array(values, name, stream=None):
    """``values`` as a host array of a supported float dtype (``stream`` is ignored)."""
    return _arrays.as_float_array(values, name)


def resolve_stream(stream, like):
    """Host arrays have no stream: ``stream`` is ignored."""
    return None


def target_dtype(target):
    return host_array(target).dtype


def _work(rows):
    """The elements a kernel over ``rows`` reads (``launch``'s measure of its size)."""
    return rows.n_rows * rows.length


@launches
def softmax_stats(rows, with_entropy, stream=None):
    """(logsumexp, entropy) per row."""
    lse = np.empty(rows.n_rows, dtype=np.float64)
    entropy = np.empty(rows.n_rows, dtype=np.float64)
    launch(kernels.softmax_stats_rows, _work(rows), rows.base, rows.geom, rows.length, with_entropy, lse, entropy,
           n_tasks())
    return lse, entropy


@launches
def normalize(rows, exponentiate, dtype, stream=None, out=None):
    """log_softmax (or softmax) of ``rows`` written into ``out`` (rows from
    ``output_rows``), or into a new (n_rows, length) array of ``dtype``; returns
    the array written (None for ``out``)."""
    result = None
    in_place = False
    if out is None:
        result = np.empty((rows.n_rows, rows.length), dtype=dtype)
        out = _arrays.output_rows(result, 1)
    else:
        # In place the kernel reads through the output's own array, so that
        # LLVM sees one array read and written element by element and keeps
        # the vector loop; two arrays over one memory fail its run-time
        # overlap check and leave the loop scalar (softmax in place ran 6x slower).
        in_place = _same_layout(out.base, rows.base) and np.array_equal(out.geom, rows.geom)
    launch(kernels.normalize_rows, _work(rows), rows.base, rows.geom, rows.length, exponentiate, out.base, out.geom,
           in_place, n_tasks())
    return result


def output_rows(out, array, axis, dtype, stream=None):
    """The caller's ``out`` for a result of ``array`` along ``axis``: checked
    (host memory, shape, ``dtype``, layout, overlap with ``array``) and seen as
    writable rows of its own memory."""
    _checks.check_out_without_grad(out)
    host = _arrays.writable_host_array(out, "out")
    _checks.check_out(host.shape, host.dtype, array.shape, dtype)
    _checks.check_out_layout(host.shape, host.strides, host.itemsize)
    in_place = _same_layout(host, array)
    _checks.check_out_overlap(not in_place and _shares_memory(host, array), in_place)
    return _arrays.output_rows(host, axis)


def _same_layout(a, b):
    """The same elements at the same addresses: same first address, shape, strides and item size."""
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0] and a.shape == b.shape
            and a.strides == b.strides and a.itemsize == b.itemsize)


# Enough for the overlap question of ordinary views; beyond it, assume overlap.
_OVERLAP_WORK = 100_000


def _shares_memory(a, b):
    try:
        return np.shares_memory(a, b, max_work=_OVERLAP_WORK)
    except np.exceptions.TooHardError:
        return True


@launches
def class_index_loss(rows, target, weight, ignore_index, smoothing, input_type, stream=None, *, keep=True):
    """(loss, weight of the target class) per row; in reused scratch arrays
    unless the caller ``keep``s them (see ``_per_row``)."""
    indices = _checks.class_indices(target, rows.length, ignore_index)
    loss = _per_row(rows.n_rows, keep, 0)
    target_weight = _per_row(rows.n_rows, keep, 1)
    launch(kernels.class_index_rows, _work(rows), rows.base, rows.geom, rows.length, indices, weight,
           ignore_index, smoothing, input_type, loss, target_weight, n_tasks())
    return loss, target_weight


# Per-row results that a reduction consumes at once go to arrays kept per
# thread and reused, up to SCRATCH_ROWS rows (2 MiB an array at most: two for
# cross_entropy, four for evaluation, kept while the thread lives): fresh
# ones cost their page faults on every call (0.5 ms of a 4.4 ms 65536×100
# cross_entropy, one thread; 1.4 ms of a 4.5 ms evaluate, two threads).
SCRATCH_ROWS = 1 << 18
N_SCRATCH = 4
_scratch = threading.local()


def _per_row(n_rows, keep, slot, dtype=np.float64):
    """An array of ``n_rows`` entries of ``dtype`` (8 bytes each): a new one
    when the caller keeps it or for more than SCRATCH_ROWS rows, else scratch
    ``slot`` (< N_SCRATCH) of this thread, valid until the thread's next call
    for that slot."""
    if keep or n_rows > SCRATCH_ROWS:
        return np.empty(n_rows, dtype=dtype)
    arrays = getattr(_scratch, "arrays", None)
    if arrays is None:
        arrays = _scratch.arrays = [None] * N_SCRATCH
    if arrays[slot] is None or arrays[slot].size < n_rows:
        arrays[slot] = np.empty(max(n_rows, 1024), dtype=np.float64)
    return arrays[slot][:n_rows].view(dtype)


@launches
def soft_target_loss(rows, target_rows, weight, smoothing, input_type, stream=None):
    """Loss per row for class-probability targets."""
    loss = np.empty(rows.n_rows, dtype=np.float64)
    launch(kernels.soft_target_rows, _work(rows), rows.base, rows.geom, rows.length, target_rows.base,
           target_rows.geom, weight, smoothing, input_type, loss, n_tasks())
    return loss


@launches
def row_metrics(rows, target, ignore_index, origin=(), stream=None, *, keep=True):
    """(loss, rank, entropy, confidence) per row, from one read of each row
    (see ``kernels.metric_rows``); a bad class index raises.  Unless the
    caller ``keep``s them, they are this thread's scratch (see ``_per_row``),
    as the CUDA backend's are its stream's."""
    indices = _checks.class_indices(target, rows.length, ignore_index, origin)
    n = rows.n_rows
    loss, entropy, confidence = (_per_row(n, keep, slot) for slot in range(3))
    rank = _per_row(n, keep, 3, np.int64)
    launch(kernels.metric_rows, _work(rows), rows.base, rows.geom, rows.length, indices, ignore_index, loss, rank,
           entropy, confidence, n_tasks())
    return loss, rank, entropy, confidence


# Evaluation sums are added on the host, from the per-row metrics (``nbce._tally``).
SUMS_ON_DEVICE = False


def to_host(arrays, stream=None):
    """Per-row results are already host arrays."""
    return arrays


_ONE = np.ones((), dtype=np.float64)


def _broadcast(values, shape, name):
    """``values`` broadcast to ``shape`` (no copy)."""
    array = _arrays.as_weight_array(_ONE if values is None else values, name)
    try:
        return np.broadcast_to(array, shape)
    except ValueError:
        raise ValueError(f"{name} of shape {array.shape} cannot be broadcast to the input shape {shape}") from None


def _merged_rows(operands):
    """Rows (``as_rows``, last axis) of same-shape operands, after dropping unit
    axes and merging neighbouring axes that every operand walks as one (views,
    no copy).  A contiguous input with scalar weights becomes one row, and so
    do 1-D inputs, (N, 1) inputs and (R, L) inputs with a weight per element."""
    shape = operands[0].shape
    dims = [(n, [a.strides[d] for a in operands]) for d, n in enumerate(shape) if n != 1]
    merged = []
    for n, strides in dims:
        if merged and all(outer == n * inner for outer, inner in zip(merged[-1][1], strides)):
            merged[-1] = (merged[-1][0] * n, strides)
        else:
            merged.append((n, strides))
    if not merged or 0 in shape:
        return [as_rows(a.reshape(-1), -1) for a in operands]
    new_shape = tuple(n for n, _ in merged)
    return [as_rows(as_strided(a, new_shape, tuple(s[i] for _, s in merged), writeable=False), -1)
            for i, a in enumerate(operands)]


@launches
def binary_loss(from_logits, x, y, weight, pos_weight, elementwise_dtype, stream=None):
    """(element-wise loss or None, partial sums whose sum is the total).

    Probabilities, then targets, outside [0, 1] raise ``ValueError`` naming
    the first one, as PyTorch refuses them (NaN propagates instead).
    ``weight`` and ``pos_weight`` broadcast to the input's shape by NumPy's
    rules (PyTorch's too): a scalar, one value per last-axis entry (C,), one
    per row (R, 1), or the full shape.  The partial sums are those of
    fixed-size chunks of the flattened input (``kernels.binary_chunks``), the
    same for every thread count.
    """
    shape = x.shape if x.ndim else (1,)
    operands = [x.reshape(shape), y.reshape(shape), _broadcast(weight, shape, "weight"),
                _broadcast(pos_weight, shape, "pos_weight")]
    x_rows, y_rows, w_rows, pw_rows = _merged_rows(operands)
    n_elements = x.size
    store = elementwise_dtype is not None
    # Not stored: an empty array of the type the losses are computed in (float32, float64).
    elementwise = np.empty(n_elements if store else 0, dtype=elementwise_dtype or _arrays.result_dtype(x.dtype))
    n_chunks = -(-n_elements // kernels.BINARY_CHUNK)
    chunk_sums = np.empty(n_chunks, dtype=np.float64)
    bad = np.empty(n_chunks, dtype=np.int64)
    launch(kernels.binary_chunks, n_elements, from_logits, n_elements, x_rows.length, x_rows.base, x_rows.geom,
           y_rows.base, y_rows.geom, w_rows.base, w_rows.geom, pw_rows.base, pw_rows.geom, elementwise, chunk_sums,
           bad)
    if bad.any():
        _checks.raise_outside_unit_interval(x, y)
    return (elementwise if store else None), chunk_sums


def binary_cross_entropy(from_logits, x, y, weight, pos_weight, reduction, dtype, stream=None):
    """Binary cross-entropy reduced as asked ("none": the element-wise losses
    as ``dtype`` in ``x``'s shape; "sum"/"mean": the float64 sum of the chunk
    sums, over the element count for "mean")."""
    elementwise, chunk_sums = binary_loss(from_logits, x, y, weight, pos_weight,
                                          dtype if reduction == "none" else None)
    if reduction == "none":
        return finish(elementwise, dtype, x.shape)
    return reduce(chunk_sums, reduction, dtype, x.size)


def finish(values, dtype, shape, stream=None):
    """Per-row float64 values as a ``dtype`` array of ``shape``; values beyond
    the dtype's range round to inf, as float32 arithmetic would have given."""
    with np.errstate(over="ignore"):
        return values.reshape(shape).astype(dtype, copy=False)


def reduce(values, reduction, dtype, denominator, stream=None):
    """Sum (float64), or the sum divided by ``denominator`` (a count, or a
    vector whose sum is the count); a zero denominator gives NaN, as in
    PyTorch (its mean of the target terms is 0/0 even when label smoothing
    adds a non-zero sum)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        total = values.sum()
        if reduction == "sum":
            return dtype.type(total)
        if not np.isscalar(denominator):
            denominator = denominator.sum()
        if denominator == 0:
            return dtype.type(np.nan)
        return dtype.type(np.float64(total) / np.float64(denominator))


def wrap_like(result, like):
    return result


def move_class_axis(out, axis):
    """A class-last result viewed with its class axis back at ``axis``."""
    return np.moveaxis(out, -1, axis)


def row_statistic(rows, which, dtype, stream=None):
    """logsumexp or entropy per row as a ``dtype`` array of the batch shape."""
    lse, entropy = softmax_stats(rows, which == "entropy")
    return finish(entropy if which == "entropy" else lse, dtype, rows.batch_shape)


def class_weight(weight, n_classes, stream=None):
    return _checks.class_weight(weight, n_classes)


def cross_entropy_indices(rows, target, weight, ignore_index, smoothing, input_type, reduction, dtype, stream=None):
    """Cross-entropy with class-index targets, reduced as asked ("mean" divides by the targets' weights)."""
    loss, target_weight = class_index_loss(rows, target, class_weight(weight, rows.length), ignore_index, smoothing,
                                           input_type, keep=reduction == "none")
    return _reduced(loss, reduction, dtype, target_weight, rows)


def cross_entropy_soft(rows, target_rows, weight, smoothing, input_type, reduction, dtype, stream=None):
    """Cross-entropy with class-probability targets, reduced as asked ("mean" divides by the rows)."""
    loss = soft_target_loss(rows, target_rows, class_weight(weight, rows.length), smoothing, input_type)
    return _reduced(loss, reduction, dtype, rows.n_rows, rows)


def _reduced(loss, reduction, dtype, denominator, rows):
    if reduction == "none":
        return finish(loss, dtype, rows.batch_shape)
    return reduce(loss, reduction, dtype, denominator)
