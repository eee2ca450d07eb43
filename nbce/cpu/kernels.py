"""The CPU kernels: ``prange`` over rows, one serial streaming pass per row
(the element-wise binary losses: over fixed chunks of elements, see ``_binary``).

Every strided operand arrives as ``(base, geom)``: ``base`` is a 1-D,
contiguous view spanning the operand's memory and ``geom`` an int64 array
``[step, ndim, *batch_shape, *batch_strides]`` (strides in elements) that
locates row ``r`` (row-major over the batch dimensions) at
``base[offset(r) + j*step]``.  Arbitrary batch strides therefore cost no copy;
a non-unit class stride costs a per-row gather into a small buffer.
"""

import numpy as np
from numba import njit, prange

from .._config import ELEMENTWISE_PARALLEL_JIT_OPTIONS, JIT_OPTIONS, PARALLEL_JIT_OPTIONS
from .._tally import IGNORED_ROW, UNDEFINED_ROW
from ._binary import BLOCK as BINARY_BLOCK, CHUNK as BINARY_CHUNK, block_loss, fill
from ._bits import widen
from ._normalize import write_normalized
from ._rows import (
    LOGITS,
    log_normalizer,
    log_prob,
    log_softmax_entry,
    row_stats,
    soft_target_sum,
    softmax_stats,
    weighted_log_prob_sum,
)


@njit(**JIT_OPTIONS)
def row_offset(geom, r):
    r = np.int64(r)  # prange indices may be unsigned; keep the arithmetic signed
    ndim = geom[1]
    offset = 0
    for d in range(ndim - 1, -1, -1):
        size = geom[2 + d]
        q = r // size
        offset += (r - q * size) * geom[2 + ndim + d]
        r = q
    return offset


@njit(**JIT_OPTIONS)
def load_row(base, geom, n, r):
    """Row ``r`` as a contiguous array: a view for unit class stride, else a gathered copy."""
    start = row_offset(geom, r)
    step = geom[0]
    if step == 1:
        return base[start:start + n]
    row = np.empty(n, base.dtype)
    for j in range(n):
        row[j] = base[start + j * step]
    return row


@njit(**PARALLEL_JIT_OPTIONS)
def softmax_stats_rows(base, geom, n_classes, with_entropy, lse_out, entropy_out):
    """Per row: logsumexp, and the softmax entropy when ``with_entropy``."""
    for r in prange(lse_out.size):
        lse, entropy = softmax_stats(load_row(base, geom, n_classes, r), with_entropy)
        lse_out[r] = lse
        entropy_out[r] = entropy


@njit(**ELEMENTWISE_PARALLEL_JIT_OPTIONS)
def normalize_rows(base, geom, n_classes, exponentiate, out_base, out_geom):
    """Row r of the output (``(out_base, out_geom)``, writable, any strides)
    = (x_r - c_r) - log s_r (log_softmax), or its exp (softmax), in the row's
    compute type (see ``_normalize``); (c_r, log s_r) from the
    row pass.  Each output element is written once."""
    out_step = out_geom[0]
    for r in prange(_row_count(out_geom)):
        row = load_row(base, geom, n_classes, r)
        shift, log_total = log_normalizer(row)
        start = row_offset(out_geom, r)
        # One call per layout: a contiguous destination keeps its own
        # (vectorized) compilation instead of sharing the strided one.
        if out_step == 1:
            write_normalized(row, shift, log_total, exponentiate, out_base[start:start + n_classes])
        else:
            write_normalized(row, shift, log_total, exponentiate,
                             out_base[start:start + (n_classes - 1) * out_step + 1:out_step])


@njit(**JIT_OPTIONS)
def _row_count(geom):
    """The number of rows a geometry describes (the product of its batch shape)."""
    n = 1
    for d in range(geom[1]):
        n *= geom[2 + d]
    return n


@njit(**JIT_OPTIONS)
def _is_class(t, n_classes):
    """0 <= t < n_classes: the kernels' own guard before any ``row[t]`` or
    ``weight[t]``, whatever the host checks let through (a row costs one
    compare; Numba would otherwise wrap a negative index or read past the end)."""
    return 0 <= t < n_classes


