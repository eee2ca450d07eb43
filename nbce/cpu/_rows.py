"""Per-row building blocks of the CPU kernels (serial: a row, or a group of rows, per task).

A *row* is the vector of one sample's class scores.  Rows reach these helpers
as contiguous 1-D arrays of float64, float32 or 16-bit words (see
``_bits.widen``), or, four rows of one block at a time, as offsets into one
such array (``short_rows_sums``).  The log-sum-exp is streamed block by block:

    block max  b = max_j x_j                          (integer-key max: vectorizes)
    shift      c = b if b is finite else 0, updated only when b grows
    rescale    s <- s * exp(c_old - c)                (scalar, once per block)
    accumulate s <- s + sum_j exp(x_j - c)            (vector exp)

    logsumexp(x) = c + log(s)

Every result is formed from c and log s kept apart, as (x_j - c) - log s
(``log_softmax_entry``), never as x_j - logsumexp(x): once |c| is large the
sum c + log s absorbs log s (rows [M, M, M] would give log_softmax 0 for
M >= 1e20), while x_j - c is exact near the maximum.  The terms equal to 1
(the entries equal to c) are counted apart from the others, so that
log s = log(ones) + log1p(rest / ones) keeps a tiny confident loss such as
1e-30 instead of rounding 1 + 1e-30 to 1.

Rows longer than ``BLOCK`` are streamed in blocks of ``STREAM_BLOCK``
entries, each block prefetching the lines ``STREAM_AHEAD_BYTES`` ahead.
A block below the running maximum is summed in the same read that finds
its extrema; the first block, and any block that reaches the maximum, is
read a second time from L1 once its maximum is known.

Block sums run in the compute type (float32 for float32 and half inputs) over
at most ``BLOCK`` terms each no larger than 1; blocks are merged in float64,
so the rounding error does not grow with the row length.  -inf entries add
exactly 0, a +inf entry makes the result +inf, a NaN makes it NaN.

A row of one block needs no running maximum (``short_rows_sums``, four such
rows at a time), and the logarithms of a group of rows are taken in one
vector loop (``log_stats_table``).
"""

import numpy as np
from numba import njit

from .._config import ELEMENTWISE_JIT_OPTIONS, JIT_OPTIONS, STREAM_AHEAD_BYTES, STREAM_BLOCK
from ._bits import cast_like, key_to_float, order_key, prefetch, widen
from ._exp import exp_term, exp_term_keeping_nan, vexp
from ._log import log1p_unit, vlog
from ._vectors import wide_vectors

# input_type codes shared with nbce._arrays
LOGITS, LOG_PROBS, PROBS = 0, 1, 2
# PyTorch clamps log-probabilities computed from probabilities at -100.
LOG_CLAMP = -100.0


@njit(**JIT_OPTIONS)
def _block_extrema(block):
    """(max, min) of a block through order keys; a NaN shows as a NaN max or min."""
    high, low, _ = _block_extrema_above(block, False, widen(block[0]))
    return high, low


@njit(**JIT_OPTIONS)
def _block_extrema_above(block, count_above, pivot):
    """``_block_extrema`` and, when ``count_above``, ``_count_above`` in the same
    read of the block: (max, min, number of entries greater than ``pivot``).

    The count is summed in the compute type, as ``_block_sums_split`` counts
    its ones: a float32 vector adds the 0/1 of a float32 comparison in its own
    lanes, where an int64 count widens every comparison (twice as slow as
    counting apart).  It is exact: a block holds at most ``BLOCK`` <= 2**24
    entries, and integers below 2**24 add exactly in float32 in any order.
    """
    wide_vectors()
    first = widen(block[0])
    high = order_key(first)
    low = high
    zero = cast_like(0.0, pivot)
    one = cast_like(1.0, pivot)
    above = zero
    for j in range(block.size):
        x = widen(block[j])
        k = order_key(x)
        high = k if k > high else high
        low = k if k < low else low
        if count_above:  # loop-invariant: LLVM makes two loops of this one
            above += one if x > pivot else zero
    return key_to_float(high, first), key_to_float(low, first), np.int64(above)


