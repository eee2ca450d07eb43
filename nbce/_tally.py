"""Fold per-row metrics into an evaluation's exact sums (host code, both backends).

The backends' metric kernels give, per row, (loss, rank, entropy,
confidence); ``tally`` adds them, weighted, to the exact accumulators of
``nbce._exact`` laid out by ``Layout``, and counts rows in ``counts``.
"""

from dataclasses import dataclass

import numpy as np
from numba import njit, prange, set_parallel_chunksize

from ._exact import (JIT_NO_NRT, RUN, UNIT_CUTS, UNIT_RUN, add, add_in_run, add_integer, add_many, add_product, end_run,
                     unit_pieces)
from ._threads import launches

# Rank codes of rows without a rank, written by the metric kernels.
IGNORED_ROW, UNDEFINED_ROW = -1, -2

# counts[...]: rows scored, rows ignored, rows holding a NaN (no rank), rows with a NaN confidence
ROWS, IGNORED, UNDEFINED, UNCALIBRATED = range(4)
N_COUNTS = 4

# Accumulators before the top-k ones: sum w, sum w*loss, sum w*entropy
WEIGHT, LOSS, ENTROPY = range(3)
_FIRST_TOP_K = 3
# Per calibration bin: sum w, sum w*confidence, sum w*[rank == 0]
BIN_WEIGHT, BIN_CONFIDENCE, BIN_CORRECT = range(3)
_PER_BIN = 3
# Then, last (states pickled before it existed end at the bins): sum w*loss**2,
# for the standard error of the loss.  The accuracies need no such sum: the
# square of a 0/1 indicator is itself.


@dataclass(frozen=True)
class Layout:
    """Where each exact sum lives for ``n_top_k`` top-k values and ``n_bins`` bins."""

    n_top_k: int
    n_bins: int

    def top_k(self, i):
        return _FIRST_TOP_K + i

    def bin(self, b, field):
        return _FIRST_TOP_K + self.n_top_k + _PER_BIN * b + field

    @property
    def loss_squares(self):
        return _FIRST_TOP_K + self.n_top_k + _PER_BIN * self.n_bins

    @property
    def size(self):
        return self.loss_squares + 1


@njit(**JIT_NO_NRT)
def calibration_bin(confidence, edges):
    """The bin b with edges[b] < confidence <= edges[b + 1] (confidence 0 goes to
    bin 0, one above 1 to the last), for the ``calibration_edges`` of fewer
    than 2**50 bins.

    A first guess from ``confidence * n_bins`` is corrected against the very
    edges the reference uses, so the rounding of the product cannot move a
    value that lies exactly on an edge.  One step each way is enough: the
    edges lie within 2**-52 of b / n_bins and the product within
    n_bins * 2**-53 of its exact value, so the guess is off by at most one
    bin.  The steps are selects, not branches (whether a confidence lies just
    below or above its guess is a coin toss that a branch would mispredict),
    and the two edges are formed as ``calibration_edges`` forms them, not
    loaded: a loop over rows then is vector code (65536 rows: 0.35 ms with
    branches, 0.15 with selects and loads, 0.03 so).  After a step down the
    upper edge is not passed, so both steps test the guess's edges.
    """
    n_bins = edges.size - 1
    step = edges[1]  # = 1 / n_bins, rounded
    b = min(max(int(min(confidence, 1.0) * n_bins), 0), n_bins - 1)
    lower = b * step
    upper = (b + 1) * step if b + 1 < n_bins else 1.0
    b = b - 1 if (b > 0) & (confidence <= lower) else b
    return b + 1 if (b < n_bins - 1) & (confidence > upper) else b


# Rows from which ``tally`` runs its jobs (below) on several threads: a
# parallel launch costs microseconds, a row's additions nanoseconds.
PARALLEL_ROWS = 4096


@njit(**JIT_NO_NRT)
def _count_rows(rank, confidence, counts):
    """counts[...] += rows scored, ignored, without a rank, without a confidence."""
    # Counted in locals: an addition to counts[...] per row is a load and a
    # store that the next row's addition waits for.
    ignored = undefined = uncalibrated = 0
    for r in range(rank.size):
        k_rank = rank[r]
        ignored += 1 if k_rank == IGNORED_ROW else 0
        undefined += 1 if k_rank == UNDEFINED_ROW else 0
        c = confidence[r]
        uncalibrated += 1 if (k_rank >= 0) & (c != c) else 0
    counts[ROWS] += rank.size - ignored
    counts[IGNORED] += ignored
    counts[UNDEFINED] += undefined
    counts[UNCALIBRATED] += uncalibrated


