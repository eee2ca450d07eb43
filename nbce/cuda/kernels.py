"""numba.cuda kernels, built per (threads per block, compute precision, storage).

Every kernel also runs on Numba's CUDA simulator: reductions go through
shared memory (no warp shuffles), and the few operations the simulator lacks
have small fallbacks in ``_device``.

Row statistics use the online log-sum-exp: each thread folds its strided
share of a row into (m, s, t) = (max, sum_j e^{x_j - m}, sum_j e^{x_j - m}(x_j - m)),
blocks merge their threads' states in a shared-memory tree, and a finishing
pass merges a row's chunk states in a fixed order, so the results do not
depend on scheduling.  States are float64; exponentials of float32/half
inputs are evaluated in float32.
"""

import math
from functools import lru_cache
from types import SimpleNamespace

import numpy as np

from .._tally import IGNORED_ROW, UNDEFINED_ROW
from . import _device as dev
from ._device import cuda

NAN = math.nan
NEG_INF = -math.inf
INF = math.inf
LOGITS, LOG_PROBS, PROBS = 0, 1, 2
LOG_CLAMP = -100.0


@lru_cache(maxsize=None)
def build(threads, narrow, bfloat16, target_bfloat16=False):
    """Kernels for ``threads`` per block (a power of two), float32 maths when
    ``narrow``, logits stored as bfloat16 words (uint16) when ``bfloat16``,
    and class-probability targets stored so when ``target_bfloat16``."""
    jit = dev.jit

    @jit(device=True)
    def to_float(v):
        if bfloat16:
            return np.float64(dev.bfloat16_to_float32(v))
        return np.float64(v)

    @jit(device=True)
    def load_target(y, r, j):
        if target_bfloat16:
            return np.float64(dev.bfloat16_to_float32(y[r, j]))
        return np.float64(y[r, j])

    @jit(device=True)
    def load(x, r, j):
        return to_float(x[r, j])

    @jit(device=True)
    def exp_of(d):
        if narrow:
            return np.float64(math.exp(np.float32(d)))
        return math.exp(d)

    @jit(device=True)
    def log_of(s):
        # math.log raises on 0 in the simulator; the GPU gives -inf: say it here.
        if s > 0:
            return math.log(s)
        return NEG_INF if s == 0 else NAN

    @jit(device=True)
    def push(m, s, t, v):
        """Fold one value into the state (m, s, t)."""
        if v != v:
            return m, NAN, NAN
        if v == NEG_INF:
            return m, s, t
        if v > m:
            if m == NEG_INF:
                return v, s * 0.0 + 1.0, t * 0.0
            if v == INF:  # the row's logsumexp is +inf, its entropy undefined
                return v, s * 0.0 + 1.0, NAN
            d = m - v
            a = exp_of(d)
            return v, a * s + 1.0, a * (t + s * d)
        if v == m:
            return m, s + 1.0, t
        d = v - m
        e = exp_of(d)
        return m, s + e, (t + e * d) if e > 0 else t

    @jit(device=True)
    def fold(m, s, t, a, v, pivot):
        """``push`` and count ``v`` when it lies above ``pivot``."""
        m, s, t = push(m, s, t, v)
        return m, s, t, (a + 1.0) if v > pivot else a

    @jit(device=True)
    def merge(m1, s1, t1, m2, s2, t2):
        """Combine two states; associative up to rounding, applied in a fixed order."""
        if m2 > m1:
            m1, s1, t1, m2, s2, t2 = m2, s2, t2, m1, s1, t1
        if m2 == NEG_INF:
            return m1, s1 + s2 * 0.0, t1 + t2 * 0.0
        if m1 == m2:
            return m1, s1 + s2, t1 + t2
        if m1 == INF:  # the entropy of a row holding +inf is undefined
            return m1, s1 + s2 * 0.0, NAN
        d = m2 - m1
        a = math.exp(d)
        return m1, s1 + a * s2, t1 + a * (t2 + s2 * d)

    @jit(device=True)
    def finish(m, s, t):
        """(logsumexp, entropy) of a state."""
        if m == INF:
            return INF, NAN
        log_s = log_of(s)
        return m + log_s, log_s - t / s if s == s and s > 0 else NAN

    @jit(device=True)
    def chunk_bounds(n, splits, c):
        size = (n + splits - 1) // splits
        lo = c * size
        return lo, min(n, lo + size)

    @jit(device=True)
    def row_slots(x, r, address16, stride16, splits, chunk):
        """(first, end, width, shift): chunk ``chunk`` of row r's aligned slots.
        Slot q holds elements q * width - shift ... + width; shift is how far
        the row starts past a ``dev.VECTOR_BYTES`` boundary, in elements."""
        width = dev.VECTOR_BYTES // x.itemsize
        shift = (address16 + r * stride16) % dev.VECTOR_BYTES // x.itemsize
        first, end = chunk_bounds((x.shape[1] + shift + width - 1) // width, splits, chunk)
        return first, end, width, shift

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

    @jit(device=True)
    def work_items(items, group):
        """(first, step) of this block's loop over work items, ``threads // group`` per pass."""
        per_block = threads // group
        return cuda.blockIdx.x * per_block, cuda.gridDim.x * per_block

    @jit
    def stats_partials(x, splits, group, pm, ps, pt, target, ignore_index, above, address16, stride16):
        """A group of ``group`` threads per (row, chunk) -> the chunk's merged
        state, into pm/ps/pt[row, chunk].  Small rows share a block, long rows
        get a block per chunk.

        Rows are read in aligned slots of ``dev.VECTOR_BYTES``, one wide load
        per slot, consecutive slots to consecutive lanes; only a row's first
        and last slot, cut by the row's ends, are read element by element.
        ``address16`` and ``stride16`` are x's address and row stride in bytes
        modulo ``dev.VECTOR_BYTES``: they give where each row's slots start.

        When ``above`` has rows, the same read also counts the entries above
        the target's logit x[r, target[r]] into above[row, chunk]; rows whose
        target is ``ignore_index`` or out of range are not read at all.
        """
        sm = cuda.shared.array(threads, np.float64)
        ss = cuda.shared.array(threads, np.float64)
        st = cuda.shared.array(threads, np.float64)
        sa = cuda.shared.array(threads, np.float64)  # counts: exact in float64 below 2**53
        tid = cuda.threadIdx.x
        lane = tid % group
        n_rows, n = x.shape
        counting = above.shape[0] > 0
        items = n_rows * splits
        first, step = work_items(items, group)
        for base in range(first, items, step):  # the same trip count for every thread
            item = base + tid // group
            m, s, t, a = NEG_INF, 0.0, 0.0, 0.0
            if item < items:
                r = item // splits
                pivot = NAN
                read = True
                if counting:
                    c = target[r]
                    read = c != ignore_index and 0 <= c < n
                    if read:
                        pivot = load(x, r, c)
                if read:
                    first, end, width, shift = row_slots(x, r, address16, stride16, splits, item - r * splits)
                    for slot in range(first + lane, end, group):
                        start = slot * width - shift
                        if start >= 0 and start + width <= n:
                            for v in dev.load_vector(x, r, start):
                                m, s, t, a = fold(m, s, t, a, to_float(v), pivot)
                        else:
                            for j in range(max(start, 0), min(start + width, n)):
                                m, s, t, a = fold(m, s, t, a, load(x, r, j), pivot)
            sm[tid], ss[tid], st[tid], sa[tid] = m, s, t, a
            cuda.syncthreads()
            stride = group // 2
            while stride > 0:
                if lane < stride:
                    sm[tid], ss[tid], st[tid] = merge(sm[tid], ss[tid], st[tid],
                                                      sm[tid + stride], ss[tid + stride], st[tid + stride])
                    sa[tid] += sa[tid + stride]
                cuda.syncthreads()
                stride //= 2
            if lane == 0 and item < items:
                r = item // splits
                pm[r, item - r * splits] = sm[tid]
                ps[r, item - r * splits] = ss[tid]
                pt[r, item - r * splits] = st[tid]
                if counting:
                    above[r, item - r * splits] = sa[tid]
            cuda.syncthreads()

    @jit(device=True)
    def row_state(pm, ps, pt, r):
        m, s, t = NEG_INF, 0.0, 0.0
        for c in range(pm.shape[1]):
            m, s, t = merge(m, s, t, pm[r, c], ps[r, c], pt[r, c])
        return m, s, t

    @jit
    def finish_stats(pm, ps, pt, lse_out, entropy_out):
        r = cuda.grid(1)
        if r < lse_out.size:
            lse_out[r], entropy_out[r] = finish(*row_state(pm, ps, pt, r))

    @jit
    def finish_metrics(pm, ps, pt, above, x, target, ignore_index, loss_out, rank_out, entropy_out,
                       confidence_out, bad):
        """Per row (one thread): loss = lse - x_t, rank = entries above x_t,
        entropy, confidence = exp(max - lse); rank -1 for ignored rows, -2 for
        rows holding a NaN; out-of-range targets raise the smallest bad row into ``bad``."""
        r = cuda.grid(1)
        if r >= loss_out.size:
            return
        c = target[r]
        loss_out[r], entropy_out[r], confidence_out[r] = 0.0, 0.0, 0.0
        if c == ignore_index:
            rank_out[r] = IGNORED_ROW
            return
        if c < 0 or c >= x.shape[1]:
            cuda.atomic.min(bad, 0, r)
            rank_out[r] = IGNORED_ROW
            return
        m, s, t = row_state(pm, ps, pt, r)
        lse, entropy = finish(m, s, t)
        count = 0.0
        for k in range(above.shape[1]):
            count += above[r, k]
        loss_out[r] = lse - load(x, r, c)
        rank_out[r] = np.int64(count) if lse == lse else UNDEFINED_ROW
        entropy_out[r] = entropy
        confidence_out[r] = math.exp(m - lse)

    @jit(device=True)
    def log_prob(v, lse, input_type):
        if input_type == LOGITS:
            return v - lse
        if input_type == LOG_PROBS:
            return v
        lp = log_of(v)
        return LOG_CLAMP if lp < LOG_CLAMP else lp

    @jit(device=True)
    def coefficient_term(v, r, j, y, soft, weight, smoothing, lse, input_type):
        """a_j log p_j for entry ``v`` = x[r, j]; see ``coefficient_sums``."""
        a = weight[j]
        if soft:
            a *= (1.0 - smoothing) * load_target(y, r, j) + smoothing / y.shape[1]
        if a != 0.0:
            return a * log_prob(v, lse[r], input_type)
        return 0.0

    @jit
    def coefficient_sums(x, y, weight, smoothing, input_type, lse, splits, group, out, address16, stride16):
        """out[row, chunk] = sum_c a_c log p_c over the chunk, a_c = w_c when ``y`` has
        no columns (label smoothing of class indices), else w_c ((1 - eps) y_c + eps / C).
        Work is laid out, and x read in wide slots, as in ``stats_partials``."""
        acc = cuda.shared.array(threads, np.float64)
        tid = cuda.threadIdx.x
        lane = tid % group
        n_rows, n = x.shape
        soft = y.shape[1] > 0
        items = n_rows * splits
        first_item, step = work_items(items, group)
        for base in range(first_item, items, step):
            item = base + tid // group
            total = 0.0
            if item < items:
                r = item // splits
                first, end, width, shift = row_slots(x, r, address16, stride16, splits, item - r * splits)
                for slot in range(first + lane, end, group):
                    start = slot * width - shift
                    if start >= 0 and start + width <= n:
                        j = start
                        for v in dev.load_vector(x, r, start):
                            total += coefficient_term(to_float(v), r, j, y, soft, weight, smoothing, lse, input_type)
                            j += 1
                    else:
                        for j in range(max(start, 0), min(start + width, n)):
                            total += coefficient_term(load(x, r, j), r, j, y, soft, weight, smoothing, lse,
                                                      input_type)
            acc[tid] = total
            chunk_total = group_sum(acc, tid, group)
            if lane == 0 and item < items:
                r = item // splits
                out[r, item - r * splits] = chunk_total

    @jit
    def class_index_loss(x, target, weight, ignore_index, smoothing, input_type, lse, sums,
                         loss_out, weight_out, bad):
        """Per row (one thread): PyTorch's class-index loss from the row's lse and
        smoothing sum; out-of-range targets raise the smallest bad row into ``bad``."""
        r = cuda.grid(1)
        if r >= loss_out.size:
            return
        n = x.shape[1]
        t = target[r]
        if t == ignore_index:
            loss_out[r] = 0.0
            weight_out[r] = 0.0
            return
        if t < 0 or t >= n:
            cuda.atomic.min(bad, 0, r)
            loss_out[r] = NAN
            weight_out[r] = 0.0
            return
        w = weight[t]
        loss = -(1.0 - smoothing) * w * log_prob(load(x, r, t), lse[r], input_type)
        if smoothing > 0.0:
            smooth = 0.0
            for c in range(sums.shape[1]):
                smooth += sums[r, c]
            loss -= smoothing / n * smooth
        loss_out[r] = loss
        weight_out[r] = w

    @jit
    def negated_row_sums(sums, out):
        r = cuda.grid(1)
        if r < out.size:
            total = 0.0
            for c in range(sums.shape[1]):
                total += sums[r, c]
            out[r] = -total

    @jit
    def normalize(x, lse, exponentiate, out):
        """out = x - lse (or its exp), row by row.  Consecutive threads take
        consecutive elements of the flattened rows: reads and writes coalesce."""
        n = out.shape[1]
        for e in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            r = e // n
            j = e - r * n
            d = load(x, r, j) - lse[r]
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
                    softplus = math.log1p(math.exp(-abs(v))) + max(-v, 0.0)
                    loss = weight * ((1.0 - target) * v + (1.0 + (positive - 1.0) * target) * softplus)
                else:
                    if v < 0.0 or v > 1.0:
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
        """out[0] = numerator[0] / denominator[0], with 0/0 = NaN as in NumPy."""
        if cuda.grid(1) == 0:
            d = denominator[0]
            n = numerator[0]
            if d != 0.0:
                out[0] = n / d
            elif n != n or n == 0.0:
                out[0] = NAN
            else:
                out[0] = math.copysign(INF, n)

    return SimpleNamespace(**{name: value for name, value in locals().items() if hasattr(value, "py_func") or callable(value)})
