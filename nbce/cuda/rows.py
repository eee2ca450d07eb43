"""The row kernel: every job that reduces a row of logits reads it once.

A group of ``group`` threads (a power of two, up to a block) takes one
(row, chunk): short rows share a block, long rows get a block, and rows too
few to fill the GPU are split into ``splits`` chunks.  Each thread walks its
share of the row in aligned 16-byte slots (one wide load each, two in flight)
and keeps the state

    (m, k, r, t, c, a, w) = (max, #{j: x_j = m}, sum_{x_j < m} e^{x_j - m},
                             sum_j e^{x_j - m}(x_j - m), #{j: x_j > x_target},
                             sum_j a_j (x_j - m), sum_j a_j)

where ``a_j`` is the coefficient of log p_j in the loss (class weights,
label smoothing, soft targets).  The row's sum s = sum_j e^{x_j - m} = k + r
is kept in two parts so that log s = log k + log1p(r / k) keeps a confident
row's tiny r: the loss of a target at the max, log1p(r), is not floored at
the rounding of 1 + r.  Only the parts a job asks for are compiled
in.  For float32, float16 and bfloat16 storage the per-element work is
float32: each slot's exponentials e^{x_j - m} = 2^{(x_j - m) log2 e} come from
the hardware's ex2.approx (relative error < 2^-22) and are summed in float32
(at most 8 terms), then added to the thread's float64 sum, so the rounding
error of s stays below ~1e-6 relative whatever the row length.  The max is
raised once per slot, rescaling s (and t, a) when it grows.  float64 storage
computes in float64 with an accurate exp.

Every result is formed from differences to the row's max, never from
``logsumexp - x``:  log p_j = (x_j - m) - log s, so rows of equal or
near-equal logits of any magnitude (±3e38 in float32) keep full precision.

States of a group merge by warp shuffles (``_device.shuffle_down``, a
shared-memory exchange on the simulator) and across the warps of a group in
shared memory, always in the same order: results are bit-identical from run
to run.  With one chunk per row, the group's first lane finishes the row in
the same kernel; split rows store their chunk states, and the row's last
chunk to arrive (a per-row ticket counter) merges them in chunk order.
Batch reductions ("sum", "mean") are done by the last block to finish (a
ticket counter), which sums the per-row values in a fixed order: one launch
per call, whatever the row length.
"""

import math
import os
from collections import namedtuple
from functools import lru_cache

import numpy as np
from numba import types

from .._tally import IGNORED_ROW, UNDEFINED_ROW
from . import _device as dev
from ._device import cuda
from .kernels import MEAN, NONE, SUM, group_summer, log_of, ratio, widener  # noqa: F401 (plans name MEAN here too)

# Jobs: what a row kernel computes per row.
LSE, ENTROPY, SHIFT, CLASS_LOSS, SOFT_LOSS, METRICS = range(6)
# input_type codes (``_checks.input_type_code``).
LOGITS, LOG_PROBS, PROBS = range(3)
LOG_CLAMP = -100.0
# Resident blocks per multiprocessor the row kernel is compiled for, which caps
# its registers at 65536 / (threads * blocks): 64 for 4 blocks of 256.  More
# resident blocks keep more 16-byte loads in flight.  Measured on an H100
# (2026-11-27): 4 blocks instead of the compiler's 76-80 registers (3 blocks)
# took class-index cross_entropy from 0.71 to 0.87 of the copy rate at
# 16384x131072 float32 and logsumexp (64 registers either way, but then
# scheduled for 4 blocks) from 0.82 to 0.91.  Kernels keeping the coefficient
# sums (label smoothing, soft targets) would spill 144-380 bytes at that cap,
# so they are left to the compiler (0).  NBCE_ROW_RESIDENT_BLOCKS overrides
# it for measuring the trade (read once, at import).
RESIDENT_BLOCKS = int(os.environ.get("NBCE_ROW_RESIDENT_BLOCKS", "4"))
# Components of a stored chunk state: m, k, r, t, c, a, w.
STATE_SIZE = 7

