"""Fold per-row metrics into an evaluation's exact sums (host code, both backends).

The backends' metric kernels give, per row, (loss, rank, entropy,
confidence); ``tally`` adds them, weighted, to the exact accumulators of
``nbce._exact`` laid out by ``Layout``, and counts rows in ``counts``.
"""

from dataclasses import dataclass

import numpy as np
from numba import njit

from ._exact import JIT_NO_NRT, add, add_product

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
    """The bin b with edges[b] < confidence <= edges[b + 1] (confidence 0 goes to bin 0).

    A first guess from ``confidence * n_bins`` is corrected against the very
    edges the reference uses, so the rounding of the product cannot move a
    value that lies exactly on an edge.
    """
    n_bins = edges.size - 1
    b = min(max(int(confidence * n_bins), 0), n_bins - 1)
    while b > 0 and confidence <= edges[b]:
        b -= 1
    while b < n_bins - 1 and confidence > edges[b + 1]:
        b += 1
    return b


@njit(**JIT_NO_NRT)
def tally(loss, rank, entropy, confidence, weight, top_k, edges, partials, used, special, counts):
    """Add one chunk of per-row metrics (weights ``weight``, or 1 when empty) to the sums.

    sum w, sum w*loss, sum w*entropy and sum w*loss**2 (each square rounded
    once, the sum exact) over the rows scored; per k, sum w over rows with
    rank < k; per confidence bin, sum w, sum w*confidence and sum w over rows
    whose target is the argmax.
    """
    n_top_k = top_k.size
    first_bin = _FIRST_TOP_K + n_top_k
    squares = first_bin + _PER_BIN * (edges.size - 1)
    weighted = weight.size > 0
    for r in range(rank.size):
        k_rank = rank[r]
        if k_rank == IGNORED_ROW:
            counts[IGNORED] += 1
            continue
        counts[ROWS] += 1
        w = weight[r] if weighted else 1.0
        add(partials, used, special, WEIGHT, w)
        add_product(partials, used, special, LOSS, w, loss[r])
        add_product(partials, used, special, ENTROPY, w, entropy[r])
        add_product(partials, used, special, squares, w, loss[r] * loss[r])
        if k_rank == UNDEFINED_ROW:
            counts[UNDEFINED] += 1
            continue
        for i in range(n_top_k):
            if k_rank < top_k[i]:
                add(partials, used, special, _FIRST_TOP_K + i, w)
        c = confidence[r]
        if c != c:
            counts[UNCALIBRATED] += 1
            continue
        at = first_bin + _PER_BIN * calibration_bin(c, edges)
        add(partials, used, special, at + BIN_WEIGHT, w)
        add_product(partials, used, special, at + BIN_CONFIDENCE, w, c)
        if k_rank == 0:
            add(partials, used, special, at + BIN_CORRECT, w)


def calibration_edges(n_bins):
    """Equal-width bin edges over [0, 1]."""
    return np.linspace(0.0, 1.0, n_bins + 1)