@njit(**JIT_OPTIONS)
def _row_normalizer(row, input_type):
    """(c, log s) for logits; (0, 0) for log-probabilities and probabilities."""
    if input_type == LOGITS:
        return log_normalizer(row)
    return 0.0, 0.0


@njit(**ELEMENTWISE_PARALLEL_JIT_OPTIONS)
def class_index_rows(base, geom, n_classes, target, weight, ignore_index, smoothing, input_type,
                     loss_out, weight_out):
    """Cross-entropy with class-index targets, PyTorch's formula per row:

    loss_r = -(1 - eps) w[t_r] log p_r[t_r] - (eps / C) sum_c w[c] log p_r[c]

    ``weight_out[r] = w[t_r]`` (the mean's denominator); ignored rows are not
    read and give 0 in both; a target outside [0, C) that reached the kernel
    gives NaN in both and is not read (every row does, should ``weight`` be
    shorter than a row).
    """
    keep = 1.0 - smoothing
    spread = smoothing / n_classes
    readable = n_classes if weight.size >= n_classes else 0
    for r in prange(loss_out.size):
        t = target[r]
        if t == ignore_index:
            loss_out[r] = 0.0
            weight_out[r] = 0.0
            continue
        if not _is_class(t, readable):
            loss_out[r] = np.nan
            weight_out[r] = np.nan
            continue
        row = load_row(base, geom, n_classes, r)
        shift, log_total = _row_normalizer(row, input_type)
        w = weight[t]
        loss = -keep * w * log_prob(widen(row[t]), shift, log_total, input_type)
        if smoothing > 0.0:
            loss -= spread * weighted_log_prob_sum(row, weight, shift, log_total, input_type)
        loss_out[r] = loss
        weight_out[r] = w


@njit(**ELEMENTWISE_PARALLEL_JIT_OPTIONS)
def soft_target_rows(base, geom, n_classes, t_base, t_geom, weight, smoothing, input_type, loss_out):
    """Cross-entropy with class probabilities: loss_r = -sum_c w[c] y'_rc log p_rc."""
    t_step = t_geom[0]
    for r in prange(loss_out.size):
        row = load_row(base, geom, n_classes, r)
        shift, log_total = _row_normalizer(row, input_type)
        loss_out[r] = -soft_target_sum(row, t_base, row_offset(t_geom, r), t_step, weight, smoothing,
                                       shift, log_total, input_type)


@njit(**ELEMENTWISE_PARALLEL_JIT_OPTIONS)
def metric_rows(base, geom, n_classes, target, ignore_index, loss_out, rank_out, entropy_out,
                confidence_out):
    """Every per-row evaluation metric in one read of the row:

    loss       = -log p_t = -((x_t - c) - log s)     (cross-entropy, nats)
    rank       = #{c : x_c > x_t}                    (0: the target is an argmax; ties favour it)
    entropy    = -sum_c p_c log p_c
    confidence = max_c p_c = exp((max_c x_c - c) - log s)

    with c the row maximum and s = sum_c exp(x_c - c) (see ``row_stats``).
    Ignored rows are not read and get rank ``IGNORED_ROW``; rows holding a
    NaN, and targets outside [0, C) that reached the kernel (not read), get
    rank ``UNDEFINED_ROW`` and NaN statistics.
    """
    for r in prange(loss_out.size):
        t = target[r]
        if t == ignore_index:
            rank_out[r] = IGNORED_ROW
            loss_out[r] = 0.0
            entropy_out[r] = 0.0
            confidence_out[r] = 0.0
            continue
        if not _is_class(t, n_classes):
            rank_out[r] = UNDEFINED_ROW
            loss_out[r] = entropy_out[r] = confidence_out[r] = np.nan
            continue
        row = load_row(base, geom, n_classes, r)
        pivot = widen(row[t])
        shift, log_total, entropy, top, above = row_stats(row, True, True, pivot)
        loss_out[r] = -log_softmax_entry(pivot, shift, log_total)
        rank_out[r] = above if shift == shift else UNDEFINED_ROW
        entropy_out[r] = entropy
        confidence_out[r] = np.exp(log_softmax_entry(top, shift, log_total))


