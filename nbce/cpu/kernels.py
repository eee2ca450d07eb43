"""The CPU kernels: ``prange`` over runs of fixed groups of consecutive rows
(see ``group_plan``), one serial streaming pass per long row, rows of one
block four at a time (the element-wise binary losses: over fixed chunks of
elements, see ``_binary``).

Every strided operand arrives as ``(base, geom)``: ``base`` is a 1-D,
contiguous view spanning the operand's memory and ``geom`` an int64 array
``[step, ndim, *batch_shape, *batch_strides]`` (strides in elements) that
locates row ``r`` (row-major over the batch dimensions) at
``base[offset(r) + j*step]``.  Arbitrary batch strides therefore cost no copy;
a non-unit class stride costs a per-row gather into a small buffer.
"""

import numpy as np
from numba import njit, prange

from .._config import BLOCK, ELEMENTWISE_JIT_OPTIONS, ELEMENTWISE_PARALLEL_JIT_OPTIONS, JIT_OPTIONS, PARALLEL_JIT_OPTIONS
from .._tally import IGNORED_ROW, UNDEFINED_ROW
from ._binary import BLOCK as BINARY_BLOCK, CHUNK as BINARY_CHUNK, block_loss, fill
from ._bits import prefetch, widen
from ._normalize import write_normalized
from ._rows import (
    ABOVE,
    CONFIDENCE,
    ENTROPY,
    LOG_SHIFT,
    LOG_TOTAL,
    LOGITS,
    MOMENT,
    N_LOGS,
    N_SUMS,
    ONES,
    REST,
    SHIFT,
    TOP,
    log_prob,
    log_softmax_entry,
    log_stats_table,
    logsumexp_of,
    row_sums,
    ROWS_AT_ONCE,
    TABLE_STEP,
    short_rows_sums,
    soft_target_sum,
    weighted_log_prob_sum,
)
from ._vectors import wide_vectors


@njit(inline="always", **JIT_OPTIONS)
def row_offset(geom, r):
    r = np.int64(r)  # prange indices may be unsigned; keep the arithmetic signed
    ndim = geom[1]
    if ndim == 1:  # one batch axis (r < its size): no division, which costs more than a short row's read
        return r * geom[3]
    offset = 0
    for d in range(ndim - 1, -1, -1):
        size = geom[2 + d]
        q = r // size
        offset += (r - q * size) * geom[2 + ndim + d]
        r = q
    return offset


@njit(**JIT_OPTIONS)
def load_row_at(base, start, step, n):
    """The row of ``n`` elements at ``base[start + j*step]`` as a contiguous
    array: a view for unit class stride, else a gathered copy."""
    if step == 1:
        return base[start:start + n]
    row = np.empty(n, base.dtype)
    for j in range(n):
        row[j] = base[start + j * step]
    return row


# The row kernels work a group of consecutive rows at a time, so that short
# rows share the per-group costs and the logarithms of their statistics run as
# one vector loop (``_rows.log_stats_table``); a task is a run of groups with
# scratch tables of its own (``group_plan``, ``span_scratch``).  Rows of at
# most ``BLOCK`` entries are read four at a time (``_rows.short_rows_sums``),
# longer ones one by one (``_rows.row_sums``).  Up to MID_ROW entries a
# group takes about GROUP_ELEMENTS entries, at least GROUP_ROWS rows
# (MAX_GROUP_ROWS at most), fewer (at least MIN_GROUP) only to make
# ``n_tasks`` tasks of a small batch (the caller's number,
# ``nbce._threads.n_tasks``: a few per thread).  A group's own costs (its
# tables, and then also their allocation) were a few hundred nanoseconds:
# groups of 2 rows made a 512x100 cross_entropy take 71 us, groups of 16
# take 44, and 128 tasks for 4096 rows of 100 classes on two threads cost
# 15 % more than 32.  Its tables are as wide as its rows rounded
# up to ``_rows.TABLE_STEP``; beyond MID_ROW a group is one row (a table of
# one column).  A row's arithmetic does not depend on its group's size or
# its place in it, and the split between one-row groups and the others
# depends on the row length only, so results are reproducible.
GROUP_ELEMENTS = 4096
GROUP_ROWS = 128
MAX_GROUP_ROWS = 2048
MID_ROW = 2048
MIN_GROUP = 16
# Rows of one block are read PREFETCH_AHEAD rows after a prefetch of their
# cache lines: four short rows in flight are not a stream the hardware
# prefetcher runs far enough ahead of (65536×100 float32 logsumexp, one
# thread: 73 -> 61 ns a row from memory; 56 from L2).  Rows of more than
# PREFETCH_MAX_BYTES are not prefetched: from a few kilobytes a row is a
# stream the hardware follows on its own, and the prefetches only cost
# instructions (float32 logsumexp from memory, one thread, ns a row with /
# without: 100 entries 42 / 71, 300 entries 95 / 146, 640 entries 214 / 225,
# 1000 entries 340 / 332, 2000 entries 625 / 596).  Rows of 32 entries gain
# nothing in logsumexp, but cross_entropy and evaluate, which read targets
# and write per-row results beside them, lose 15-20 % without.
PREFETCH_AHEAD = 8
PREFETCH_MAX_BYTES = 2048


