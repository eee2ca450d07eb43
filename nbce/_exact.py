"""Exact float64 sums that merge associatively: the state of ``nbce.Evaluator``.

Every finite float64 is an integer multiple of 2**-1074: x = m * 2**(e - 1075)
with a 53-bit integer m and the 11-bit biased exponent e (e = 1 for
subnormals).  An accumulator keeps one int64 *bin* per exponent and adds m to
bin e — one integer addition per value, no rounding at all:

    sum = sum_e bins[e] * 2**(e - 1075)      (exactly; Python integers evaluate it)

A bin gains less than 2**53 per addition, so at most ``_CARRY_EVERY``
additions after a *carry* pass (which moves each bin's bits above 2**53 into
the bin 53 exponents higher, leaving bins in [0, 2**53)) no int64 can
overflow.  Because nothing is rounded until ``value`` is asked for, the
result is the correctly rounded total whatever the order of the additions:
chunking a data set differently, or merging evaluators in another order,
gives bit-identical figures.  Products ``w * v`` are added exactly as well
(Dekker's two-product).

Non-finite values do not enter the bins: they are summed apart in
``special`` (inf + -inf = nan, nan stays nan), which then is the result.

Compiled without fast-math on purpose: two-product relies on every addition
and multiplication being rounded exactly as written.
"""

import math

import numpy as np
from numba import njit

from .cpu._bits import float64_bits

# One bin per biased exponent, and room above the largest for the carries
# out of it (those bins only ever gain carries of a few bits).
_N_BINS = 2048 + 64
_MANTISSA_BITS = 52
_SHIFT = 1075  # bin e has weight 2**(e - _SHIFT)
_CARRY_EVERY = 1000  # < 2**(63 - 53): additions between carry passes
_SPLIT = 134217729.0  # 2**27 + 1: Veltkamp's splitter for float64
_SPLIT_LIMIT = 2.0**996  # above this, splitting could overflow

# No reference counting (``_nrt=False``): nothing here allocates, and the
# atomic reference-count updates that Numba otherwise emits around each use
# of an array inside a branchy loop cost 10x the additions themselves.
# Callers looping over ``add`` compile with ``JIT_NO_NRT`` for the same reason.
JIT_NO_NRT = dict(cache=True, nogil=True, error_model="numpy", _nrt=False)
_JIT = JIT_NO_NRT
_INLINE_JIT = dict(_JIT, inline="always")


def accumulators(n):
    """Storage for ``n`` exact sums, all zero: (bins, pending additions, special)."""
    return np.zeros((n, _N_BINS), dtype=np.int64), np.zeros(n, dtype=np.int64), np.zeros(n)


@njit(**_JIT)
def _carry(bins, i):
    """Move the bits above 2**53 of each bin up 53 exponents: the bins of float64
    exponents end in [0, 2**53), the carry bins above them gain a few bits."""
    for e in range(_N_BINS - _MANTISSA_BITS - 1):
        c = bins[i, e] >> (_MANTISSA_BITS + 1)  # floor division, also for negative bins
        if c != 0:
            bins[i, e] -= c << (_MANTISSA_BITS + 1)
            bins[i, e + _MANTISSA_BITS + 1] += c


@njit(**_INLINE_JIT)
def add(bins, pending, special, i, x):
    """Add ``x`` to accumulator ``i`` exactly."""
    if not math.isfinite(x):
        special[i] += x
        return
    word = float64_bits(x)
    e = (word >> _MANTISSA_BITS) & 0x7FF
    m = word & ((1 << _MANTISSA_BITS) - 1)
    if e == 0:
        e = 1  # subnormal: no implicit bit, same scale as the smallest normal
    else:
        m |= 1 << _MANTISSA_BITS
    bins[i, e] += -m if word < 0 else m
    pending[i] += 1
    if pending[i] >= _CARRY_EVERY:
        _carry(bins, i)
        pending[i] = 0


@njit(**_JIT)
def _split(a):
    c = _SPLIT * a
    high = c - (c - a)
    return high, a - high


@njit(**_INLINE_JIT)
def add_product(bins, pending, special, i, w, v):
    """Add ``w * v`` to accumulator ``i`` exactly (barring under/overflow of the error term)."""
    if w == 1.0:
        add(bins, pending, special, i, v)
        return
    p = w * v
    add(bins, pending, special, i, p)
    if not math.isfinite(p) or abs(w) > _SPLIT_LIMIT or abs(v) > _SPLIT_LIMIT:
        return
    wh, wl = _split(w)
    vh, vl = _split(v)
    error = ((wh * vh - p) + wh * vl + wl * vh) + wl * vl
    if error != 0.0:
        add(bins, pending, special, i, error)


@njit(**_JIT)
def merge_into(bins, pending, special, other_bins, other_pending, other_special):
    """Add every sum of the second set of accumulators into the first, exactly."""
    for i in range(pending.size):
        if other_pending[i] or pending[i]:
            _carry(other_bins, i)
            other_pending[i] = 0
            _carry(bins, i)
            pending[i] = 0
        for e in range(_N_BINS):
            bins[i, e] += other_bins[i, e]
        pending[i] = 1  # bins may now reach 2**54: count it as an addition
        special[i] += other_special[i]


def value(bins, pending, special, i):
    """The correctly rounded float64 value of accumulator ``i`` (+-inf beyond float64's range)."""
    row = bins[i]
    exponents = np.flatnonzero(row)
    # Python integers hold the exact total; int / int rounds correctly once.
    total = sum(int(b) << int(e) for e, b in zip(exponents.tolist(), row[exponents].tolist()))
    try:
        result = total / (1 << _SHIFT)
    except OverflowError:  # the exact total is beyond float64's range
        result = math.inf if total > 0 else -math.inf
    return result + float(special[i])
