"""Per-row building blocks of the CPU kernels (serial, one thread per row).

A *row* is the vector of one sample's class scores.  Rows reach these helpers
as contiguous 1-D arrays of float64, float32 or 16-bit words (see
``_bits.widen``).  The log-sum-exp is streamed block by block:

    block max  b = max_j x_j                          (integer-key max: vectorizes)
    shift      c = b if b is finite else 0, updated only when b grows
    rescale    s <- s * exp(c_old - c)                (scalar, once per block)
    accumulate s <- s + sum_j exp(x_j - c)            (vector exp)

    logsumexp(x) = c + log(s)

A block below the running maximum is summed in the same read that finds its
extrema; the first block, and any block that reaches the maximum, is read a
second time from L1 once its maximum is known.

Block sums run in the compute type (float32 for float32 and half inputs) over
at most ``BLOCK`` terms each no larger than 1; blocks are merged in float64,
so the rounding error does not grow with the row length.  -inf entries add
exactly 0, a +inf entry makes the result +inf, a NaN makes it NaN.
"""

import numpy as np
from numba import njit

from .._config import BLOCK, JIT_OPTIONS
from ._bits import cast_like, key_to_float, order_key, widen
from ._exp import exp_term

# input_type codes shared with nbce._arrays
LOGITS, LOG_PROBS, PROBS = 0, 1, 2
# PyTorch clamps log-probabilities computed from probabilities at -100.
LOG_CLAMP = -100.0


@njit(**JIT_OPTIONS)
def _block_extrema(block):
    """(max, min) of a block through order keys; a NaN shows as a NaN max or min."""
    first = widen(block[0])
    high = order_key(first)
    low = high
    for j in range(block.size):
        k = order_key(widen(block[j]))
        high = k if k > high else high
        low = k if k < low else low
    return key_to_float(high, first), key_to_float(low, first)


@njit(**JIT_OPTIONS)
def _block_sum_exp(block, shift):
    """sum_j exp(x_j - shift) for a block whose maximum is below ``shift``."""
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
def _block_sums_split(block, shift, with_moment):
    """For a block that reaches the row maximum ``shift``: sum_j exp(x_j - shift)
    as (count of terms equal to 1, sum of the others), and, ``with_moment``,
    the entropy moment sum_j e_j d_j with d_j = x_j - shift (0 * -inf = 0).

    The terms exp(0) = 1 are counted, not added: a float32 sum holding a 1
    keeps only ~1e-7 of the rest, and for a confident prediction that rest
    *is* the loss (log(1 + rest) ~ rest).
    """
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
    n = 0
    for j in range(block.size):
        n += 1 if widen(block[j]) > pivot else 0
    return n


@njit(**JIT_OPTIONS)
def row_stats(row, with_entropy, count_above, pivot):
    """Stream one row: return (logsumexp, entropy, max, above) with float64
    statistics.

    entropy = -sum_j p_j log p_j = log(s) - t/s with t = sum_j e_j (x_j - c);
    it is only accumulated (and only meaningful) when ``with_entropy``.
    ``above`` counts the entries strictly greater than ``pivot`` (in the
    row's compute type) when ``count_above``; each block is counted while it
    is still in L1, so the row is read from memory once.
    A NaN anywhere gives (nan, nan, nan, 0); a +inf gives (inf, nan, inf, ...).
    """
    shift = 0.0
    running_max = -np.inf
    total = 0.0
    moment = 0.0
    above = 0
    for lo in range(0, row.size, BLOCK):
        # Index loops from 0 over a slice: a loop from `lo` makes numba
        # guard every index against wraparound, which defeats vectorization.
        block = row[lo:lo + BLOCK]
        if count_above:
            above += _count_above(block, pivot)
        if not with_entropy and -np.inf < running_max < np.inf:
            # Common case first: one read that sums against the current
            # maximum and finds the block's extrema; only a block reaching
            # the maximum is summed again below.
            s, block_max, block_min = _block_sum_exp_extrema(block, cast_like(shift, widen(block[0])))
            if block_max != block_max or block_min != block_min:
                return np.nan, np.nan, np.nan, 0
            if np.float64(block_max) < running_max:
                total += np.float64(s)
                continue
        else:
            block_max, block_min = _block_extrema(block)
        if block_max != block_max or block_min != block_min:
            return np.nan, np.nan, np.nan, 0
        new_max = np.float64(block_max)
        if new_max > running_max:
            new_shift = new_max if np.isfinite(new_max) else 0.0
            if total != 0.0:
                delta = shift - new_shift
                scale = np.exp(delta)
                moment = scale * (moment + total * delta)
                total *= scale
            running_max = new_max
            shift = new_shift
        block_shift = cast_like(shift, block_max)
        if with_entropy or new_max == running_max:
            ones, rest, t = _block_sums_split(block, block_shift, with_entropy)
            moment += np.float64(t)
        else:
            ones, rest = 0.0, np.float64(_block_sum_exp(block, block_shift))
        total += np.float64(ones) + np.float64(rest)
    if running_max == np.inf:
        return np.inf, np.nan, np.inf, above
    log_total = np.log(total)
    return shift + log_total, log_total - moment / total, running_max, above


@njit(**JIT_OPTIONS)
def softmax_stats(row, with_entropy):
    """(logsumexp, entropy) of one row in float64; see ``row_stats``."""
    lse, entropy, _, _ = row_stats(row, with_entropy, False, widen(row[0]))
    return lse, entropy


@njit(**JIT_OPTIONS)
def log_prob(value, lse, input_type):
    """log p of one entry, given the row's logsumexp (used for logits only)."""
    x = np.float64(value)
    if input_type == LOGITS:
        return x - lse
    if input_type == LOG_PROBS:
        return x
    lp = np.log(x)
    return LOG_CLAMP if lp < LOG_CLAMP else lp  # NaN stays NaN


@njit(**JIT_OPTIONS)
def weighted_log_prob_sum(row, coef, lse, input_type):
    """sum_j coef[j] * log p_j; terms with coef[j] == 0 contribute 0 (0 * log 0 = 0)."""
    total = 0.0
    for j in range(row.size):
        c = coef[j]
        if c != 0.0:
            total += c * log_prob(widen(row[j]), lse, input_type)
    return total


@njit(**JIT_OPTIONS)
def soft_target_sum(row, target, t_offset, t_step, weight, smoothing, lse, input_type):
    """sum_j w_j y'_j log p_j with y'_j = (1 - eps) y_j + eps / C; zero coefficients add 0."""
    n = row.size
    uniform = smoothing / n
    keep = 1.0 - smoothing
    total = 0.0
    for j in range(n):
        c = weight[j] * (keep * np.float64(widen(target[t_offset + j * t_step])) + uniform)
        if c != 0.0:
            total += c * log_prob(widen(row[j]), lse, input_type)
    return total