@njit(**JIT_OPTIONS)
def _block_sum_exp(block, shift):
    """sum_j exp(x_j - shift) for a block whose maximum is below ``shift``."""
    wide_vectors()
    total = cast_like(0.0, shift)
    for j in range(block.size):
        total += exp_term(widen(block[j]) - shift)
    return total


@njit(**JIT_OPTIONS)
def _block_sum_exp_extrema(block, shift):
    """``_block_sum_exp`` and ``_block_extrema`` in one read of the block.

    The sum is only meaningful when the block's maximum is below ``shift``;
    the caller checks that and otherwise sums again.
    """
    wide_vectors()
    first = widen(block[0])
    high = order_key(first)
    low = high
    total = cast_like(0.0, shift)
    for j in range(block.size):
        x = widen(block[j])
        k = order_key(x)
        high = k if k > high else high
        low = k if k < low else low
        total += exp_term(x - shift)
    return total, key_to_float(high, first), key_to_float(low, first)


@njit(**JIT_OPTIONS)
def _block_sums_moment_extrema(block, shift, count_above, pivot):
    """``_block_sum_exp``, the entropy moment sum_j e_j d_j (see
    ``_block_sums_split``) and ``_block_extrema_above`` in one read of the
    block: (sum, moment, max, min, above).

    The sums are only meaningful when the block's maximum is below ``shift``;
    the caller checks that and otherwise sums again.
    """
    wide_vectors()
    first = widen(block[0])
    high = order_key(first)
    low = high
    zero = cast_like(0.0, shift)
    one = cast_like(1.0, shift)
    total = zero
    moment = zero
    above = zero  # counted in the compute type, see _block_extrema_above
    for j in range(block.size):
        x = widen(block[j])
        k = order_key(x)
        high = k if k > high else high
        low = k if k < low else low
        d = x - shift
        e = exp_term(d)
        total += e
        moment += e * d if e > zero else zero
        if count_above:  # loop-invariant: LLVM makes two loops of this one
            above += one if x > pivot else zero
    return total, moment, key_to_float(high, first), key_to_float(low, first), np.int64(above)


@njit(**JIT_OPTIONS)
def _block_sums_split(block, shift, with_moment):
    """For a block that reaches the row maximum ``shift``: sum_j exp(x_j - shift)
    as (count of terms equal to 1, sum of the others), and, ``with_moment``,
    the entropy moment sum_j e_j d_j with d_j = x_j - shift (0 * -inf = 0).

    The terms exp(0) = 1 are counted, not added: a float32 sum holding a 1
    keeps only ~1e-7 of the rest, and for a confident prediction that rest
    *is* the loss (log(1 + rest) ~ rest).
    """
    wide_vectors()
    zero = cast_like(0.0, shift)
    one = cast_like(1.0, shift)
    rest = zero
    ones = zero
    moment = zero
    for j in range(block.size):
        d = widen(block[j]) - shift
        e = exp_term(d)
        rest += e if d != zero else zero
        ones += one if d == zero else zero
        if with_moment:  # loop-invariant: LLVM makes two loops of this one
            moment += e * d if e > zero else zero
    return ones, rest, moment


@njit(**JIT_OPTIONS)
def _count_above(block, pivot):
    """Number of entries strictly greater than ``pivot`` (compare-and-add: vectorizes)."""
    wide_vectors()
    n = 0
    for j in range(block.size):
        n += 1 if widen(block[j]) > pivot else 0
    return n


# Rows of one block are summed ROWS_AT_ONCE at a time: a row of a few hundred
# entries is too short for one row's loops to fill the vector units (each
# pass ends in a chain of horizontal reductions, a scalar tail and the next
# pass waiting for them), while four rows in the same loops give four
# independent chains: 65536×100 float32 logsumexp took 73 ns a row one at a
# time, about 30 four at a time (one thread).  Each row keeps its own
# accumulators, so its sums do not depend on the rows beside it; a group's
# last rows fill the remaining places with copies of a row.
ROWS_AT_ONCE = 4


@njit(inline="always", **JIT_OPTIONS)  # a call per entry would keep the loop scalar
def _max_step(x, state, pivot, count_above, one, zero):
    """One entry of a short row's first pass: state = (max key, count above
    the pivot), as ``_block_extrema_above`` without the minimum (see
    ``_finish_row`` for how a NaN is found without it)."""
    high, above = state
    k = order_key(x)
    high = k if k > high else high
    if count_above:
        above += one if x > pivot else zero
    return high, above


