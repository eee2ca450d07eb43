"""numba.cuda kernels besides the row kernel (``rows.py``), built per
(threads per block, compute precision, storage) by small factories:
``elementwise_kernels`` (log_softmax/softmax output, binary losses) and
``utility_kernels`` (device gathers).

Every kernel also runs on Numba's CUDA simulator; the few operations the
simulator lacks have small fallbacks in ``_device``.
"""

import math
from collections import namedtuple
from functools import lru_cache

import numpy as np
from numba import types

from . import _device as dev
from ._device import cuda

NAN = math.nan
NEG_INF = -math.inf
INF = math.inf
LOG_CLAMP = -100.0

# Batch reductions.
NONE, SUM, MEAN = range(3)

ElementwiseKernels = namedtuple("ElementwiseKernels", "normalize binary")
UtilityKernels = namedtuple("UtilityKernels", "gather")

_F64, _I64 = types.float64, types.int64
_VECTOR_F64 = types.Array(_F64, 1, "C")
_MATRIX_F64 = types.Array(_F64, 2, "C")


def elementwise_signatures(storage):
    """Argument types of ``normalize`` and ``binary`` for contiguous operands of
    the Numba ``storage`` type (float32 output; targets stored like the input)."""
    x = types.Array(storage, 2, "C")
    out = types.Array(types.float32, 1, "C")
    return ElementwiseKernels(
        normalize=(x, _VECTOR_F64, _VECTOR_F64, types.boolean, types.Array(types.float32, 2, "C")),
        binary=(types.boolean, x, x, _MATRIX_F64, _MATRIX_F64, types.boolean, out, _I64, _VECTOR_F64,
                types.Array(types.int32, 1, "C"), types.Array(_I64, 1, "C"), out),
    )


def utility_signatures(storage):
    """Argument types of the utility kernels (``gather`` of the ``storage`` type)."""
    flat = types.Array(storage, 1, "C")
    return UtilityKernels(gather=(flat, _I64, types.Array(_I64, 2, "C"), flat))


@lru_cache(maxsize=None)
def widener(bfloat16, compute):
    """Device function: a stored value (a bfloat16 word when ``bfloat16``) as ``compute``."""

    @dev.jit(device=True)
    def widen(v):
        if bfloat16:
            return compute(dev.bfloat16_to_float32(v))
        return compute(v)

    return widen


@dev.jit(device=True)
def log_of(s):
    """log s, -inf at 0 and NaN below (math.log raises at 0 on the simulator)."""
    if s > 0:
        return math.log(s)
    return NEG_INF if s == 0 else NAN


@dev.jit(device=True)
def ratio(numerator, denominator):
    """A mean's numerator / denominator; NaN for a zero denominator, as the CPU
    backend and PyTorch give."""
    if denominator != 0.0:
        return numerator / denominator
    return NAN


@dev.jit(device=True)
def logit_loss(x, y, pos_weight):
    """PyTorch's binary cross-entropy of a logit x, target y and pos_weight,

        (1 - y) x + c (log1p(e^-|x|) + max(-x, 0)),   c = 1 + (pos_weight - 1) y,

    without its cancellation for x << 0, where it equals -pos_weight y x +
    c log1p(e^x): two terms of one sign.  x = -inf keeps PyTorch's form (and
    its NaN)."""
    c = 1.0 + (pos_weight - 1.0) * y
    tail = math.log1p(math.exp(-abs(x)))
    if x >= 0.0:
        return (1.0 - y) * x + c * tail
    if x != -INF:
        return -pos_weight * y * x + c * tail
    return (1.0 - y) * x + c * (tail - x)


@lru_cache(maxsize=None)
def group_summer(threads):
    """Device function ``group_sum`` for blocks of ``threads``."""
    jit = dev.jit

    @jit(device=True)
    def group_sum(acc, tid, group):
        """Tree-sum each aligned group of ``group`` entries of ``acc`` in shared
        memory (fixed order); every thread gets its group's total.  Called by
        all threads of the block."""
        lane = tid % group
        cuda.syncthreads()
        stride = group // 2
        while stride > 0:
            if lane < stride:
                acc[tid] += acc[tid + stride]
            cuda.syncthreads()
            stride //= 2
        total = acc[tid - lane]
        cuda.syncthreads()
        return total

    return group_sum


