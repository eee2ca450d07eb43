"""numba.cuda kernels besides the row kernel (``rows.py``), built per
(threads per block, compute precision, storage) by small factories:
``elementwise_kernels`` (log_softmax/softmax output, binary losses) and
``utility_kernels`` (device gathers, casts, deterministic sums).

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

ElementwiseKernels = namedtuple("ElementwiseKernels", "normalize binary")
UtilityKernels = namedtuple("UtilityKernels", "gather cast_into partial_sums quotient")

_F64, _I64 = types.float64, types.int64
_VECTOR_F64 = types.Array(_F64, 1, "C")
_MATRIX_F64 = types.Array(_F64, 2, "C")


def elementwise_signatures(storage):
    """Argument types of ``normalize`` and ``binary`` for contiguous operands of
    the Numba ``storage`` type (float32 output; targets stored like the input)."""
    x = types.Array(storage, 2, "C")
    return ElementwiseKernels(
        normalize=(x, _VECTOR_F64, _VECTOR_F64, types.boolean, types.Array(types.float32, 2, "C")),
        binary=(types.boolean, x, x, _MATRIX_F64, _MATRIX_F64, types.boolean, _MATRIX_F64, _VECTOR_F64,
                types.Array(_I64, 1, "C")),
    )


def utility_signatures(storage):
    """Argument types of the utility kernels (``gather`` of the ``storage`` type)."""
    flat = types.Array(storage, 1, "C")
    return UtilityKernels(
        gather=(flat, _I64, types.Array(_I64, 2, "C"), flat),
        cast_into=(_VECTOR_F64, types.Array(types.float32, 1, "C")),
        partial_sums=(_VECTOR_F64, _VECTOR_F64),
        quotient=(_VECTOR_F64, _VECTOR_F64, _VECTOR_F64),
    )


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
    def binary(from_logits, x, y, w, pw, store, out, row_sums, bad):
        """Block per row: element-wise binary cross-entropy, the row's sum, bad-probability counts."""
        acc = cuda.shared.array(threads, np.float64)
        count = cuda.shared.array(threads, np.int64)
        tid = cuda.threadIdx.x
        n_rows, n = x.shape
        for r in range(cuda.blockIdx.x, n_rows, cuda.gridDim.x):
            total = 0.0
            bad_here = 0
            for j in range(tid, n, threads):
                v = load(x, r, j)
                target = load_target(y, r, j)
                weight = broadcast_load(w, r, j)
                if from_logits:
                    positive = broadcast_load(pw, r, j)
                    loss = weight * logit_loss(v, target, positive)
                else:
                    if v < 0.0 or v > 1.0 or target < 0.0 or target > 1.0:  # PyTorch refuses both
                        bad_here += 1
                    lp = log_of(v)
                    lq = log_of(1.0 - v)
                    lp = LOG_CLAMP if lp < LOG_CLAMP else lp
                    lq = LOG_CLAMP if lq < LOG_CLAMP else lq
                    loss = -weight * (target * lp + (1.0 - target) * lq)
                if store:
                    out[r, j] = loss
                total += loss
            acc[tid] = total
            count[tid] = bad_here
            row_total = group_sum(acc, tid, threads)
            bad_total = group_sum(count, tid, threads)
            if tid == 0:
                row_sums[r] = row_total
                if bad_total > 0:
                    cuda.atomic.min(bad, 0, r)

    return ElementwiseKernels(normalize, binary)


@lru_cache(maxsize=None)
def utility_kernels(threads):
    """Device gathers, casts and deterministic float64 sums, ``threads`` per block."""
    jit = dev.jit
    group_sum = group_summer(threads)

    @jit
    def partial_sums(values, partials):
        """Deterministic stage 1 of a float64 sum: block b sums a fixed strided share."""
        acc = cuda.shared.array(threads, np.float64)
        tid = cuda.threadIdx.x
        total = 0.0
        for i in range(cuda.blockIdx.x * threads + tid, values.size, cuda.gridDim.x * threads):
            total += values[i]
        acc[tid] = total
        grand_total = group_sum(acc, tid, threads)
        if tid == 0:
            partials[cuda.blockIdx.x] = grand_total

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

    @jit
    def cast_into(src, dst):
        i = cuda.grid(1)
        if i < dst.size:
            dst[i] = src[i]

    @jit
    def quotient(numerator, denominator, out):
        """out[0] = numerator[0] / denominator[0] (NaN for a zero denominator)."""
        if cuda.grid(1) == 0:
            out[0] = ratio(numerator[0], denominator[0])

    return UtilityKernels(gather, cast_into, partial_sums, quotient)