@njit(**JIT_NO_NRT)
def _add_row_sums(i, loss, rank, entropy, weight, partials, used, special):
    """Accumulator ``i`` (LOSS, ENTROPY or the squares) over the rows scored:
    sum w*loss, sum w*entropy or sum w*loss**2 (each square rounded once)."""
    values = entropy if i == ENTROPY else loss
    square = i != LOSS and i != ENTROPY
    if weight.size == 0:
        add_many(partials, used, special, i, values, square, rank, IGNORED_ROW)
        return
    for r in range(rank.size):
        if rank[r] == IGNORED_ROW:
            continue
        v = values[r] * values[r] if square else values[r]
        add_product(partials, used, special, i, weight[r], v)


@njit(**JIT_NO_NRT)
def _add_weights(i, lowest, below, rank, weight, partials, used, special):
    """Accumulator ``i``: sum w over the rows not ignored with lowest <= rank < below.

    Unit weights (``weight`` empty) sum to the number of those rows, added
    once: the same exact sum as one addition of 1 per row, for a fraction of
    the work (a count below 2**53 is a float64).
    """
    weighted = weight.size > 0
    n = 0
    for r in range(rank.size):
        k_rank = rank[r]
        if k_rank == IGNORED_ROW or not lowest <= k_rank < below:
            continue
        if weighted:
            add(partials, used, special, i, weight[r])
        else:
            n += 1
    if n > 0:
        add(partials, used, special, i, np.float64(n))


@njit(**JIT_NO_NRT)
def _row_bin(rank, confidence, edges, r):
    """The calibration bin of row r's confidence, or -1 for a row without a
    rank or whose confidence is NaN (rows the bins leave out)."""
    c = confidence[r]
    return calibration_bin(c, edges) if rank[r] >= 0 and c == c else -1


@njit(**JIT_NO_NRT)
def _row_bins(rank, confidence, edges, row_bin):
    """row_bin[r] = ``_row_bin``: found once for the three bin fields."""
    for r in range(rank.size):
        row_bin[r] = _row_bin(rank, confidence, edges, r)


@njit(**JIT_NO_NRT)
def _add_bin_field(field, first_bin, rank, confidence, weight, row_bin, bin_table, partials, used, special):
    """``field`` (BIN_WEIGHT, BIN_CONFIDENCE or BIN_CORRECT) of every calibration bin:
    sum w, sum w*confidence or sum w*[rank == 0] over the rows ranked whose
    confidence is a number, each in its confidence's bin (``_row_bins``).
    With unit weights the job of BIN_CONFIDENCE forms all three
    (``_add_unit_bins``), and the other two jobs have nothing to do."""
    if weight.size == 0:
        if field == BIN_CONFIDENCE:
            _add_unit_bins(first_bin, rank, confidence, row_bin, bin_table, partials, used, special)
        return
    for r in range(rank.size):
        b = row_bin[r]
        if b < 0 or (field == BIN_CORRECT and rank[r] != 0):
            continue
        at = first_bin + _PER_BIN * b + field
        if field == BIN_CONFIDENCE:
            add_product(partials, used, special, at, weight[r], confidence[r])
        else:
            add(partials, used, special, at, weight[r])


@njit(**JIT_NO_NRT)
def _add_unit_bins(first_bin, rank, confidence, row_bin, table, partials, used, special):
    """The three fields of every bin with unit weights, in one pass over the
    rows: rows and rows ranked 0 counted per bin (into table[COPIES]) and
    each count added once at the end; the confidences, where each is a
    fixed-point pair (``_fits_unit_pieces``), summed per bin as integers
    (``_add_unit_pieces``), else added one by one
    (``_add_confidences_in_runs``).  Either way the sums are those of one
    exact addition per row.  ``table``: zeros, shape (COPIES + 1, bins,
    TABLE_FIELDS)."""
    if _fits_unit_pieces(confidence, row_bin):
        _add_unit_pieces(first_bin, rank, confidence, row_bin, table, partials, used)
    else:
        _add_confidences_in_runs(first_bin, rank, confidence, row_bin, table[COPIES], partials, used, special)
    counts = table[COPIES]
    for b in range(counts.shape[0]):
        if counts[b, _TABLE_ROWS] > 0:
            add(partials, used, special, first_bin + _PER_BIN * b + BIN_WEIGHT, np.float64(counts[b, _TABLE_ROWS]))
        if counts[b, _TABLE_CORRECT] > 0:
            add(partials, used, special, first_bin + _PER_BIN * b + BIN_CORRECT,
                np.float64(counts[b, _TABLE_CORRECT]))


@njit(**JIT_NO_NRT)
def _fits_unit_pieces(confidence, row_bin):
    """Whether every binned confidence lies in [0, 2) with no bits below
    ``unit_pieces``' (a loop of selects: vector code, 18 us for 65536 rows)."""
    odd = 0
    for r in range(row_bin.size):
        c = confidence[r]
        inside = (c >= 0.0) & (c < 2.0)
        rest = unit_pieces(c if inside else 0.0)[2]
        odd += (row_bin[r] >= 0) & ((not inside) | (rest != 0.0))
    return odd == 0