@njit(inline="always", **JIT_OPTIONS)  # a call per entry would keep the loop scalar
def _sums_step(x, state, shift, with_moment, one, zero):
    """One entry of ``_block_sums_split`` for one row: state = (ones, rest, moment);
    a NaN entry makes ``rest`` NaN (see ``_finish_row``)."""
    ones, rest, moment = state
    d = x - shift
    e = exp_term_keeping_nan(d)
    rest += e if d != zero else zero
    ones += one if d == zero else zero
    if with_moment:
        moment += e * d if e > zero else zero
    return ones, rest, moment


@njit(inline="always", **JIT_OPTIONS)  # a call per entry would keep the loop scalar
def _row_start(x, zero):
    return order_key(x), zero


@njit(**JIT_OPTIONS)
def _holds_nan(base, start, n):
    """Whether base[start:start + n] holds a NaN (a scalar loop: rows holding +inf only)."""
    for j in range(np.uint64(n)):
        x = widen(base[start + j])
        if x != x:
            return True
    return False


@njit(**JIT_OPTIONS)
def _finish_row(extrema, split, shift, like, base, start, n):
    """``row_sums``' result for the row of ``n`` entries at base[start:] from
    its two passes' states.

    The first pass keeps no minimum: a NaN shows either in the maximum (a
    NaN with the sign bit clear sorts above +inf) or, below a maximum that is
    not +inf, in ``rest`` (``exp_term_keeping_nan`` passes a NaN on, and
    d = x - c is NaN, not 0).  Only a row holding +inf, whose sums mean nothing, is read
    once more for a NaN.  Keeping the minimum cost 10 % of a row of 32
    float32 entries.
    """
    high, above = extrema
    top = key_to_float(high, like)
    ones, rest, moment = split
    nan = (top != top) | ((rest != rest) & (top != np.inf))
    if top == np.inf:  # rare
        nan = _holds_nan(base, start, n)
    # Selects rather than a branch on `nan`: four rows are finished together.
    return (np.nan if nan else np.float64(shift), np.nan if nan else np.float64(ones),
            np.nan if nan else np.float64(rest), np.nan if nan else np.float64(moment),
            np.nan if nan else np.float64(top), np.int64(0) if nan else np.int64(above))


@njit(**JIT_OPTIONS)
def _shift_of(extrema, like):
    """The shift c of a row from its extrema: its maximum, or 0 when that is not finite."""
    top = key_to_float(extrema[0], like)
    return top if np.isfinite(top) else cast_like(0.0, like)