@lru_cache(maxsize=None)
def elementwise_kernels(threads, narrow, bfloat16, target_bfloat16=False):
    """``normalize`` and ``binary`` for ``threads`` per block (a power of two),
    float32 exponentials when ``narrow``, inputs stored as bfloat16 words when
    ``bfloat16``, and binary targets/weights stored so when ``target_bfloat16``."""
    jit = dev.jit
    group_sum = group_summer(threads)
    to_float = widener(bfloat16, np.float64)
    target_to_float = widener(target_bfloat16, np.float64)

    @jit(device=True)
    def load_target(y, r, j):
        return target_to_float(y[r, j])

    @jit(device=True)
    def load(x, r, j):
        return to_float(x[r, j])

    @jit(device=True)
    def exp_of(d):
        if narrow:
            return np.float64(math.exp(np.float32(d)))
        return math.exp(d)

    @jit
    def normalize(x, shift, log_sum, exponentiate, out):
        """out = (x - m) - log s (or its exp) row by row, from the row kernel's
        (m, log s): never x - logsumexp, which loses log s next to a huge m.
        Consecutive threads take consecutive elements: reads and writes coalesce."""
        n = out.shape[1]
        for e in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            r = e // n
            j = e - r * n
            d = (load(x, r, j) - shift[r]) - log_sum[r]
            out[r, j] = exp_of(d) if exponentiate else d

    @jit(device=True)
    def broadcast_load(a, r, j):
        return np.float64(a[r if a.shape[0] > 1 else 0, j if a.shape[1] > 1 else 0])

    @jit
    def binary(from_logits, x, y, w, pw, store, out, reduction, block_sums, counter, bad, total):
        """Element-wise binary cross-entropy over the flattened (rows, n) input:
        block b takes the b-th of ``gridDim`` equal contiguous shares, writes
        the losses to ``out`` (flat) when ``store`` and sums its share in a
        fixed order; for "sum"/"mean" the last block to finish (a ticket
        counter) adds the block sums in block order into ``total[0]`` (over
        the element count for "mean") and rearms the counter.  A probability
        or target outside [0, 1] sets ``bad`` (its row, the least one wins)."""
        acc = cuda.shared.array(threads, np.float64)
        last = cuda.shared.array(1, np.int32)
        tid = cuda.threadIdx.x
        n_rows, n = x.shape
        size = n_rows * n
        blocks = cuda.gridDim.x
        share = (size + blocks - 1) // blocks
        start = cuda.blockIdx.x * share
        stop = min(size, start + share)
        block_total = 0.0
        bad_row = size
        for e in range(start + tid, stop, threads):
            r = e // n
            j = e - r * n
            v = load(x, r, j)
            target = load_target(y, r, j)
            weight = broadcast_load(w, r, j)
            if from_logits:
                loss = weight * logit_loss(v, target, broadcast_load(pw, r, j))
            else:
                if (v < 0.0 or v > 1.0 or target < 0.0 or target > 1.0) and r < bad_row:  # PyTorch refuses both
                    bad_row = r
                lp = log_of(v)
                lq = log_of(1.0 - v)
                lp = LOG_CLAMP if lp < LOG_CLAMP else lp
                lq = LOG_CLAMP if lq < LOG_CLAMP else lq
                loss = -weight * (target * lp + (1.0 - target) * lq)
            if store:
                out[e] = loss
            block_total += loss
        if bad_row < size:
            cuda.atomic.min(bad, 0, bad_row)
        if reduction == NONE:
            return
        acc[tid] = block_total
        block_total = group_sum(acc, tid, threads)
        if tid == 0:
            block_sums[cuda.blockIdx.x] = block_total
        cuda.threadfence()  # the block's sum is visible device-wide before its ticket
        cuda.syncthreads()
        if tid == 0:
            last[0] = 1 if cuda.atomic.add(counter, 0, 1) == blocks - 1 else 0
        cuda.syncthreads()
        if last[0] == 0:
            return
        cuda.threadfence()
        grand = 0.0
        for b in range(tid, blocks, threads):
            grand += block_sums[b]
        acc[tid] = grand
        grand = group_sum(acc, tid, threads)
        if tid == 0:
            counter[0] = 0
            total[0] = grand if reduction == SUM else ratio(grand, np.float64(size))

    return ElementwiseKernels(normalize, binary)


@lru_cache(maxsize=None)
def utility_kernels(threads):
    """Device gathers (strided copies and broadcasts), ``threads`` per block."""
    jit = dev.jit

    @jit
    def gather(src, first, geometry, out):
        """out[e] = src[first + sum_k i_k * stride_k], where (i_k) unravels e
        row-major over the sizes; geometry[k] = (size_k, stride_k) in elements.
        Writes are coalesced; reads follow the source's strides."""
        for e in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            rest = e
            offset = first
            for k in range(geometry.shape[0] - 1, -1, -1):
                size = geometry[k, 0]
                offset += (rest % size) * geometry[k, 1]
                rest //= size
            out[e] = src[offset]

    return UtilityKernels(gather)