@njit(**JIT_OPTIONS)
def _binary_chunk(from_logits, start, stop, length, x_base, x_geom, y_base, y_geom, w_base, w_geom, pw_base,
                  pw_geom, elementwise_out, store):
    """(sum of the losses, count of values outside [0, 1]) of elements [start, stop)
    of the flattened input; see ``_binary``."""
    xs, ys, ws, ps = x_geom[0], y_geom[0], w_geom[0], pw_geom[0]
    size = min(BINARY_BLOCK, stop - start)
    x_buffer, y_buffer = np.empty(size, x_base.dtype), np.empty(size, y_base.dtype)
    w_buffer, pw_buffer = np.empty(size, w_base.dtype), np.empty(size, pw_base.dtype)
    scratch = np.empty(0 if store else size, elementwise_out.dtype)
    total = 0.0
    bad = 0
    r = start // length
    j = start - r * length
    e = start
    while e < stop:
        n = min(length - j, stop - e)  # the segment: row r, columns [j, j + n)
        xo, yo = row_offset(x_geom, r) + j * xs, row_offset(y_geom, r) + j * ys
        wo, po = row_offset(w_geom, r) + j * ws, row_offset(pw_geom, r) + j * ps
        if ws == 0:  # broadcast along the row: one fill serves every block of the segment
            fill(w_buffer, min(size, n), w_base, wo, 0)
        if ps == 0:
            fill(pw_buffer, min(size, n), pw_base, po, 0)
        for lo in range(0, n, BINARY_BLOCK):
            m = min(BINARY_BLOCK, n - lo)
            w = w_buffer[:m] if ws == 0 else fill(w_buffer, m, w_base, wo + lo * ws, ws)
            pw = pw_buffer[:m] if ps == 0 else fill(pw_buffer, m, pw_base, po + lo * ps, ps)
            out = elementwise_out[e + lo:e + lo + m] if store else scratch[:m]
            if xs == 1 and ys == 1:  # read in place
                s, b = block_loss(from_logits, x_base[xo + lo:xo + lo + m], y_base[yo + lo:yo + lo + m], w, pw,
                                  out)
            else:
                s, b = block_loss(from_logits, fill(x_buffer, m, x_base, xo + lo * xs, xs),
                                  fill(y_buffer, m, y_base, yo + lo * ys, ys), w, pw, out)
            total += s
            bad += b
        e += n
        r += 1
        j = 0
    return total, bad


@njit(**PARALLEL_JIT_OPTIONS)
def binary_chunks(from_logits, n_elements, length, x_base, x_geom, y_base, y_geom, w_base, w_geom, pw_base, pw_geom,
                  elementwise_out, chunk_sum_out, bad_out):
    """Binary cross-entropy, element by element, in chunks of ``BINARY_CHUNK``
    elements of the flattened input (``n_elements``, rows of ``length`` along
    the last axis):

    probabilities: l = -w (y max(log p, -100) + (1 - y) max(log(1 - p), -100))
    logits:        l = w ((1 - y) x + (1 + (pw - 1) y) (log1p(exp(-|x|)) + max(-x, 0)))

    Writes ``elementwise_out`` (flat, of the compute type) when it is not empty, always the
    per-chunk sums, and counts per chunk in ``bad_out`` the elements whose
    probability or target lies outside [0, 1] (probabilities only; NaN is not
    counted).  See ``_binary`` for the evaluation.
    """
    store = elementwise_out.size > 0
    for c in prange(chunk_sum_out.size):
        start = np.int64(c) * BINARY_CHUNK
        stop = min(n_elements, start + BINARY_CHUNK)
        chunk_sum_out[c], bad_out[c] = _binary_chunk(from_logits, start, stop, length, x_base, x_geom, y_base,
                                                     y_geom, w_base, w_geom, pw_base, pw_geom, elementwise_out,
                                                     store)