@njit(inline="always", **JIT_OPTIONS)  # see the docstring
def short_rows_sums(base, starts, n, with_entropy, count_above, pivots):
    """``row_sums`` of ROWS_AT_ONCE rows of one block each, of ``n`` entries
    at base[starts[k] + j] (``starts`` a tuple of four unsigned offsets;
    ``pivots`` a tuple of their pivots): a tuple of their
    (c, ones, rest, moment, max, above).

    One row needs no running maximum and no rescale: a first pass finds its
    maximum (and counts the entries above its pivot), a second forms
    ones + rest = sum_j exp(x_j - c) (and the entropy moment) against
    c = max_j x_j, as ``_block_extrema_above`` and ``_block_sums_split`` do,
    for the four rows in the same loops.  Call it with constant flags
    (``kernels._one_block_rows``): loop-invariant flags left to LLVM keep
    these loops scalar, ten times slower.

    The rows are offsets into one array rather than four views of it, and the
    function is inlined into its caller: a view, and an array passed to a
    call, cost an atomic reference count up and down each (with the rows of
    up to 48 entries, formerly read as columns, now read here too: 65536×100
    float32 cross_entropy on one thread 3.6 -> 3.1 ms, 204800×32 8.5 ->
    6.0 ms).  The offsets and the index are unsigned, so that Numba adds no
    negative-index wraparound to the loads (with signed offsets these loops
    measured two to five times slower).
    """
    a, b, c, d = starts
    like = widen(base[a])
    zero = cast_like(0.0, like)
    one = cast_like(1.0, like)
    pa, pb, pc, pd = pivots
    ea, eb = _row_start(widen(base[a]), zero), _row_start(widen(base[b]), zero)
    ec, ed = _row_start(widen(base[c]), zero), _row_start(widen(base[d]), zero)
    for j in range(np.uint64(n)):
        ea = _max_step(widen(base[a + j]), ea, pa, count_above, one, zero)
        eb = _max_step(widen(base[b + j]), eb, pb, count_above, one, zero)
        ec = _max_step(widen(base[c + j]), ec, pc, count_above, one, zero)
        ed = _max_step(widen(base[d + j]), ed, pd, count_above, one, zero)
    ca, cb, cc, cd = _shift_of(ea, like), _shift_of(eb, like), _shift_of(ec, like), _shift_of(ed, like)
    sa = sb = sc = sd = (zero, zero, zero)
    for j in range(np.uint64(n)):
        sa = _sums_step(widen(base[a + j]), sa, ca, with_entropy, one, zero)
        sb = _sums_step(widen(base[b + j]), sb, cb, with_entropy, one, zero)
        sc = _sums_step(widen(base[c + j]), sc, cc, with_entropy, one, zero)
        sd = _sums_step(widen(base[d + j]), sd, cd, with_entropy, one, zero)
    return (_finish_row(ea, sa, ca, like, base, a, n), _finish_row(eb, sb, cb, like, base, b, n),
            _finish_row(ec, sc, cc, like, base, c, n), _finish_row(ed, sd, cd, like, base, d, n))


@njit(**JIT_OPTIONS)
def row_sums(row, with_entropy, count_above, pivot):
    """Stream one row: return (c, ones, rest, moment, max, above) as float64
    sums, where c is the row maximum (0 when it is -inf) and
    s = sum_j exp(x_j - c) = ones + rest, ``ones`` counting the terms equal to 1.

    ``moment`` = t = sum_j e_j (x_j - c), the entropy's, is only accumulated
    (and only meaningful) when ``with_entropy``.  ``above`` counts the entries
    strictly greater than ``pivot`` (in the row's compute type) when
    ``count_above``; each block is counted while it is still in L1, so the row
    is read from memory once.  A NaN anywhere gives a NaN max (and NaN
    everything else, above 0); a +inf gives a +inf max.  The logarithms are
    left to the caller (``log_stats_table``, over a group's rows).
    """
    wide_vectors()
    shift = 0.0
    running_max = -np.inf
    ones = 0.0  # terms exp(x_j - c) equal to 1, counted exactly
    rest = 0.0  # the other terms
    moment = 0.0
    above = 0
    line = 64 // row.itemsize  # entries a cache line
    ahead = STREAM_AHEAD_BYTES // row.itemsize
    for lo in range(0, row.size, STREAM_BLOCK):
        # The lines of the block read STREAM_AHEAD_BYTES from here, asked for
        # now (see ``_config``): the read overlaps this block's arithmetic.
        for j in range(lo + ahead, min(lo + ahead + STREAM_BLOCK, row.size), line):
            prefetch(row, j)
        # Index loops from 0 over a slice: a loop from `lo` makes numba
        # guard every index against wraparound, which defeats vectorization.
        block = row[lo:lo + STREAM_BLOCK]
        finite = -np.inf < running_max < np.inf
        if finite:
            # Common case first: one read that sums (and forms the entropy's
            # moment) against the current maximum, counts and finds the
            # block's extrema; only a block reaching the maximum is summed
            # again below.
            shift_like = cast_like(shift, widen(block[0]))
            if with_entropy:
                s, t, block_max, block_min, n = _block_sums_moment_extrema(block, shift_like, count_above, pivot)
            else:
                n = _count_above(block, pivot) if count_above else 0
                s, block_max, block_min = _block_sum_exp_extrema(block, shift_like)
                t = cast_like(0.0, s)
        else:
            s = t = cast_like(0.0, widen(block[0]))
            if count_above:  # the count rides along with the extrema: one read of the block fewer
                block_max, block_min, n = _block_extrema_above(block, True, pivot)
            else:
                block_max, block_min = _block_extrema(block)
                n = 0
        if block_max != block_max or block_min != block_min:
            return np.nan, np.nan, np.nan, np.nan, np.nan, 0
        above += n
        if finite and np.float64(block_max) < running_max:
            rest += np.float64(s)
            moment += np.float64(t)
            continue
        new_max = np.float64(block_max)
        if new_max > running_max:
            new_shift = new_max if np.isfinite(new_max) else 0.0
            total = ones + rest
            if total != 0.0:
                delta = shift - new_shift
                scale = np.exp(delta)
                # The terms scaled to 0 take their moment with them: total *
                # delta alone can overflow to -inf (float64 rows spanning
                # -1.8e308 .. 1.8e308), and 0 * -inf would be NaN.
                moment = scale * moment + (total * scale) * delta if scale > 0.0 else 0.0
                rest = total * scale
                ones = 0.0
            running_max = new_max
            shift = new_shift
        block_shift = cast_like(shift, block_max)
        if with_entropy or new_max == running_max:
            block_ones, block_rest, t = _block_sums_split(block, block_shift, with_entropy)
            ones += np.float64(block_ones)
            rest += np.float64(block_rest)
            moment += np.float64(t)
        else:
            rest += np.float64(_block_sum_exp(block, block_shift))
    return shift, ones, rest, moment, running_max, above


