"""CUDA backend: the CPU backend's operations on device arrays.

Operands are checked by the public layer exactly as on the CPU; this module
turns device arrays into row-major (rows, classes) views, launches the
kernels of ``rows.py`` and ``kernels.py`` on the caller's stream and returns device arrays
(wrapped back into CuPy arrays or PyTorch tensors by ``wrap_like``).
"""

import math
from dataclasses import dataclass
from math import prod

import numpy as np

from .. import _arrays, _checks
from .._dispatch import is_cuda_array
from . import _device as dev
from . import _replay
from . import rows as rows_module
from . import tally
from ._workspace import NO_BAD_ROW, workspace
from .kernels import elementwise_kernels, utility_kernels

# Threads per block (a power of two).  Tests lower it so that the simulator
# runs several blocks and partial ones.
THREADS = 256
# Aim for this many resident blocks per multiprocessor when splitting rows.
BLOCKS_PER_SM = 4
# A chunk of a split row holds at least this many elements per thread.
MIN_ELEMENTS_PER_THREAD = 8

_FLOATS = {"float64", "float32", "float16"}


@dataclass(frozen=True)
class DeviceFloats:
    """A checked floating-point device operand.  ``dtype`` is its logical dtype
    (bfloat16 data is stored as 16-bit words and reported as float32 for the
    result-dtype rule)."""

    data: object
    dtype: np.dtype
    bfloat16: bool
    source: object

    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def ndim(self):
        return len(self.data.shape)

    @property
    def size(self):
        return prod(self.shape)


@dataclass(frozen=True)
class DeviceRows:
    data: object  # (n_rows, length) device array with contiguous rows
    batch_shape: tuple
    length: int
    bfloat16: bool
    narrow: bool
    device: object  # GPU ordinal when the array's library reports one
    source: object = None  # the caller's array (results are allocated by its library)

    @property
    def n_rows(self):
        return prod(self.batch_shape)


context = dev.context


def run_public(function, args, kwargs):
    """A public function on CUDA arrays: in one context block, or replayed (``_replay``)."""
    return _replay.call(function, args, kwargs, context, (THREADS, MIN_ELEMENTS_PER_THREAD, BLOCKS_PER_SM),
                        resolve_stream)


def require_device(why="nbce got a CUDA array"):
    """Raise a clear error when CUDA work arrives but no CUDA device can run kernels."""
    if not dev.available():
        raise RuntimeError(
            f"{why}, but no CUDA device is usable here (no GPU or no driver); "
            "install numba-cuda with a CUDA toolkit (pip install 'nbce[cuda]') on a machine with a GPU"
        )


def resolve_stream(stream, like):
    """The stream to launch on: the caller's, else CuPy's or PyTorch's current one, else the default."""
    if stream is not None:
        return stream
    handle = _current_library_stream(_library(like), like)
    return 0 if handle is None else dev.external_stream(handle)


def _current_library_stream(library, like):
    """The handle of ``like``'s library's current stream (None for other arrays)."""
    if library == "cupy":
        import cupy

        return cupy.cuda.get_current_stream().ptr
    if library == "torch":
        import torch

        return torch.cuda.current_stream(like.device).cuda_stream
    return None


def _library(obj):
    return type(obj).__module__.split(".")[0]


def as_float_array(obj, name, stream=None):
    """A checked floating-point device operand; ``stream``: where it will be read.

    A host operand (class-probability or binary targets beside device logits)
    is checked as on the CPU and copied to the device."""
    if not is_cuda_array(obj):
        host = _arrays.as_float_array(obj, name)
        bfloat16 = host.dtype.name == "bfloat16"
        data = dev.to_device(np.ascontiguousarray(host.view(np.uint16) if bfloat16 else host), stream=stream or 0)
        return DeviceFloats(data, np.dtype(np.float32) if bfloat16 else host.dtype, bfloat16, data)
    if _library(obj) == "torch" and str(obj.dtype) == "torch.bfloat16":
        import torch

        data = dev.as_device_array(obj.view(torch.int16), stream)
        return DeviceFloats(data, np.dtype(np.float32), True, obj)
    data = dev.as_device_array(obj, stream)
    dtype = np.dtype(data.dtype)
    if dtype.name not in _FLOATS:
        raise TypeError(
            f"{name} must be a floating-point array (float64, float32, float16 or bfloat16), got dtype {dtype}"
        )
    return DeviceFloats(data, dtype, False, obj)