@njit(**JIT_NO_NRT)
def _add_confidences_in_runs(first_bin, rank, confidence, row_bin, counts, partials, used, special):
    """Each binned confidence added to its bin as part of a run of ``add_in_run``
    (each run counted once in every bin it reached), the rows and rows
    ranked 0 counted in ``counts`` (bins, TABLE_FIELDS)."""
    for start in range(0, row_bin.size, RUN):
        for r in range(start, min(start + RUN, row_bin.size)):
            b = row_bin[r]
            if b >= 0:
                add_in_run(partials, special, first_bin + _PER_BIN * b + BIN_CONFIDENCE, confidence[r])
                counts[b, _TABLE_IN_RUN] += 1
                counts[b, _TABLE_CORRECT] += rank[r] == 0
        for b in range(counts.shape[0]):
            if counts[b, _TABLE_IN_RUN] > 0:
                end_run(partials, used, first_bin + _PER_BIN * b + BIN_CONFIDENCE)
                counts[b, _TABLE_ROWS] += counts[b, _TABLE_IN_RUN]
                counts[b, _TABLE_IN_RUN] = 0


# ``_add_unit_pieces`` spreads consecutive rows over COPIES tables (row r
# adds to table r % COPIES): rows of one bin then do not wait for each
# other's additions to the same entries, a chain of load, add and store per
# row.  65536 rows, confidences in a few bins: 168 us with one exact addition
# per row (``_add_confidences_in_runs``), 93 so (75 for the loop, 18 for
# ``_fits_unit_pieces``).
COPIES = 4
# Fields of a bin: in table[COPIES], rows and rows ranked 0 (and scratch);
# in the COPIES tables, rows + 2**32 * rows ranked 0 and the confidences'
# pieces.
_TABLE_ROWS, _TABLE_CORRECT, _TABLE_IN_RUN = 0, 1, 2
_TABLE_COUNTS, _TABLE_PIECES = 0, 1
TABLE_FIELDS = 3


@njit(**JIT_NO_NRT)
def _add_unit_pieces(first_bin, rank, confidence, row_bin, table, partials, used):
    """Per bin, the confidences' ``unit_pieces`` summed in int64 in the COPIES
    tables of ``table``, each sum added to the bin's accumulator
    (``add_integer``) every UNIT_RUN rows, counted as one addition
    (``end_run``); the rows and rows ranked 0 into table[COPIES].  The
    caller checked ``_fits_unit_pieces``."""
    n_bins = table.shape[1]
    flat = table.reshape(-1)  # an unsigned index into one array: no wraparound test per addition
    for start in range(0, row_bin.size, UNIT_RUN):
        # Views indexed from 0: an index from ``start`` would be tested for
        # wraparound at every load (65 -> 110 us for 65536 rows).
        bins, ranks, values = (row_bin[start:start + UNIT_RUN], rank[start:start + UNIT_RUN],
                               confidence[start:start + UNIT_RUN])
        for r in range(bins.size):
            b = bins[r]
            if b < 0:
                continue
            at = np.uint64(((r % COPIES) * n_bins + b) * TABLE_FIELDS)
            high, low, _ = unit_pieces(values[r])
            flat[at + np.uint64(_TABLE_COUNTS)] += 1 + (np.int64(ranks[r] == 0) << 32)  # < 2**32 rows a run
            flat[at + np.uint64(_TABLE_PIECES)] += high
            flat[at + np.uint64(_TABLE_PIECES + 1)] += low
        for b in range(n_bins):
            counted = high = low = 0
            for k in range(COPIES):
                counted += table[k, b, _TABLE_COUNTS]
                high += table[k, b, _TABLE_PIECES]  # below 2**62: UNIT_RUN rows' pieces in all
                low += table[k, b, _TABLE_PIECES + 1]
                table[k, b, :] = 0
            if counted == 0:
                continue
            at = first_bin + _PER_BIN * b + BIN_CONFIDENCE
            add_integer(partials, at, high, UNIT_CUTS[0])
            add_integer(partials, at, low, UNIT_CUTS[1])
            end_run(partials, used, at)  # each bin changed by at most 2**31
            table[COPIES, b, _TABLE_ROWS] += counted & 0xFFFFFFFF
            table[COPIES, b, _TABLE_CORRECT] += counted >> 32