# The statistics of a group of rows, one column per row: the sums of
# ``row_sums`` in one table, what ``log_stats_table`` forms from them in another
# (a loop that reads one array and writes another vectorizes; one that reads
# and writes rows of the same array would need LLVM to prove them apart).
SHIFT, ONES, REST, MOMENT, TOP, ABOVE = range(6)
N_SUMS = 6
LOG_SHIFT, LOG_TOTAL, ENTROPY, CONFIDENCE = range(4)
N_LOGS = 4


@njit(**ELEMENTWISE_JIT_OPTIONS)
def log_softmax_entry(value, shift, log_total):
    """log p_j = (x_j - c) - log s, in this order.

    Compiled without reassociation, on purpose: in a fast-math caller LLVM
    could otherwise rewrite it as x_j - (c + log s), the very cancellation
    this order avoids.  A +inf row (c = +inf, log s = NaN) and an all -inf
    row (log s = -inf) give NaN everywhere, as in PyTorch.
    """
    return (np.float64(value) - shift) - log_total


@njit(inline="always", **ELEMENTWISE_JIT_OPTIONS)  # inlined by Numba: too large for LLVM's inliner, and
def log_sum(ones, rest):                          # a call in a loop would keep the loop scalar
    """log s for s = ones + rest (``ones`` the count of unit terms, at least 1):
    log(ones) + log1p(rest / ones) while rest / ones <= 1, which keeps a rest
    of 1e-30 beside a 1; log(ones + rest) above, where the sum rounds as little
    as its parts.  Branch-free, so a loop over rows becomes vector code: one
    logarithm and one log1p whichever applies, as log(ones + rest) + log1p(0)
    above (log1p(0) is exactly 0).  ones = rest = 0 (every entry -inf) gives -inf.
    """
    ratio = rest / ones
    small = ratio <= 1.0
    return vlog(ones if small else ones + rest) + log1p_unit(ratio if small else 0.0)


# The table's columns are formed TABLE_STEP at a time, in a loop of that
# constant length: LLVM makes it whole vectors with no scalar remainder, so a
# row's figures do not depend on its place among the columns or on how many
# there are (a multiple of TABLE_STEP, or one for a group of one long row).
TABLE_STEP = 16


