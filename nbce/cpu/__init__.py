"""CPU backend: allocates outputs and launches the ``prange`` kernels.

Every function takes operands already checked and shaped by ``nbce.api`` (as
``nbce._arrays.Rows``) and returns per-row float64 results; reductions happen
in the public layer.
"""

import numpy as np

from . import kernels


def softmax_stats(rows, with_entropy):
    """(logsumexp, entropy) per row, float64."""
    lse = np.empty(rows.n_rows, dtype=np.float64)
    entropy = np.empty(rows.n_rows, dtype=np.float64)
    kernels.softmax_stats_rows(rows.base, rows.geom, rows.length, with_entropy, lse, entropy)
    return lse, entropy


def normalize(rows, exponentiate, dtype):
    """log_softmax (or softmax) rows as an (n_rows, length) array of ``dtype``."""
    out = np.empty((rows.n_rows, rows.length), dtype=dtype)
    kernels.normalize_rows(rows.base, rows.geom, exponentiate, out)
    return out


def class_index_loss(rows, target, weight, ignore_index, smoothing, input_type):
    """(loss, weight of the target class) per row, float64; ``target`` is int64, checked."""
    loss = np.empty(rows.n_rows, dtype=np.float64)
    target_weight = np.empty(rows.n_rows, dtype=np.float64)
    kernels.class_index_rows(rows.base, rows.geom, rows.length, target, weight, ignore_index,
                             smoothing, input_type, loss, target_weight)
    return loss, target_weight


def soft_target_loss(rows, target_rows, weight, smoothing, input_type):
    """Loss per row for class-probability targets, float64."""
    loss = np.empty(rows.n_rows, dtype=np.float64)
    kernels.soft_target_rows(rows.base, rows.geom, rows.length, target_rows.base, target_rows.geom,
                             weight, smoothing, input_type, loss)
    return loss


def binary_loss(from_logits, x, y, w, pos_weight, elementwise_dtype):
    """(element-wise loss or None, per-row sums, per-row count of probabilities outside [0, 1])."""
    n_rows = x.n_rows
    store = elementwise_dtype is not None
    elementwise = np.empty((n_rows, x.length) if store else (0, 0), dtype=elementwise_dtype or np.float64)
    row_sums = np.empty(n_rows, dtype=np.float64)
    bad = np.empty(n_rows, dtype=np.int64)
    kernels.binary_rows(from_logits, x.length, x.base, x.geom, y.base, y.geom, w.base, w.geom,
                        pos_weight.base, pos_weight.geom, elementwise, row_sums, bad)
    return (elementwise if store else None), row_sums, bad