@njit(**JIT_OPTIONS)
def rows_per_group(n_classes, n_rows, n_tasks):
    if n_classes > MID_ROW:
        return 1
    wanted = min(MAX_GROUP_ROWS, max(GROUP_ROWS, GROUP_ELEMENTS // max(n_classes, 1)))
    return max(MIN_GROUP, min(wanted, (n_rows + n_tasks - 1) // n_tasks))


@njit(**JIT_OPTIONS)
def n_groups(n_rows, size):
    return (n_rows + size - 1) // size


@njit(**JIT_OPTIONS)
def group_plan(n_classes, n_rows, n_tasks):
    """(rows a group, groups, runs) of a row kernel: its parallel iterations
    are ``n_tasks`` runs of consecutive groups (fewer when there are fewer
    groups), each with scratch of its own (``span_scratch``)."""
    size = rows_per_group(n_classes, n_rows, n_tasks)
    groups = n_groups(n_rows, size)
    return size, groups, max(1, min(groups, n_tasks))


@njit(**JIT_OPTIONS)
def span_groups(s, spans, groups):
    """The groups of run ``s`` of ``spans``: a range of consecutive group numbers."""
    return range(np.int64(s) * groups // spans, (np.int64(s) + 1) * groups // spans)


@njit(**JIT_OPTIONS)
def span_scratch(size, n_classes):
    """The scratch tables of one run of groups of ``size`` rows, allocated once
    per run and lent to each of its groups (``group_scratch``).  Allocations
    per group cost rows of 32 entries about 1 ns of 24 (8192x32 logsumexp, one
    thread, rows in cache: 23.5-24.3 -> 23.2-23.3 ns a row; evaluate
    52.8-53.1 -> 49.5-51.4).  The tables are as wide as ``size`` rounded up to
    a multiple of ``TABLE_STEP``, one column for groups of one row."""
    width = 1 if size == 1 else (size + TABLE_STEP - 1) // TABLE_STEP * TABLE_STEP
    return np.empty((3, size), np.int64), np.empty(N_SUMS * width, np.float64), np.empty(N_LOGS * width, np.float64)


@njit(**JIT_OPTIONS)
def group_scratch(scratch, g, size, n_rows):
    """(first row, picks, starts, order, sums, logs) of group ``g``: views of a
    run's ``span_scratch``; see ``group_stats``.  The tables are ``count``
    columns wide rounded up to a multiple of ``TABLE_STEP`` (their table is
    the only loop across rows), one for groups of one row (long rows: every
    row is then in the same place).  The tables are reshaped from flat
    memory: a slice of a wider table would be a strided array, whose loops
    over columns stay scalar (25 % slower on rows of 32 to 100 entries)."""
    index, sums, logs = scratch
    first = np.int64(g) * size
    count = min(size, n_rows - first)
    width = count if size == 1 else (count + TABLE_STEP - 1) // TABLE_STEP * TABLE_STEP
    return (first, index[0, :count], index[1, :count], index[2, :count],
            sums[:N_SUMS * width].reshape((N_SUMS, width)), logs[:N_LOGS * width].reshape((N_LOGS, width)))


@njit(**JIT_OPTIONS)
def group_stats(base, geom, n_classes, first, picks, with_entropy, count_above, starts, order, sums, logs):
    """The statistics of rows first, first + 1, ... (one per entry of ``picks``)
    into the columns of ``sums`` and ``logs`` (see ``_rows.log_stats_table``)
    and their offsets into ``starts`` (``order``: scratch of the same size,
    the places of the rows read).  Row i is read when picks[i] >= 0, and ``above``
    then counts its entries greater than entry picks[i] (``count_above``);
    a row not read, and the columns past the rows, get c = log s = 0.  Rows
    of at most ``BLOCK`` entries are read four at a time
    (``_rows.short_rows_sums``), longer ones one at a time (``_rows.row_sums``).

    Call it with constant flags (``True``/``False`` written at the call): they
    reach the four-row loops as constants, whose loops a flag known only at
    run time keeps scalar, and each kernel compiles only the loops it uses
    (a flag tested at run time here compiled all four settings, in two
    layouts each, into every kernel).
    """
    wide_vectors()
    step = geom[0]
    count = picks.size
    width = sums.shape[1]
    read = 0
    for i in range(count):
        starts[i] = row_offset(geom, first + i)
        order[read] = i
        read += 1 if picks[i] >= 0 else 0
    one_block = n_classes <= BLOCK
    if one_block and read > 0:
        _one_block_rows(base, starts, step, n_classes, picks, order[:read], with_entropy, count_above, sums)
    for i in range(width):
        if i >= count or picks[i] < 0:
            shift, ones, rest, moment, top, above = 0.0, 1.0, 0.0, 0.0, 0.0, 0
        elif one_block:
            continue
        else:
            row = load_row_at(base, starts[i], step, n_classes)
            shift, ones, rest, moment, top, above = row_sums(row, with_entropy, count_above, widen(row[picks[i]]))
        sums[SHIFT, i], sums[ONES, i], sums[REST, i] = shift, ones, rest
        sums[MOMENT, i], sums[TOP, i], sums[ABOVE, i] = moment, top, above
    log_stats_table(sums, logs, width, with_entropy)


@njit(**JIT_OPTIONS)
def _one_block_rows(base, starts, step, n_classes, picks, order, with_entropy, count_above, sums):
    """The sums of the rows at places ``order`` (those with picks[i] >= 0, of at
    most ``BLOCK`` entries) into the columns of ``sums``, ROWS_AT_ONCE at a
    time (``_rows.short_rows_sums``); the last places of the last call repeat
    the last row, which leaves every row's sums as they would be beside others."""
    wide_vectors()
    read = order.size
    if step == 1:
        _contiguous_quads(base, starts, n_classes, picks, order, with_entropy, count_above, sums)
        return
    # Rows of a non-unit class stride: each quad copied into one buffer of four rows.
    quad = np.empty(ROWS_AT_ONCE * n_classes, base.dtype)
    n = np.uint64(n_classes)
    offsets = (np.uint64(0), n, np.uint64(2) * n, np.uint64(3) * n)
    for q in range(0, read, ROWS_AT_ONCE):
        places = _quad(order, q)
        for k in range(ROWS_AT_ONCE):
            fill(quad[k * n_classes:(k + 1) * n_classes], n_classes, base, starts[places[k]], step)
        _sum_quad(quad, offsets, n_classes, places, picks, with_entropy, count_above, sums)


@njit(**JIT_OPTIONS)
def _contiguous_quads(base, starts, n_classes, picks, order, with_entropy, count_above, sums):
    """``_one_block_rows`` for rows of unit class stride: read in place
    (no step to test per row), the rows read next prefetched (rows of at
    most PREFETCH_MAX_BYTES)."""
    wide_vectors()
    read = order.size
    line = 64 // base.itemsize
    ahead = PREFETCH_AHEAD if n_classes * base.itemsize <= PREFETCH_MAX_BYTES else read
    first = starts[order[0]]
    # Rows side by side (a C-ordered batch, none skipped) are prefetched as
    # one run of lines, with no load of a row's offset per row: rows already
    # in cache paid about 2 ns a row for the row-by-row loops (10000×32
    # float32 logsumexp kernel, one thread: 20.4-21.2 -> 18.6-19.7 ns a row),
    # while rows from memory gain as much from either.  Any other layout
    # would only be prefetched wrongly, never read wrongly.
    side_by_side = starts[order[read - 1]] - first == (read - 1) * n_classes
    for q in range(0, read, ROWS_AT_ONCE):
        if q + ahead < read:
            if side_by_side:
                at = first + (q + ahead) * n_classes
                for j in range(0, ROWS_AT_ONCE * n_classes, line):
                    prefetch(base, at + j)
            else:
                for p in range(q + ahead, min(q + ahead + ROWS_AT_ONCE, read)):
                    for j in range(0, n_classes, line):
                        prefetch(base, starts[order[p]] + j)
        places = _quad(order, q)
        i0, i1, i2, i3 = places
        offsets = (np.uint64(starts[i0]), np.uint64(starts[i1]), np.uint64(starts[i2]), np.uint64(starts[i3]))
        _sum_quad(base, offsets, n_classes, places, picks, with_entropy, count_above, sums)


@njit(inline="always", **JIT_OPTIONS)
def _quad(order, q):
    """The rows of places q .. q + 3 of ``order``, the last one repeated past its end."""
    last = order.size - 1
    return order[q], order[min(q + 1, last)], order[min(q + 2, last)], order[min(q + 3, last)]


@njit(inline="always", **JIT_OPTIONS)
def _sum_quad(base, offsets, n_classes, places, picks, with_entropy, count_above, sums):
    """``short_rows_sums`` of the four rows of ``n_classes`` entries at
    ``offsets`` of ``base`` into columns ``places`` of ``sums``; the pivots
    are read only to be counted against."""
    i0, i1, i2, i3 = places
    s0, s1, s2, s3 = offsets
    if count_above:
        pivots = (widen(base[s0 + np.uint64(picks[i0])]), widen(base[s1 + np.uint64(picks[i1])]),
                  widen(base[s2 + np.uint64(picks[i2])]), widen(base[s3 + np.uint64(picks[i3])]))
    else:
        first = widen(base[s0])
        pivots = first, first, first, first
    results = short_rows_sums(base, offsets, n_classes, with_entropy, count_above, pivots)
    _store_sums(sums, i0, results[0])
    _store_sums(sums, i1, results[1])
    _store_sums(sums, i2, results[2])
    _store_sums(sums, i3, results[3])


@njit(inline="always", **JIT_OPTIONS)
def _store_sums(sums, i, result):
    sums[SHIFT, i], sums[ONES, i], sums[REST, i], sums[MOMENT, i], sums[TOP, i], sums[ABOVE, i] = result


@njit(**JIT_OPTIONS)
def _is_class(t, n_classes):
    """0 <= t < n_classes: the kernels' own guard before any ``row[t]`` or
    ``weight[t]``, whatever the host checks let through (a row costs one
    compare; Numba would otherwise wrap a negative index or read past the end)."""
    return 0 <= t < n_classes


@njit(**JIT_OPTIONS)
def target_group(base, geom, n_classes, scratch, g, size, n_rows, target, ignore_index, readable, read, with_entropy,
                 count_above):
    """``group_stats`` of group ``g`` of rows with class-index targets, reading
    (when ``read``) the rows whose target is neither ``ignore_index`` nor
    outside [0, readable); returns (first row, starts, sums, logs)."""
    first, picks, starts, order, sums, logs = group_scratch(scratch, g, size, n_rows)
    for i in range(picks.size):
        t = target[first + i]
        picks[i] = t if read and t != ignore_index and _is_class(t, readable) else -1
    group_stats(base, geom, n_classes, first, picks, with_entropy, count_above, starts, order, sums, logs)
    return first, starts, sums, logs


@njit(**PARALLEL_JIT_OPTIONS)
def softmax_stats_rows(base, geom, n_classes, with_entropy, lse_out, entropy_out, n_tasks):
    """Per row: logsumexp, and the softmax entropy when ``with_entropy``."""
    size, groups, spans = group_plan(n_classes, lse_out.size, n_tasks)
    for span in prange(spans):
        wide_vectors()  # the loop's body is a function of its own
        scratch = span_scratch(size, n_classes)
        for g in span_groups(span, spans, groups):
            first, picks, starts, order, sums, logs = group_scratch(scratch, g, size, lse_out.size)
            picks[:] = 0
            if with_entropy:  # constant flags from here on (see ``group_stats``)
                group_stats(base, geom, n_classes, first, picks, True, False, starts, order, sums, logs)
            else:
                group_stats(base, geom, n_classes, first, picks, False, False, starts, order, sums, logs)
            for i in range(picks.size):
                lse_out[first + i] = logsumexp_of(logs[LOG_SHIFT, i], logs[LOG_TOTAL, i])
                entropy_out[first + i] = logs[ENTROPY, i]


@njit(**ELEMENTWISE_PARALLEL_JIT_OPTIONS)
def normalize_rows(base, geom, n_classes, exponentiate, out_base, out_geom, in_place, n_tasks):
    """Row r of the output (``(out_base, out_geom)``, writable, any strides)
    = (x_r - c_r) - log s_r (log_softmax), or its exp (softmax), in the row's
    compute type (see ``_normalize``); (c_r, log s_r) from the
    row pass, a group of rows at a time as ``logsumexp`` forms them (short
    rows pay no per-row statistics pass).  Each output element is written once.
    ``in_place``: the output is the input (same memory and layout), and the
    output pass reads it through ``out_base``."""
    step, out_step = geom[0], out_geom[0]
    n_rows = _row_count(out_geom)
    size, groups, spans = group_plan(n_classes, n_rows, n_tasks)
    for span in prange(spans):
        wide_vectors()  # the loop's body is a function of its own
        scratch = span_scratch(size, n_classes)
        for g in span_groups(span, spans, groups):
            first, picks, starts, order, sums, logs = group_scratch(scratch, g, size, n_rows)
            picks[:] = 0
            group_stats(base, geom, n_classes, first, picks, False, False, starts, order, sums, logs)
            for i in range(picks.size):
                shift, log_total = logs[LOG_SHIFT, i], logs[LOG_TOTAL, i]
                start = row_offset(out_geom, first + i)
                # One call per layout: unit strides keep their own (vectorized)
                # compilation, in place one array read and written, instead of
                # sharing the strided one.
                if in_place and out_step == 1:
                    _write_row(out_base, start, n_classes, shift, log_total, exponentiate, out_base, start)
                elif in_place:
                    row = out_base[start:start + (n_classes - 1) * out_step + 1:out_step]
                    _write_row(row, 0, n_classes, shift, log_total, exponentiate, row, 0)
                elif step == 1 and out_step == 1:
                    _write_row(base, starts[i], n_classes, shift, log_total, exponentiate, out_base, start)
                else:
                    _write_row(load_row_at(base, starts[i], step, n_classes), 0, n_classes, shift, log_total,
                               exponentiate, out_base[start:start + (n_classes - 1) * out_step + 1:out_step], 0)


@njit(inline="always", **ELEMENTWISE_JIT_OPTIONS)
def _write_row(src, src_start, n, shift, log_total, exponentiate, dst, dst_start):
    """``write_normalized`` called with a constant flag: a call compiled with the
    flag as a variable took 23 ns for a float32 row of 32 entries where this
    takes 3 (one thread, rows in cache).  In ``normalize_rows`` it saves less
    (65536x100 float32 log_softmax, two threads: 2.97-2.99 -> 2.81-2.87 ms),
    the write of the output being the larger cost there."""
    if exponentiate:
        write_normalized(src, src_start, n, shift, log_total, True, dst, dst_start)
    else:
        write_normalized(src, src_start, n, shift, log_total, False, dst, dst_start)


@njit(**JIT_OPTIONS)
def _row_count(geom):
    """The number of rows a geometry describes (the product of its batch shape)."""
    n = 1
    for d in range(geom[1]):
        n *= geom[2 + d]
    return n


@njit(**ELEMENTWISE_PARALLEL_JIT_OPTIONS)
def class_index_rows(base, geom, n_classes, target, weight, ignore_index, smoothing, input_type,
                     loss_out, weight_out, n_tasks):
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
    step = geom[0]
    size, groups, spans = group_plan(n_classes, loss_out.size, n_tasks)
    for span in prange(spans):
        wide_vectors()  # the loop's body is a function of its own
        scratch = span_scratch(size, n_classes)
        for g in span_groups(span, spans, groups):
            first, starts, sums, logs = target_group(base, geom, n_classes, scratch, g, size, loss_out.size, target,
                                                     ignore_index, readable, input_type == LOGITS, False, False)
            for i in range(starts.size):
                r = first + i
                t = target[r]
                if t == ignore_index:
                    loss_out[r] = 0.0
                    weight_out[r] = 0.0
                    continue
                if not _is_class(t, readable):
                    loss_out[r] = np.nan
                    weight_out[r] = np.nan
                    continue
                shift, log_total = logs[LOG_SHIFT, i], logs[LOG_TOTAL, i]
                w = weight[t]
                loss = -keep * w * log_prob(widen(base[starts[i] + t * step]), shift, log_total, input_type)
                if smoothing > 0.0:
                    row = load_row_at(base, starts[i], step, n_classes)
                    loss -= spread * weighted_log_prob_sum(row, weight, shift, log_total, input_type)
                loss_out[r] = loss
                weight_out[r] = w


@njit(**ELEMENTWISE_PARALLEL_JIT_OPTIONS)
def soft_target_rows(base, geom, n_classes, t_base, t_geom, weight, smoothing, input_type, loss_out, n_tasks):
    """Cross-entropy with class probabilities: loss_r = -sum_c w[c] y'_rc log p_rc."""
    t_step = t_geom[0]
    step = geom[0]
    size, groups, spans = group_plan(n_classes, loss_out.size, n_tasks)
    for span in prange(spans):
        wide_vectors()  # the loop's body is a function of its own
        scratch = span_scratch(size, n_classes)
        for g in span_groups(span, spans, groups):
            first, picks, starts, order, sums, logs = group_scratch(scratch, g, size, loss_out.size)
            picks[:] = 0 if input_type == LOGITS else -1
            group_stats(base, geom, n_classes, first, picks, False, False, starts, order, sums, logs)
            for i in range(picks.size):
                r = first + i
                row = load_row_at(base, starts[i], step, n_classes)
                loss_out[r] = -soft_target_sum(row, t_base, row_offset(t_geom, r), t_step, weight, smoothing,
                                               logs[LOG_SHIFT, i], logs[LOG_TOTAL, i], input_type)


@njit(**ELEMENTWISE_PARALLEL_JIT_OPTIONS)
def metric_rows(base, geom, n_classes, target, ignore_index, loss_out, rank_out, entropy_out,
                confidence_out, n_tasks):
    """Every per-row evaluation metric in one read of the row:

    loss       = -log p_t = -((x_t - c) - log s)     (cross-entropy, nats)
    rank       = #{c : x_c > x_t}                    (0: the target is an argmax; ties favour it)
    entropy    = -sum_c p_c log p_c
    confidence = max_c p_c = exp((max_c x_c - c) - log s)

    with c the row maximum and s = sum_c exp(x_c - c) (see ``_rows.row_sums``).
    Ignored rows are not read and get rank ``IGNORED_ROW``; rows holding a
    NaN, and targets outside [0, C) that reached the kernel (not read), get
    rank ``UNDEFINED_ROW`` and NaN statistics.
    """
    step = geom[0]
    size, groups, spans = group_plan(n_classes, loss_out.size, n_tasks)
    for span in prange(spans):
        wide_vectors()  # the loop's body is a function of its own
        scratch = span_scratch(size, n_classes)
        for g in span_groups(span, spans, groups):
            first, starts, sums, logs = target_group(base, geom, n_classes, scratch, g, size, loss_out.size, target,
                                                     ignore_index, n_classes, True, True, True)
            for i in range(starts.size):
                r = first + i
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
                shift = logs[LOG_SHIFT, i]
                loss_out[r] = -log_softmax_entry(widen(base[starts[i] + t * step]), shift, logs[LOG_TOTAL, i])
                rank_out[r] = np.int64(sums[ABOVE, i]) if shift == shift else UNDEFINED_ROW
                entropy_out[r] = logs[ENTROPY, i]
                confidence_out[r] = logs[CONFIDENCE, i]


@njit(**JIT_OPTIONS)
def _binary_chunk(from_logits, start, stop, length, x_base, x_geom, y_base, y_geom, w_base, w_geom, pw_base,
                  pw_geom, elementwise_out, store):
    """(sum of the losses, count of values outside [0, 1]) of elements [start, stop)
    of the flattened input; see ``_binary``."""
    wide_vectors()
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
        wide_vectors()  # the loop's body is a function of its own
        start = np.int64(c) * BINARY_CHUNK
        stop = min(n_elements, start + BINARY_CHUNK)
        chunk_sum_out[c], bad_out[c] = _binary_chunk(from_logits, start, stop, length, x_base, x_geom, y_base,
                                                     y_geom, w_base, w_geom, pw_base, pw_geom, elementwise_out,
                                                     store)