def _class_last_contiguous(array, axis, stream):
    """The operand with ``axis`` last and contiguous rows; copies on the device when needed."""
    data, source = array.data, array.source
    ndim = array.ndim
    last = axis == ndim - 1
    if last and _c_contiguous(data):
        return data
    library = _library(source)
    if library == "cupy":
        import cupy

        return dev.as_device_array(cupy.ascontiguousarray(cupy.moveaxis(source, axis, -1)))
    if library == "torch":
        moved = source.movedim(axis, -1).contiguous()
        if array.bfloat16:
            import torch

            moved = moved.view(torch.int16)
        return dev.as_device_array(moved)
    return _gather_class_last(data, axis, stream)


def _gather_class_last(data, axis, stream):
    """A C-contiguous copy of ``data`` with ``axis`` moved last, made by the
    ``gather`` kernel: Numba device arrays have no strided device copy."""
    itemsize = np.dtype(data.dtype).itemsize
    if any(s % itemsize for s in data.strides):
        raise ValueError(f"device array strides {tuple(data.strides)} are not multiples of its item size {itemsize}")
    order = [k for k in range(len(data.shape)) if k != axis] + [axis]
    return _gather(data, [data.shape[k] for k in order], [data.strides[k] // itemsize for k in order], stream)


def _gather(data, shape, strides, stream):
    """A C-contiguous ``shape`` array of ``data``'s elements at element
    ``strides`` from its first (0 repeats an element: broadcasting)."""
    itemsize = np.dtype(data.dtype).itemsize
    out = dev.device_empty(tuple(shape), data.dtype, stream)
    if out.size == 0:
        return out
    lowest = sum(min(0, s * (n - 1)) for n, s in zip(shape, strides))
    span = 1 + sum(abs(s) * (n - 1) for n, s in zip(shape, strides))
    memory = dev.strided_view(data, lowest * itemsize, (span,), (itemsize,))
    geometry = dev.to_device(np.array([shape, strides], dtype=np.int64).T.copy(), stream=stream)
    blocks = _grid(math.ceil(out.size / THREADS))
    launch(utility_kernels(THREADS).gather, blocks, THREADS, stream, memory, -lowest, geometry, out.reshape(out.size))
    return out


def _broadcast_on_device(data, shape, name, stream):
    """A device operand broadcast to ``shape`` by NumPy's rules, as a C-contiguous copy."""
    vshape = tuple(data.shape)
    try:
        if np.broadcast_shapes(vshape, tuple(shape)) != tuple(shape):
            raise ValueError
    except ValueError:
        raise ValueError(f"{name} of shape {vshape} cannot be broadcast to the input shape {tuple(shape)}") from None
    itemsize = np.dtype(data.dtype).itemsize
    padded = (1,) * (len(shape) - len(vshape)) + vshape
    strides = (0,) * (len(shape) - len(vshape)) + tuple(s // itemsize for s in data.strides)
    return _gather(data, shape, [0 if n == 1 else s for n, s in zip(padded, strides)], stream)


def _c_contiguous(data):
    """Whether a device array's elements are laid out in C order without gaps
    (the strides of length-1 axes do not matter)."""
    shape = tuple(data.shape)
    itemsize = np.dtype(data.dtype).itemsize
    return prod(shape) == 0 or all(
        n == 1 or have == want for n, have, want in zip(shape, data.strides, _c_strides(shape, itemsize)))


def _c_strides(shape, itemsize):
    strides = []
    step = itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def as_rows(array, axis, stream=0):
    batch_shape = array.shape[:axis] + array.shape[axis + 1:]
    length = array.shape[axis]
    data = _class_last_contiguous(array, axis, stream)
    shape = (prod(batch_shape), length)
    rows = data if tuple(data.shape) == shape else data.reshape(*shape)
    return DeviceRows(rows, tuple(batch_shape), length, array.bfloat16, array.dtype != np.float64,
                      device_ordinal(array.source), array.source)


def device_ordinal(obj):
    """The GPU an array lives on, for CuPy arrays and PyTorch tensors (None if unknown)."""
    library = _library(obj)
    if library == "torch":
        return obj.device.index
    if library == "cupy":
        return obj.device.id
    return None


def check_same_device(other, device, name):
    """ValueError when two known GPU ordinals differ."""
    if None not in (other, device) and other != device:
        raise ValueError(f"{name} is on GPU {other} but the logits are on GPU {device}; move it to GPU {device}")


def _device_vector(values, dtype, stream, device=None, name="target"):
    """Small operands (targets, weights) flattened to one contiguous device
    vector: host ones are copied into the stream's workspace (no allocation,
    so no deferred free that would wait on the whole device later), device
    ones stay on the logits' GPU (a device copy only when their layout is not
    contiguous)."""
    if is_cuda_array(values):
        check_same_device(device_ordinal(values), device, name)
        data = dev.as_device_array(values, stream)
        if not _c_contiguous(data):
            data = _gather_class_last(data, len(data.shape) - 1, stream)
        return data if len(data.shape) == 1 else data.reshape(prod(data.shape))
    host = np.ascontiguousarray(values, dtype=dtype)
    return workspace(stream).upload(name, host.reshape(host.size))


def launch(kernel, blocks, threads, stream, *args):
    """Every kernel launch of the backend goes through here."""
    dev.launch(kernel, blocks, threads, stream, args)


def _storage(rows):
    return "bfloat16" if rows.bfloat16 else np.dtype(rows.data.dtype).name


def _launch_shape(n_rows, length):
    """(splits, group, blocks) for a row reduction.

    ``group`` threads (a power of two up to a block) share one (row, chunk):
    short rows get a few threads each and many rows per block, long rows a
    whole block; when rows are too few to fill the GPU, each is split into
    ``splits`` chunks merged afterwards.
    """
    group = min(THREADS, 1 << max(0, math.ceil(math.log2(max(1, math.ceil(length / MIN_ELEMENTS_PER_THREAD))))))
    splits = 1
    if n_rows and group == THREADS:
        wanted = math.ceil(BLOCKS_PER_SM * dev.multiprocessor_count() / n_rows)
        most = max(1, length // (THREADS * MIN_ELEMENTS_PER_THREAD))
        splits = max(1, min(wanted, most))
    per_block = THREADS // group
    return splits, group, _grid(math.ceil(n_rows * splits / per_block))


def _grid(items):
    return max(1, min(items, 65535))


def _alignment(data):
    """(address, row stride) of a 2-D device array modulo the wide-load size, in bytes."""
    return dev.address(data) % dev.VECTOR_BYTES, data.strides[0] % dev.VECTOR_BYTES


def _per_row(n_rows):
    return max(1, math.ceil(n_rows / THREADS)), THREADS


_REDUCTIONS = {"none": rows_module.NONE, "sum": rows_module.SUM, "mean": rows_module.MEAN}


def _row_job(rows, plan, stream, out, out2=None, out3=None, out4=None, target=None, weight=None, y=None,
             ignore_index=0, smoothing=0.0):
    """Run the row kernel of ``plan`` over ``rows``: one launch.  Scratch
    memory comes from the stream's workspace."""
    ws = workspace(stream)
    n_rows = rows.n_rows
    reduced = plan.reduction != rows_module.NONE
    if not n_rows and not reduced:
        return ws
    splits, group, blocks = _launch_shape(n_rows, rows.length)
    if splits > 1:
        states = ws.buffer("states", (n_rows * splits, rows_module.STATE_SIZE))
        row_counts = ws.zeroed_buffer("row_counts", (n_rows,), np.int32)
    else:
        states, row_counts = ws.unused_rows, ws.counter
    row_values = ws.buffer("row_values", (2, n_rows)) if reduced else ws.unused_rows
    target = ws.unused_indices if target is None else target
    weight = ws.unused if weight is None else weight
    y = ws.unused_rows if y is None else y
    out2, out3, out4 = (ws.unused if a is None else a for a in (out2, out3, out4))
    launch(rows_module.row_kernels(plan), blocks, THREADS, stream, rows.data, *_alignment(rows.data), splits, group,
           target, weight, y, ignore_index, smoothing, out, out2, out3, out4, states, row_counts, row_values,
           ws.counter, ws.bad)
    return ws


def _plan(rows, job, **options):
    return rows_module.plan(THREADS, _storage(rows), job, **options)


def _shaped(out, shape):
    return out.reshape(*shape) if shape else out.reshape(())


def _new_result(shape, dtype, like, stream):
    """(flat device array for the kernels, the same memory shaped ``shape``) for a
    result: allocated by ``like``'s library (CuPy's or PyTorch's pooled
    allocator, no device allocation call) when the kernels run on that
    library's current stream, else by numba-cuda."""
    size = prod(shape)
    library = _library(like)
    if library in ("torch", "cupy") and not dev.SIMULATOR and _current_library_stream(library, like) == dev.stream_key(
            stream):
        if library == "torch":
            import torch

            shaped = torch.empty(shape, dtype=getattr(torch, np.dtype(dtype).name), device=like.device)
            flat = shaped.view(size)
        else:
            import cupy

            shaped = cupy.empty(shape, dtype=dtype)
            flat = shaped.reshape(size)
        return dev.as_device_array(flat, stream), shaped
    flat = dev.device_empty(size, dtype, stream)
    return flat, _shaped(flat, shape)


def row_statistic(rows, which, dtype, stream=0):
    """logsumexp or entropy per row, as a ``dtype`` device array of the batch shape (one launch)."""
    job = rows_module.LSE if which == "logsumexp" else rows_module.ENTROPY
    out, shaped = _new_result(rows.batch_shape, dtype, rows.source, stream)
    _row_job(rows, _plan(rows, job), stream, out)
    return shaped


def normalize(rows, exponentiate, dtype, stream=0, out=None):
    """log_softmax (or softmax) rows: the row kernel's (m, log s), then one
    element-wise pass into ``out`` (a (rows, classes) view from
    ``output_rows``) or a new (n_rows, length) device array of ``dtype``,
    which is returned."""
    ws = workspace(stream)
    shift = ws.buffer("shift", (rows.n_rows,))
    log_sum = ws.buffer("log_sum", (rows.n_rows,))
    _row_job(rows, _plan(rows, rows_module.SHIFT), stream, shift, log_sum)
    if out is None:
        out = dev.device_empty((rows.n_rows, rows.length), dtype, stream)
    if rows.n_rows:
        blocks = _grid(math.ceil(rows.n_rows * rows.length / THREADS))
        kernels = elementwise_kernels(THREADS, rows.narrow, rows.bfloat16)
        launch(kernels.normalize, blocks, THREADS, stream, rows.data, shift, log_sum, exponentiate, out)
    return out


def output_rows(out, array, axis, dtype, stream=0):
    """The caller's device ``out`` for a result of ``array`` along ``axis``:
    checked (CUDA memory on the same GPU, shape, ``dtype``, layout, overlap
    with ``array``) and seen as a (rows, classes) strided view of its memory."""
    if not is_cuda_array(out):
        raise TypeError("out must be a CUDA array (a Numba device array, CuPy array or PyTorch CUDA tensor) for x "
                        f"in CUDA memory, got {type(out).__module__}.{type(out).__name__}")
    _checks.check_out(tuple(out.shape), _dtype_of(out), array.shape, dtype)
    _checks.check_out_without_grad(out)
    check_same_device(device_ordinal(out), device_ordinal(array.source), "out")
    data = dev.as_device_array(out, stream)
    itemsize = np.dtype(data.dtype).itemsize
    _checks.check_out_layout(data.shape, data.strides, itemsize)
    in_place = _same_layout(data, array.data)
    _checks.check_out_overlap(not in_place and _extents_overlap(data, array.data), in_place)
    batch, length, step, merged, merged_strides = _arrays.row_layout(tuple(data.shape), tuple(data.strides), axis,
                                                                     itemsize)
    if len(merged) > 1:
        raise ValueError(f"out has strides {tuple(data.strides)}: on the GPU, out's axes other than the class axis "
                         f"({axis}) must merge into one strided axis, as in any 2-D array, a C-ordered array with "
                         "the class axis last, or a class-last C-ordered array with its class axis moved into place "
                         "(what out=None returns)")
    n_rows = prod(batch)
    if n_rows == 0:
        return data
    row_stride = merged_strides[0] if merged else length * step
    return dev.strided_view(data, 0, (n_rows, length), (row_stride * itemsize, step * itemsize))


def _dtype_of(array):
    """A device array's dtype; a name for PyTorch dtypes NumPy lacks (bfloat16)."""
    if _library(array) == "torch":
        return str(array.dtype).removeprefix("torch.")
    return np.dtype(array.dtype)


def _byte_extent(data):
    """[first, last] byte addresses a device array's elements cover (None when empty)."""
    shape = tuple(data.shape)
    if prod(shape) == 0:
        return None
    start = dev.address(data)
    low = start + sum(min(0, (n - 1) * s) for n, s in zip(shape, data.strides))
    high = start + sum(max(0, (n - 1) * s) for n, s in zip(shape, data.strides)) + np.dtype(data.dtype).itemsize - 1
    return low, high


def _extents_overlap(a, b):
    """Whether the address ranges of two device arrays intersect (a range test:
    interleaved views that share no element count as overlapping)."""
    first, second = _byte_extent(a), _byte_extent(b)
    return first is not None and second is not None and first[0] <= second[1] and second[0] <= first[1]


def _same_layout(a, b):
    """The same elements at the same device addresses."""
    return (dev.address(a) == dev.address(b) and tuple(a.shape) == tuple(b.shape)
            and tuple(a.strides) == tuple(b.strides) and np.dtype(a.dtype) == np.dtype(b.dtype))


def class_weight(weight, n_classes, stream=0):
    """Class weights as a float64 device vector, or None for all ones.

    Device weights (any supported library) are checked like host ones; being
    small, they make one round trip through the host."""
    if weight is None:
        return None
    if is_cuda_array(weight):
        weight = host_array(weight)
    return dev.to_device(_checks.class_weight(weight, n_classes), stream=stream)


def _result(rows, reduction, dtype, stream):
    return _new_result(rows.batch_shape if reduction == "none" else (), dtype, rows.source, stream)


def cross_entropy_indices(rows, target, weight, ignore_index, smoothing, input_type, reduction, dtype, stream=0):
    """Cross-entropy with class-index targets, reduced as asked: one read of
    each row, one launch.  Host targets are checked on the host; device
    targets in the kernel, and reading that flag is the one wait on the GPU."""
    on_device = is_cuda_array(target)
    if not on_device:
        target = _checks.class_indices(target, rows.length, ignore_index)
    target = _device_vector(target, np.int64, stream, rows.device, "target")
    weights = class_weight(weight, rows.length, stream)
    plan = _plan(rows, rows_module.CLASS_LOSS, reduction=_REDUCTIONS[reduction], weighted=weights is not None,
                 smoothing=smoothing > 0, input_type=input_type,
                 unsigned_target=np.dtype(target.dtype).kind == "u")
    out, shaped = _result(rows, reduction, dtype, stream)
    ws = _row_job(rows, plan, stream, out, target=target, weight=weights, ignore_index=ignore_index,
                  smoothing=smoothing)
    if on_device:
        _raise_bad_device_target(ws, target, rows, ignore_index, (), stream)
    return shaped


def cross_entropy_soft(rows, target_rows, weight, smoothing, input_type, reduction, dtype, stream=0):
    """Cross-entropy with class-probability targets, reduced as asked (one read of each row)."""
    check_same_device(target_rows.device, rows.device, "target")
    weights = class_weight(weight, rows.length, stream)
    plan = _plan(rows, rows_module.SOFT_LOSS, reduction=_REDUCTIONS[reduction], weighted=weights is not None,
                 smoothing=smoothing > 0, input_type=input_type,
                 target_storage="bfloat16" if target_rows.bfloat16 else None)
    out, shaped = _result(rows, reduction, dtype, stream)
    _row_job(rows, plan, stream, out, weight=weights, y=target_rows.data, smoothing=smoothing)
    return shaped


def _raise_bad_device_target(ws, target, rows, ignore_index, origin, stream):
    first_bad = ws.read_bad(stream)
    if first_bad == NO_BAD_ROW:
        return
    ws.rearm_bad()
    value = target[first_bad : first_bad + 1].copy_to_host(stream=stream)[0]
    position = _checks.shift_position(np.unravel_index(first_bad, rows.batch_shape), origin)
    _checks.raise_bad_target(position, value, rows.length, ignore_index)


def row_metrics(rows, target, ignore_index, origin=(), stream=0, *, keep=True):
    """(loss, rank, entropy, confidence) device arrays per row, from one read of
    each row (the row kernel counting the entries above the target's logit).

    Host targets are checked on the host (no synchronisation); device targets
    are checked in the kernel, and reading that flag waits for it.  The
    arrays are the stream's scratch whatever ``keep`` says: copy them before
    the next call on it.
    """
    on_device = is_cuda_array(target)
    if not on_device:
        target = _checks.class_indices(target, rows.length, ignore_index, origin)
    target = _device_vector(target, np.int64, stream, rows.device, "target")
    ws = workspace(stream)
    n = rows.n_rows
    loss, entropy, confidence = (ws.buffer(name, (n,)) for name in ("loss", "entropy", "confidence"))
    rank = ws.buffer("rank", (n,), np.int64)
    plan = _plan(rows, rows_module.METRICS, unsigned_target=np.dtype(target.dtype).kind == "u")
    _row_job(rows, plan, stream, loss, rank, entropy, confidence, target=target, ignore_index=ignore_index)
    if on_device:
        _raise_bad_device_target(ws, target, rows, ignore_index, origin, stream)
    return loss, rank, entropy, confidence


# Evaluation sums are kept on the device (``tally``): per-row metrics stay there.
SUMS_ON_DEVICE = True


def add_sums(per_row, weights, layout, top_k, edges, stream, owner):
    """Add one chunk's per-row metrics to ``owner``'s exact sums on the device (see ``tally.add``)."""
    tally.add(per_row, weights, layout, top_k, edges, stream, owner)


def settle_sums(owner, keep=True):
    """Hand ``owner`` its sums kept on the device (see ``tally.settle``)."""
    tally.settle(owner, keep)


def to_host(arrays, stream=0):
    """Copy per-row device results to host arrays (waits for them)."""
    host = [a.copy_to_host(stream=stream) for a in arrays]
    if stream:
        stream.synchronize()
    return host


def host_array(values):
    if is_cuda_array(values):
        return dev.as_device_array(values).copy_to_host()
    return np.asarray(values)


def target_dtype(target):
    """The dtype of host or device targets, read without converting a device array."""
    if not is_cuda_array(target):
        return np.asarray(target).dtype
    if _library(target) == "torch":
        if str(target.dtype) == "torch.bfloat16":
            return np.dtype(np.float32)  # floats: class probabilities stored as bfloat16
        return np.dtype(str(target.dtype).replace("torch.", ""))
    dtype = getattr(target, "dtype", None)
    if dtype is not None:
        return np.dtype(dtype)
    return np.dtype(dev.as_device_array(target).dtype)


def _two_dimensional(array, stream):
    """``array`` as (rows, last axis) with contiguous rows (a device copy if needed)."""
    if array.ndim == 0:
        return array.data.reshape(1, 1)
    return as_rows(array, array.ndim - 1, stream).data


def _broadcast_operand(values, shape, name, stream, ws):
    """A weight as an (R or 1, L or 1) device array that broadcasts over (R, L)."""
    rows = prod(shape[:-1]) if len(shape) > 1 else 1
    length = shape[-1] if shape else 1
    if values is None:
        return ws.ones
    if is_cuda_array(values):
        data = dev.as_device_array(values, stream)
        vshape = tuple(data.shape)
        if _c_contiguous(data) and vshape in ((), (1,), (length,)):
            return data.reshape(1, length if vshape == (length,) else 1)
        if _c_contiguous(data) and vshape == tuple(shape):
            return data.reshape(rows, length)
        return _broadcast_on_device(data, tuple(shape) or (1,), name, stream).reshape(rows, length)
    host = np.asarray(values, dtype=np.float64)
    try:
        full = np.broadcast_to(host, shape)
    except ValueError:
        raise ValueError(f"{name} of shape {host.shape} cannot be broadcast to the input shape {tuple(shape)}") from None
    full = full.reshape(rows, length)
    keep_rows = rows if full.strides[0] != 0 else 1
    keep_cols = length if full.strides[1] != 0 else 1
    return dev.to_device(np.ascontiguousarray(full[:keep_rows, :keep_cols]), stream=stream)


def binary_cross_entropy(from_logits, x, y, weight, pos_weight, reduction, dtype, stream=0):
    """Binary cross-entropy of checked device operands, reduced as asked: one
    launch (the element-wise kernel; its last block sums "sum"/"mean" in a
    fixed order), no scratch allocation after the first call of a size.
    Probabilities are checked in the kernel, and reading that 8-byte flag is
    the one wait; logits are not waited for."""
    device = device_ordinal(x.source)
    check_same_device(device_ordinal(y.source), device, "target")
    for values, name in ((weight, "weight"), (pos_weight, "pos_weight")):
        check_same_device(device_ordinal(values), device, name)
    ws = workspace(stream)
    shape = x.shape
    x2, y2 = _two_dimensional(x, stream), _two_dimensional(y, stream)
    w2 = _broadcast_operand(weight, shape, "weight", stream, ws)
    pw2 = _broadcast_operand(pos_weight, shape, "pos_weight", stream, ws)
    n_rows, length = x2.shape
    size = n_rows * length
    if reduction == "none":
        out, shaped = _new_result(shape, dtype, x.source, stream)
        total = out
    else:
        total, shaped = _new_result((), dtype, x.source, stream)
        out = total  # not written: nothing is stored
    blocks = _grid(max(1, min(math.ceil(size / (THREADS * MIN_ELEMENTS_PER_THREAD)),
                              BLOCKS_PER_SM * dev.multiprocessor_count())))
    if size or reduction != "none":
        kernels = elementwise_kernels(THREADS, x.dtype != np.float64, x.bfloat16, y.bfloat16)
        launch(kernels.binary, blocks, THREADS, stream, from_logits, x2, y2, w2, pw2, reduction == "none", out,
               _REDUCTIONS[reduction], ws.buffer("block_sums", (blocks,)), ws.counter, ws.bad, total)
    if not from_logits and ws.read_bad(stream) != NO_BAD_ROW:
        ws.rearm_bad()
        _checks.raise_outside_unit_interval(_host_floats(x).reshape(shape), _host_floats(y).reshape(shape))
    return shaped


def _host_floats(array):
    """A checked device operand's values on the host (bfloat16 words widened to float32)."""
    values = dev.as_device_array(array.data).copy_to_host() if array.size else np.zeros(array.shape)
    if array.bfloat16:
        return (values.view(np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)
    return values


def wrap_like(result, like):
    """Return ``result`` in the caller's array type: CuPy in, CuPy out; torch in, torch out."""
    library = _library(like)
    if _library(result) == library:
        return result
    if library == "cupy":
        import cupy

        return cupy.asarray(result)
    if library == "torch":
        import torch

        return torch.as_tensor(result, device=like.device)
    return result


def move_class_axis(out, axis):
    """A class-last result (already in the caller's array type) with its class
    axis back at ``axis``: a view, as ``numpy.moveaxis`` gives."""
    library = _library(out)
    if library == "cupy":
        import cupy

        return cupy.moveaxis(out, -1, axis)
    if library == "torch":
        return out.movedim(-1, axis)
    order = list(range(len(out.shape) - 1))
    order.insert(axis, len(out.shape) - 1)
    shape = tuple(out.shape[k] for k in order)
    if 0 in shape:
        return dev.device_empty(shape, out.dtype)
    return dev.strided_view(out, 0, shape, tuple(out.strides[k] for k in order))