@njit(**JIT_NO_NRT)
def _tally_job(job, loss, rank, entropy, confidence, weight, top_k, row_bin, bin_table, partials, used, special,
               counts):
    """Job ``job`` of ``tally``: every addition to one accumulator (or one field
    of every bin, or the counts), rows in order.  Jobs share no accumulator,
    so they run at once; with weights each accumulator receives the very
    additions, in the very order, of a row-by-row loop."""
    n_top_k = top_k.size
    first_bin = _FIRST_TOP_K + n_top_k
    squares = first_bin + _PER_BIN * bin_table.shape[1]
    if job == WEIGHT:
        _add_weights(job, UNDEFINED_ROW, np.iinfo(np.int64).max, rank, weight, partials, used, special)
    elif job < _FIRST_TOP_K:
        _add_row_sums(job, loss, rank, entropy, weight, partials, used, special)
    elif job < first_bin:
        _add_weights(job, 0, top_k[job - _FIRST_TOP_K], rank, weight, partials, used, special)
    elif job < first_bin + _PER_BIN:
        field = job - first_bin
        _add_bin_field(field, first_bin, rank, confidence, weight, row_bin, bin_table, partials, used, special)
    elif job == first_bin + _PER_BIN:
        _add_row_sums(squares, loss, rank, entropy, weight, partials, used, special)
    else:
        _count_rows(rank, confidence, counts)


@njit(**JIT_NO_NRT)
def _n_jobs(top_k):
    """The row sums, one job per k, one per bin field, the squares and the counts."""
    return _FIRST_TOP_K + top_k.size + _PER_BIN + 2


@njit(**JIT_NO_NRT)
def _tally_serial(loss, rank, entropy, confidence, weight, top_k, row_bin, bin_table, partials, used, special,
                 counts):
    for job in range(_n_jobs(top_k)):
        _tally_job(job, loss, rank, entropy, confidence, weight, top_k, row_bin, bin_table, partials, used, special,
                   counts)


@njit(**dict(JIT_NO_NRT, parallel=True))
def _tally_parallel(loss, rank, entropy, confidence, weight, top_k, row_bin, bin_table, partials, own, special,
                    counts):
    """``_tally_serial``'s jobs on several threads, job j counting additions in own[j]."""
    for job in prange(_n_jobs(top_k)):
        _tally_job(job, loss, rank, entropy, confidence, weight, top_k, row_bin, bin_table, partials, own[job],
                   special, counts)


def _private_counts(used, n_jobs):
    """One copy of the pending-addition counts ``used`` per job, rows apart by
    at least a cache line (64 bytes)."""
    own = np.zeros((n_jobs, (used.size + 15) // 8 * 8), dtype=used.dtype)
    own[:, :used.size] = used
    return own


@launches
def tally(loss, rank, entropy, confidence, weight, top_k, edges, partials, used, special, counts):
    """Add one chunk of per-row metrics (weights ``weight``, or 1 when empty) to the sums.

    sum w, sum w*loss, sum w*entropy and sum w*loss**2 (each square rounded
    once, the sum exact) over the rows scored; per k, sum w over rows with
    rank < k; per confidence bin, sum w, sum w*confidence and sum w over rows
    whose target is the argmax.

    The additions run as independent jobs (``_tally_job``), on several
    threads for chunks of at least ``PARALLEL_ROWS`` rows; unit weights are
    counted and each count added once.  The sums are exact either way: the
    figures do not depend on how they were added.
    """
    bin_table = np.zeros((COPIES + 1, edges.size - 1, TABLE_FIELDS), dtype=np.int64)  # the jobs allocate nothing
    row_bin = np.empty(rank.size, dtype=np.int64)
    _row_bins(rank, confidence, edges, row_bin)  # vector code (0.04 ms for 65536 rows): not worth a launch on threads
    if rank.size < PARALLEL_ROWS:
        _tally_serial(loss, rank, entropy, confidence, weight, top_k, row_bin, bin_table, partials, used, special,
                      counts)
        return
    # Each job counts its additions in a row of its own: every addition bumps
    # its accumulator's count, and jobs bumping neighbouring entries of one
    # array would pass its cache line back and forth at every row.
    own = _private_counts(used, _n_jobs(top_k))
    # The jobs take unequal times (a bin field's twice a row sum's): hand them
    # out one at a time, not as one contiguous run of jobs per thread.  (Set
    # here, not in the kernel: a kernel that sets it cannot be cached.)
    default = set_parallel_chunksize(1)
    try:
        _tally_parallel(loss, rank, entropy, confidence, weight, top_k, row_bin, bin_table, partials, own, special,
                        counts)
    finally:
        set_parallel_chunksize(default)
    used += (own[:, :used.size] - used).sum(axis=0)  # a job changes only its own accumulators' counts


def calibration_edges(n_bins):
    """Equal-width bin edges over [0, 1]: edges[b] = b * fl(1 / n_bins), the last
    exactly 1, as ``np.linspace(0, 1, n_bins + 1)`` forms them (and
    ``calibration_bin`` forms them again)."""
    edges = np.arange(n_bins + 1) * (1.0 / n_bins)
    edges[-1] = 1.0
    return edges