NAN = math.nan
INF = math.inf
NEG_INF = -math.inf
LOG2E = np.float32(1.4426950408889634)

RowPlan = namedtuple(
    "RowPlan",
    "threads storage job reduction weighted smoothing input_type target_storage unsigned_target",
)
RowPlan.__doc__ = """What a row kernel is compiled for.

threads: threads per block (a power of two); storage: the logits' storage
("float64", "float32", "float16" or "bfloat16" as 16-bit words); job: LSE,
ENTROPY, SHIFT (m and log s for log_softmax/softmax), CLASS_LOSS, SOFT_LOSS or
METRICS; reduction: NONE, SUM or MEAN; weighted: class weights given;
smoothing: label smoothing > 0 (class indices); input_type: LOGITS, LOG_PROBS
or PROBS; target_storage: the soft targets' storage; unsigned_target: class
indices of an unsigned type (values past int64 are bad, never ignored)."""


def plan(threads, storage, job, *, reduction=NONE, weighted=False, smoothing=False, input_type=LOGITS,
         target_storage=None, unsigned_target=False):
    return RowPlan(threads, storage, job, reduction, weighted, smoothing, input_type, target_storage,
                   unsigned_target)


# Numba storage type of each storage name (bfloat16 arrives as 16-bit words).
STORAGE_TYPES = {"float64": types.float64, "float32": types.float32, "float16": types.float16,
                 "bfloat16": types.uint16}
_F64, _I32, _I64 = types.float64, types.int32, types.int64
_VECTOR_F64 = types.Array(_F64, 1, "C")
_MATRIX_F64 = types.Array(_F64, 2, "C")


def signature(p):
    """The argument types of ``row_kernels(p)`` for contiguous operands, int64
    class indices and soft targets stored like the logits: what
    ``python -m nbce.cuda.ptx`` compiles."""
    x = types.Array(STORAGE_TYPES[p.storage], 2, "C")
    narrow_out = types.Array(types.float32 if p.storage != "float64" else _F64, 1, "C")
    if p.job == METRICS:
        outputs = (_VECTOR_F64, types.Array(_I64, 1, "C"), _VECTOR_F64, _VECTOR_F64)
    elif p.job == SHIFT:
        outputs = (_VECTOR_F64,) * 4
    else:
        outputs = (narrow_out,) + (_VECTOR_F64,) * 3
    indices, counter, flag = types.Array(_I64, 1, "C"), types.Array(_I32, 1, "C"), types.Array(_I64, 1, "C")
    return (x, _I64, _I64, _I64, _I64, indices, _VECTOR_F64, x, _I64, _F64, *outputs, _MATRIX_F64, counter,
            _MATRIX_F64, counter, flag)