@njit(**ELEMENTWISE_JIT_OPTIONS)
def log_stats_table(sums, logs, count, with_entropy):
    """(c, log s, entropy, confidence) for the first ``count`` columns of
    ``sums`` (filled by ``row_sums``) into ``logs``, the entropy and the
    confidence only ``with_entropy`` (a constant: see ``kernels.group_stats``):

        log s = log(ones) + log1p(rest / ones)   (see ``log_sum``),   entropy = log s - t / s,

    with the vectorizable ``vlog``,
    ``log1p_unit`` and ``vexp`` instead of libm: one vector loop over the rows
    of a group replaces a libm log, log1p and exp per row.  Writes c (+inf
    for a row holding +inf), log s, the entropy and the confidence
    exp((max - c) - log s).  A NaN row gives NaN throughout; a +inf row
    (c, log s) = (inf, nan): every log-probability of such a row is NaN, as in
    PyTorch, while its logsumexp is +inf; an all -inf row gives log s = -inf.
    ``count`` is a multiple of TABLE_STEP, or 1.
    """
    wide_vectors()
    if count % TABLE_STEP:  # one long row: a view per table row would cost more than the row's logarithms
        for i in range(count):
            (logs[LOG_SHIFT, i], logs[LOG_TOTAL, i], logs[ENTROPY, i],
             logs[CONFIDENCE, i]) = _log_stats_entry(sums[SHIFT, i], sums[ONES, i], sums[REST, i],
                                                     sums[MOMENT, i], sums[TOP, i], with_entropy)
        return
    for start in range(0, count, TABLE_STEP):
        # Views of the tables' rows indexed from 0: an index start + k would
        # be guarded against wraparound, which keeps the loop scalar.
        stop = start + TABLE_STEP
        shifts, ones, rest, moment, top = (sums[SHIFT, start:stop], sums[ONES, start:stop], sums[REST, start:stop],
                                           sums[MOMENT, start:stop], sums[TOP, start:stop])
        log_shift, log_total, entropy, confidence = (logs[LOG_SHIFT, start:stop], logs[LOG_TOTAL, start:stop],
                                                     logs[ENTROPY, start:stop], logs[CONFIDENCE, start:stop])
        for k in range(TABLE_STEP):
            log_shift[k], log_total[k], entropy[k], confidence[k] = _log_stats_entry(shifts[k], ones[k], rest[k],
                                                                                     moment[k], top[k], with_entropy)


@njit(inline="always", **ELEMENTWISE_JIT_OPTIONS)  # a call per column would keep the loop scalar
def _log_stats_entry(shift, ones, rest, moment, top, with_entropy):
    """One column of ``log_stats_table``: (c, log s, entropy, confidence), the
    last two NaN unless ``with_entropy``."""
    log_total = log_sum(ones, rest)
    infinite = top == np.inf
    log_total = np.nan if infinite else log_total
    shift = np.inf if infinite else shift
    if not with_entropy:
        return shift, log_total, np.nan, np.nan
    return shift, log_total, log_total - moment / (ones + rest), vexp(log_softmax_entry(top, shift, log_total))


@njit(**JIT_OPTIONS)
def logsumexp_of(shift, log_total):
    """logsumexp = c + log s; a row holding +inf (c = +inf, log s = NaN) gives +inf."""
    return shift if shift == np.inf else shift + log_total


@njit(**JIT_OPTIONS)
def log_prob(value, shift, log_total, input_type):
    """log p of one entry, given its row's (c, log s) (read for logits only)."""
    x = np.float64(value)
    if input_type == LOGITS:
        return log_softmax_entry(x, shift, log_total)
    if input_type == LOG_PROBS:
        return x
    lp = np.log(x)
    return LOG_CLAMP if lp < LOG_CLAMP else lp  # NaN stays NaN


@njit(**JIT_OPTIONS)
def weighted_log_prob_sum(row, coef, shift, log_total, input_type):
    """sum_j coef[j] * log p_j; terms with coef[j] == 0 contribute 0 (0 * log 0 = 0)."""
    wide_vectors()
    total = 0.0
    for j in range(row.size):
        c = coef[j]
        if c != 0.0:
            total += c * log_prob(widen(row[j]), shift, log_total, input_type)
    return total


@njit(**JIT_OPTIONS)
def soft_target_sum(row, target, t_offset, t_step, weight, smoothing, shift, log_total, input_type):
    """sum_j w_j y'_j log p_j with y'_j = (1 - eps) y_j + eps / C; zero coefficients add 0."""
    wide_vectors()
    n = row.size
    uniform = smoothing / n
    keep = 1.0 - smoothing
    total = 0.0
    for j in range(n):
        c = weight[j] * (keep * np.float64(widen(target[t_offset + j * t_step])) + uniform)
        if c != 0.0:
            total += c * log_prob(widen(row[j]), shift, log_total, input_type)
    return total