@lru_cache(maxsize=None)
def row_kernels(p):
    """The row kernel compiled for the plan ``p`` (a ``RowPlan``)."""
    threads, job, reduction, weighted = p.threads, p.job, p.reduction, p.weighted
    narrow = p.storage != "float64"
    bfloat16 = p.storage == "bfloat16"
    compute = np.float32 if narrow else np.float64
    shifted = p.input_type == LOGITS  # log p_j needs the row's (m, s) only for logits
    stats_on = shifted or job in (LSE, ENTROPY, SHIFT, METRICS)
    entropy_on = job in (ENTROPY, METRICS)
    count_on = job == METRICS
    soft = job == SOFT_LOSS
    coefficients_on = soft or (job == CLASS_LOSS and p.smoothing)
    target_bfloat16 = p.target_storage == "bfloat16"
    unsigned_target = p.unsigned_target
    input_type = p.input_type
    class_rows = job in (CLASS_LOSS, METRICS)
    warps = max(1, threads // dev.WARP)
    jit = dev.jit

    widen = widener(bfloat16, compute)
    widen_target = widener(target_bfloat16, np.float64)
    group_sum = group_summer(threads)

    @jit(device=True)
    def exp_to(d):
        """e^d for d <= 0, in the compute precision."""
        if narrow:
            return dev.exp2f(d * LOG2E)
        return math.exp(d)

    @jit(device=True)
    def class_index(target, r, n, ignore_index):
        """(index, state) of row r's target: state 0 = a class, 1 = ignored, 2 = bad."""
        raw = target[r]
        index = np.int64(raw)
        if unsigned_target and index < 0:  # past int64: no class, and never ignore_index
            return index, 2
        if index == ignore_index:
            return index, 1
        if index < 0 or index >= n:
            return index, 2
        return index, 0

    @jit(device=True)
    def empty_state():
        return compute(NEG_INF), 0.0, 0.0, 0.0, np.int64(0), 0.0, 0.0

    @jit(device=True)
    def coefficient(weight, y, r, j, smoothing, n):
        a = weight[j] if weighted else 1.0
        if soft:
            a *= (1.0 - smoothing) * widen_target(y[r, j]) + smoothing / n
        return a

    @jit(device=True)
    def log_term(u, m):
        """The part of log p_j that the coefficient sum keeps: x_j - m for logits."""
        if input_type == LOGITS:
            return u - np.float64(m) if u != NEG_INF else NEG_INF
        if input_type == LOG_PROBS:
            return u
        lp = log_of(u)
        return LOG_CLAMP if lp < LOG_CLAMP else lp

    @jit(device=True)
    def fold(state, values, r, j, pivot, weight, y, smoothing, n):
        """Fold the consecutive entries ``values`` = x[r, j:j + len(values)] into ``state``."""
        m, ones, rest, t, c, a, w = state
        if stats_on:
            top = m
            for v in values:
                u = widen(v)
                if u > top:
                    top = u
            if top > m:  # one rescale per slot, and only when the max grows
                s = ones + rest
                if s != 0.0:
                    d = np.float64(m) - np.float64(top)
                    scale = np.float64(exp_to(compute(d)))
                    if entropy_on:  # terms scaled to 0 drop their moment (s * d alone may be -inf)
                        t = scale * t + (s * scale) * d if scale > 0.0 else 0.0
                    rest = s * scale
                    ones = 0.0
                if coefficients_on and shifted and w != 0.0:
                    a -= w * (np.float64(top) - np.float64(m))
                m = top
            if m != NEG_INF:  # a slot of -inf while the max is -inf adds nothing
                slot_ones = compute(0.0)
                slot_rest = compute(0.0)
                slot_moment = compute(0.0)
                # Straight-line per element (selects, no branch): e^0 = 1 is
                # formed and dropped for entries at the max, which are counted.
                for v in values:
                    d = widen(v) - m
                    e = exp_to(d)
                    at_max = d == 0
                    slot_ones += compute(1.0) if at_max else compute(0.0)
                    slot_rest += compute(0.0) if at_max else e
                    if entropy_on:
                        slot_moment += e * d if e > 0 else compute(0.0)
                ones += np.float64(slot_ones)
                rest += np.float64(slot_rest)
                if entropy_on:
                    t += np.float64(slot_moment)
            else:  # nothing to add while the max is -inf, but a NaN still makes the row NaN
                for v in values:
                    if widen(v) != widen(v):
                        rest = NAN
        if count_on:
            for v in values:
                if widen(v) > pivot:
                    c += 1
        if coefficients_on:
            k = j
            for v in values:
                coef = coefficient(weight, y, r, k, smoothing, n)
                if coef != 0.0:  # a zero coefficient of a masked class adds 0, not NaN
                    a += coef * log_term(np.float64(widen(v)), m)
                    w += coef
                k += 1
        return m, ones, rest, t, c, a, w

    @jit(device=True)
    def merge(first, second):
        """The state of two disjoint shares (associative up to rounding, applied in a fixed order)."""
        m1, k1, r1, t1, c1, a1, w1 = first
        m2, k2, r2, t2, c2, a2, w2 = second
        if stats_on:
            if m2 > m1:
                m1, k1, r1, t1, a1, w1, m2, k2, r2, t2, a2, w2 = m2, k2, r2, t2, a2, w2, m1, k1, r1, t1, a1, w1
            if m2 != m1:
                d = np.float64(m2) - np.float64(m1)
                s2 = k2 + r2
                if s2 != 0.0:
                    scale = math.exp(d)
                    if entropy_on:
                        t2 = scale * t2 + (s2 * scale) * d if scale > 0.0 else 0.0
                    r2 = s2 * scale
                    k2 = 0.0
                if coefficients_on and shifted and w2 != 0.0:
                    a2 += w2 * d
        return m1, k1 + k2, r1 + r2, t1 + t2, c1 + c2, a1 + a2, w1 + w2

    @jit(device=True)
    def shuffle(state, delta, scratch):
        m, ones, rest, t, c, a, w = state
        if stats_on:
            m = dev.shuffle_down(m, delta, scratch)
            ones = dev.shuffle_down(ones, delta, scratch)
            rest = dev.shuffle_down(rest, delta, scratch)
        if entropy_on:
            t = dev.shuffle_down(t, delta, scratch)
        if count_on:
            c = dev.shuffle_down(c, delta, scratch)
        if coefficients_on:
            a = dev.shuffle_down(a, delta, scratch)
            w = dev.shuffle_down(w, delta, scratch)
        return m, ones, rest, t, c, a, w

    @jit(device=True)
    def store_state(states, i, state):
        m, ones, rest, t, c, a, w = state
        states[i, 0] = m
        states[i, 1] = ones
        states[i, 2] = rest
        states[i, 3] = t
        states[i, 4] = c
        states[i, 5] = a
        states[i, 6] = w

    @jit(device=True)
    def load_state(states, i):
        return (compute(states[i, 0]), states[i, 1], states[i, 2], states[i, 3], np.int64(states[i, 4]),
                states[i, 5], states[i, 6])

    @jit(device=True)
    def group_state(state, tid, group, scratch, warp_states):
        """The merged state of each aligned group of ``group`` threads, in the
        group's first lane (the other lanes hold partial states).  Called by
        every thread of the block."""
        delta = min(group, dev.WARP) // 2
        while delta > 0:
            other = shuffle(state, delta, scratch)
            state = merge(state, other)
            delta //= 2
        if group > dev.WARP:  # warps of one group meet in shared memory
            cuda.syncthreads()
            if tid % dev.WARP == 0:
                store_state(warp_states, tid // dev.WARP, state)
            cuda.syncthreads()
            if tid % group == 0:
                first = tid // dev.WARP
                for k in range(first + 1, first + group // dev.WARP):
                    state = merge(state, load_state(warp_states, k))
            cuda.syncthreads()
        return state

    @jit(device=True)
    def chunk_bounds(n, splits, chunk):
        size = (n + splits - 1) // splits
        lo = chunk * size
        return lo, min(n, lo + size)

    @jit(device=True)
    def row_share(x, r, chunk, splits, lane, group, address16, stride16, pivot, weight, y, smoothing):
        """This lane's state of chunk ``chunk`` of row r.

        The row's aligned 16-byte slots go to consecutive lanes, two loads in
        flight per lane; the few entries before the first aligned slot and
        after the last (``address16``, ``stride16``: x's address and row
        stride modulo 16 bytes) are read one by one in the first chunk.
        """
        n = x.shape[1]
        width = dev.VECTOR_BYTES // x.itemsize
        shift = (address16 + r * stride16) % dev.VECTOR_BYTES // x.itemsize
        head = min(n, (width - shift) % width)
        slots = (n - head) // width
        tail = head + slots * width
        state = empty_state()
        if chunk == 0:
            for j in range(lane, head, group):
                state = fold(state, (x[r, j],), r, j, pivot, weight, y, smoothing, n)
            for j in range(tail + lane, n, group):
                state = fold(state, (x[r, j],), r, j, pivot, weight, y, smoothing, n)
        lo, hi = chunk_bounds(slots, splits, chunk)
        q = lo + lane
        while q + group < hi:
            j = head + q * width
            k = j + group * width
            first = dev.load_vector(x, r, j)
            second = dev.load_vector(x, r, k)
            state = fold(state, first, r, j, pivot, weight, y, smoothing, n)
            state = fold(state, second, r, k, pivot, weight, y, smoothing, n)
            q += 2 * group
        if q < hi:
            j = head + q * width
            state = fold(state, dev.load_vector(x, r, j), r, j, pivot, weight, y, smoothing, n)
        return state

    @jit(device=True)
    def log_prob(v, m, log_s):
        """log p of an entry v of a row with state max m and log s."""
        if input_type == LOGITS:
            return (v - np.float64(m)) - log_s
        if input_type == LOG_PROBS:
            return v
        lp = log_of(v)
        return LOG_CLAMP if lp < LOG_CLAMP else lp

    @jit(device=True)
    def put(r, value, weight_of_row, out, row_values):
        """A row's loss: into ``out`` when not reduced, else into the row buffers."""
        if reduction == NONE:
            out[r] = value
        else:
            row_values[0, r] = value
            row_values[1, r] = weight_of_row

    @jit(device=True)
    def finish_row(r, state, x, target, weight, ignore_index, smoothing, out, out2, out3, out4, row_values, bad):
        """Row r's results from its merged state."""
        m, ones, rest, t, c, a, w = state
        n = x.shape[1]
        s = ones + rest
        log_s = math.log(ones) + math.log1p(rest / ones) if ones > 0 else log_of(rest)
        if job == LSE:
            out[r] = INF if m == INF else np.float64(m) + log_s
        elif job == ENTROPY:
            out[r] = log_s - t / s if m != INF and s > 0 else NAN
        elif job == SHIFT:
            out[r] = m
            out2[r] = log_s
        elif job == SOFT_LOSS:
            put(r, -(a - w * log_s) if shifted else -a, 1.0, out, row_values)
        else:
            index, kind = class_index(target, r, n, ignore_index)
            if job == CLASS_LOSS:
                if kind == 0:
                    tw = weight[index] if weighted else 1.0
                    loss = 0.0 - (1.0 - smoothing) * tw * log_prob(np.float64(widen(x[r, index])), m, log_s)
                    if coefficients_on:
                        loss -= smoothing / n * (a - w * log_s if shifted else a)
                    put(r, loss, tw, out, row_values)
                else:
                    if kind == 2:
                        cuda.atomic.min(bad, 0, r)
                    put(r, 0.0 if kind == 1 else NAN, 0.0, out, row_values)
            else:  # METRICS: loss, rank, entropy, confidence
                out[r], out3[r], out4[r] = 0.0, 0.0, 0.0
                if kind != 0:
                    if kind == 2:
                        cuda.atomic.min(bad, 0, r)
                    out2[r] = IGNORED_ROW
                else:
                    loss = -log_prob(np.float64(widen(x[r, index])), m, log_s)
                    out[r] = loss
                    out2[r] = c if loss == loss else UNDEFINED_ROW
                    out3[r] = log_s - t / s if m != INF and s > 0 else NAN
                    out4[r] = math.exp(-log_s) if log_s == log_s else NAN

    @jit(device=True)
    def block_sum(value, scratch):
        """The block's total of ``value`` (every thread gets it), by a fixed tree."""
        tid = cuda.threadIdx.x
        cuda.syncthreads()
        scratch[tid] = value
        return group_sum(scratch, tid, threads)

    @jit(device=True)
    def reduce_rows(n_rows, out, row_values, counter, scratch, last):
        """The last block to arrive sums the rows' values in a fixed order into out[0]
        (divided by the rows' weights for "mean"; 0/0 = NaN) and rearms the counter."""
        if reduction == NONE:
            return
        tid = cuda.threadIdx.x
        cuda.threadfence()  # every thread's row values are visible device-wide before the block's ticket
        cuda.syncthreads()
        if tid == 0:
            ticket = cuda.atomic.add(counter, 0, 1)
            last[0] = 1 if ticket == cuda.gridDim.x - 1 else 0
        cuda.syncthreads()
        if last[0] == 0:
            return
        cuda.threadfence()
        # Four independent sums per thread keep four loads in flight: this loop
        # runs in one block, after every other block has finished.
        t0 = t1 = t2 = t3 = 0.0
        w0 = w1 = w2 = w3 = 0.0
        i = tid
        while i + 3 * threads < n_rows:
            t0 += row_values[0, i]
            t1 += row_values[0, i + threads]
            t2 += row_values[0, i + 2 * threads]
            t3 += row_values[0, i + 3 * threads]
            w0 += row_values[1, i]
            w1 += row_values[1, i + threads]
            w2 += row_values[1, i + 2 * threads]
            w3 += row_values[1, i + 3 * threads]
            i += 4 * threads
        while i < n_rows:
            t0 += row_values[0, i]
            w0 += row_values[1, i]
            i += threads
        total = block_sum((t0 + t1) + (t2 + t3), scratch)
        weights = block_sum((w0 + w1) + (w2 + w3), scratch)
        if tid == 0:
            counter[0] = 0
            out[0] = total if reduction == SUM else ratio(total, weights)

    @jit(device=True)
    def last_chunk_state(states, row_counts, r, item, splits, state):
        """Store a split row's chunk state; the row's last chunk to arrive gets
        the row's state, merged from every chunk in order (and rearms the row's
        counter); the others get a state whose max is NaN."""
        store_state(states, item, state)
        cuda.threadfence()  # the state is visible device-wide before the chunk is counted
        if cuda.atomic.add(row_counts, r, 1) != splits - 1:
            return compute(NAN), 0.0, 0.0, 0.0, np.int64(0), 0.0, 0.0
        cuda.threadfence()
        row_counts[r] = 0
        merged = load_state(states, r * splits)
        for k in range(1, splits):
            merged = merge(merged, load_state(states, r * splits + k))
        return merged

    @jit(**dev.launch_bounds(threads, 0 if coefficients_on else RESIDENT_BLOCKS))
    def row_kernel(x, address16, stride16, splits, group, target, weight, y, ignore_index, smoothing,
                   out, out2, out3, out4, states, row_counts, row_values, counter, bad):
        """Each (row, chunk) -> its state; a row is finished by its last chunk,
        the batch reduction by the last block."""
        scratch = cuda.shared.array(threads, np.float64)
        warp_states = cuda.shared.array((warps, STATE_SIZE), np.float64)
        last = cuda.shared.array(1, np.int32)
        tid = cuda.threadIdx.x
        lane = tid % group
        n_rows, n = x.shape
        items = n_rows * splits
        per_block = threads // group
        for base in range(cuda.blockIdx.x * per_block, items, cuda.gridDim.x * per_block):
            item = base + tid // group  # the same trip count for every thread: shuffles need the whole warp
            r = item // splits
            live = item < items
            state = empty_state()
            if live:
                pivot = compute(NAN)
                kind = 0
                if class_rows:
                    index, kind = class_index(target, r, n, ignore_index)
                    if count_on and kind == 0:
                        pivot = widen(x[r, index])
                if kind == 0:  # ignored and bad rows are not read
                    state = row_share(x, r, item - r * splits, splits, lane, group, address16, stride16, pivot,
                                      weight, y, smoothing)
            state = group_state(state, tid, group, scratch, warp_states)
            if live and lane == 0:
                if splits > 1:
                    state = last_chunk_state(states, row_counts, r, item, splits, state)
                if splits == 1 or state[0] == state[0]:  # NaN max: another chunk of the row finishes it
                    finish_row(r, state, x, target, weight, ignore_index, smoothing, out, out2, out3, out4,
                               row_values, bad)
        reduce_rows(n_rows, out, row_values, counter, scratch, last)

    return row_kernel
