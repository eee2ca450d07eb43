"""Exact float64 sums that merge associatively: the state of ``nbce.Evaluator``.

Every finite float64 is an integer multiple of 2**-1074: x = m * 2**(e - 1075)
with a 53-bit integer m and the 11-bit biased exponent e (e = 1 for
subnormals).  An accumulator keeps one int64 *bin* per exponent and adds m to
bin j = e + _BELOW — one integer addition per value, no rounding at all:

    sum = sum_j bins[j] * 2**(j - _SHIFT),  _SHIFT = 1075 + _BELOW
                                             (exactly; Python integers evaluate it)

The bins reach below and above float64's exponents so that a product w * v
of any two finite float64 is added exactly too, even where it under- or
overflows float64: with w = mw * 2**ew and v = mv * 2**ev (``frexp``,
mw, mv in [0.5, 1)), mw * mv splits exactly into two float64 halves
(Dekker's two-product), and each half goes to its bin moved up ew + ev.

A bin gains less than 2**53 per addition, so at most ``_CARRY_EVERY``
additions after a *carry* pass (which moves each bin's bits above 2**53 into
the bin 53 exponents higher, leaving bins in [0, 2**53)) no int64 can
overflow.  The count of additions since the last carry, ``pending``, is
never 0 again once an accumulator has been added to (a carry leaves it at
1, the bins below 2**53 counting as one addition): an accumulator with
pending 0 holds no bits, and ``totals`` does not read its bins (most of the
calibration bins' sums, for a model whose confidences fill a few bins).
Because nothing is rounded until ``value`` (or ``ratio``) is asked
for, the result is the correctly rounded total whatever the order of the
additions: chunking a data set differently, or merging evaluators in another
order, gives bit-identical figures.  ``ratio`` divides two sums as exact
integers on the common scale 2**-_SHIFT, so a quotient of sums beyond
float64's range (weights near 1.8e308) is still correctly rounded.

Non-finite values do not enter the bins: they are summed apart in
``special`` (inf + -inf = nan, nan stays nan), which then is the result.

Compiled without fast-math on purpose: two-product relies on every addition
and multiplication being rounded exactly as written.
"""

import math

import numpy as np
from numba import njit

from . import _config  # noqa: F401  (Numba's cache directory for nbce, before the kernels below are decorated)


_MANTISSA_BITS = 52
# Bins below float64's biased exponent 1: the lower half of a product of two
# subnormals, (mw * mv) * 2**(ew + ev) with ew + ev >= -2146 and a lower half of
# at least 2**-106, lands 917 - 2146 = -1229 bins below exponent 0.
_BELOW = 1229
# Above float64's largest exponent: products reach 2**2048 (1024 bins more), and
# the carries out of the highest bins need room (those bins only ever gain
# carries of a few bits).
_N_BINS = _BELOW + 2048 + 1024 + 64
_SHIFT = 1075 + _BELOW  # bin j has weight 2**(j - _SHIFT)
_CARRY_EVERY = 1000  # < 2**(63 - 53): additions between carry passes
_SPLIT = 134217729.0  # 2**27 + 1: Veltkamp's splitter for float64
_SPLIT_LIMIT = 2.0**996  # above this, splitting could overflow
# Below this a product's rounding error could fall under float64's subnormals
# and be rounded itself: such products take the exponent-moving path.
_PRODUCT_FLOOR = 2.0**-960

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
    # Bins in runs of 53, in increasing order (as one bin at a time would):
    # a run's carries all land in the next run, so within a run the loop is
    # branch-free vector code over two slices that do not overlap (1.2 us a
    # pass instead of 1.6 one bin at a time, skipping zero carries).
    run = _MANTISSA_BITS + 1
    for start in range(0, _N_BINS - run, run):
        stop = min(start + run, _N_BINS - run)
        low = bins[i, start:stop]
        high = bins[i, start + run:stop + run]
        for e in range(low.size):
            c = low[e] >> run  # floor division, also for negative bins
            low[e] -= c << run
            high[e] += c


@njit(**_INLINE_JIT)
def _integer_and_bin(x):
    """(m, j) with x = m * 2**(j - _SHIFT) for a finite x: m its signed 53-bit integer, j its bin."""
    word = np.float64(x).view(np.int64)  # the IEEE bits (a register move once compiled)
    e = (word >> _MANTISSA_BITS) & 0x7FF
    m = word & ((1 << _MANTISSA_BITS) - 1)
    if e == 0:
        e = 1  # subnormal: no implicit bit, same scale as the smallest normal
    else:
        m |= 1 << _MANTISSA_BITS
    return (-m if word < 0 else m), e + _BELOW


@njit(**_INLINE_JIT)
def _add_scaled(bins, pending, i, x, scale):
    """Add ``x * 2**scale`` to accumulator ``i`` exactly (``x`` finite)."""
    m, j = _integer_and_bin(x)
    bins[i, j + scale] += m
    pending[i] += 1
    if pending[i] >= _CARRY_EVERY:
        _carry(bins, i)
        pending[i] = 1


@njit(**_INLINE_JIT)
def add(bins, pending, special, i, x):
    """Add ``x`` to accumulator ``i`` exactly."""
    if not math.isfinite(x):
        special[i] += x
        return
    _add_scaled(bins, pending, i, x, 0)


# Runs of additions without a count per addition: a value's integer m (53
# bits) goes in as two halves, m = high * 2**_HALF + low with 0 <= low <
# 2**_HALF, to its bin and the bin _HALF above, so that each bin changes by
# less than 2**27 an addition and a run of at most RUN additions changes it
# by less than 2**53: one addition's worth for the carry count, settled by
# ``end_run``.  The pending count and the carry check of each addition (a
# third of ``add``'s time, the carry pass every _CARRY_EVERY additions
# another third) are paid once a run.
_HALF = 26
RUN = 1 << _HALF


@njit(**_INLINE_JIT)
def add_in_run(bins, special, i, x):
    """Add ``x`` to accumulator ``i`` exactly, as part of a run (see ``end_run``)."""
    if not math.isfinite(x):
        special[i] += x
        return
    m, j = _integer_and_bin(x)
    bins[i, j] += m & (RUN - 1)  # the halves of a negative m: floor division, exact
    bins[i, j + _HALF] += m >> _HALF


@njit(**_INLINE_JIT)
def end_run(bins, pending, i):
    """Close a run of at most RUN ``add_in_run`` additions to accumulator ``i``:
    counted as one addition (it changed each bin by less than 2**53)."""
    pending[i] += 1
    if pending[i] >= _CARRY_EVERY:
        _carry(bins, i)
        pending[i] = 1


# ``add_many``: a batch of values cut at three fixed places (shared by the
# batch) into integer pieces, summed as int64 in vector code; values with
# bits below the last cut, and batches with a non-finite value or whose last
# cut would fall below _LOWEST_CUT, take ``add_in_run``.
_HALF_WORD = 31
# The lowest cut: 2**-cut and every piece q * 2**cut stay normal float64 (a
# piece below the normals could round; its scale 2**-cut would overflow).
_LOWEST_CUT = -1022
_ABS_BITS = (1 << 63) - 1
_INF_BITS = 0x7FF0000000000000


@njit(**_JIT)
def _kept(values, labels, skip, square, r):
    """values[r] (squared, rounded once, when ``square``), or 0 where labels[r] == skip."""
    v = values[r] * values[r] if square else values[r]
    return v if labels[r] != skip else 0.0


@njit(**_JIT)
def _cut(v, scale, unit):
    """(q, v - q * unit) for q = trunc(v * scale), scale = 1 / unit a power of two:
    q is a prefix of v's bits, so both are exact."""
    q = np.int64(v * scale)
    return q, v - np.float64(q) * unit


@njit(**_JIT)
def _pieces(v, scales, units):
    """(q1, q2, q3, rest): v cut at the three places ``add_many`` chose."""
    q1, v = _cut(v, scales[0], units[0])
    q2, v = _cut(v, scales[1], units[1])
    q3, v = _cut(v, scales[2], units[2])
    return q1, q2, q3, v


@njit(**_JIT)
def add_many(bins, pending, special, i, values, square, labels, skip):
    """Add sum_r values[r] (or values[r]**2, each rounded once, when ``square``)
    over the r with labels[r] != skip to accumulator ``i``, exactly.

    With n values kept, the largest below 2**e, and b = 62 - bit_length(n)
    bits a piece, each value is cut at 2**(e - b), 2**(e - 2b), 2**(e - 3b):
    v = q1 2**u1 + q2 2**u2 + q3 2**u3 + rest with |q_l| < 2**b integers
    (the bits of v between two cuts: every step exact), so each level's
    sum over the batch is an int64 below 2**62, added to the bins as two
    31-bit halves.  A batch of 65536 values is cut 135 bits below its
    largest, deeper than any value's 53 bits but those 82 bits smaller:
    their rest, almost never non-zero, goes through ``add_in_run``, as does
    a batch with a non-finite value or so small (largest below about
    2**-840) that its last cut would fall below float64's normals.  The
    passes over the batch are vector code (0.03 ms for 65536 values
    against 0.08 through ``add_in_run``); the sum is the same exact sum.
    """
    n = 0
    top_bits = np.int64(0)  # the largest |value| as IEEE bits: a max of integers, which vectorizes
    for r in range(values.size):
        top_bits = max(top_bits, np.float64(_kept(values, labels, skip, square, r)).view(np.int64) & _ABS_BITS)
        n += labels[r] != skip
    if top_bits == 0:  # no value, or zeros only
        return
    if top_bits >= _INF_BITS:
        _add_many_in_runs(bins, pending, special, i, values, square, labels, skip)
        return
    length = 0  # n's bit length
    while n >> length:
        length += 1
    b = 62 - length
    u1 = math.frexp(np.int64(top_bits).view(np.float64))[1] - b
    u2, u3 = u1 - b, u1 - 2 * b
    if u3 < _LOWEST_CUT:  # 2**-u3 would overflow, and pieces fall among the subnormals
        _add_many_in_runs(bins, pending, special, i, values, square, labels, skip)
        return
    scales = math.ldexp(1.0, -u1), math.ldexp(1.0, -u2), math.ldexp(1.0, -u3)
    units = math.ldexp(1.0, u1), math.ldexp(1.0, u2), math.ldexp(1.0, u3)
    q1 = q2 = q3 = np.int64(0)
    rests = False
    for r in range(values.size):
        a, c, d, rest = _pieces(_kept(values, labels, skip, square, r), scales, units)
        q1 += a
        q2 += c
        q3 += d
        rests |= rest != 0.0
    add_integer(bins, i, q1, u1)
    add_integer(bins, i, q2, u2)
    add_integer(bins, i, q3, u3)
    end_run(bins, pending, i)  # a bin gains at most two halves: less than 2**32
    if rests:
        for start in range(0, values.size, RUN):
            for r in range(start, min(start + RUN, values.size)):
                rest = _pieces(_kept(values, labels, skip, square, r), scales, units)[3]
                if rest != 0.0:
                    add_in_run(bins, special, i, rest)
            end_run(bins, pending, i)


@njit(**_INLINE_JIT)
def add_integer(bins, i, q, u):
    """Add q * 2**u (an int64 q, |q| < 2**62) to accumulator ``i``'s bins as two
    31-bit halves: each of the two bins changes by at most 2**31, which the
    caller counts as part of a run (``end_run``)."""
    j = u + _SHIFT  # bin j weighs 2**(j - _SHIFT)
    bins[i, j] += q & ((1 << _HALF_WORD) - 1)
    bins[i, j + _HALF_WORD] += q >> _HALF_WORD


# Values in [0, 2) cut at fixed places (``unit_pieces``): two integers below
# 2**UNIT_BITS each, so that the pieces of up to UNIT_RUN values sum below
# 2**62 in int64, and those sums then go to the bins by ``add_integer``.  The
# pieces reach down to 2**-83: a value from 2**-31 up has no bits below (a
# confidence, about 1 / C at least, has none for C below 2**31; a chunk
# holding one that does takes the exact additions one by one).
UNIT_BITS = 42
UNIT_CUTS = (1 - UNIT_BITS, 1 - 2 * UNIT_BITS)
UNIT_RUN = 1 << 20


@njit(**_INLINE_JIT)
def unit_pieces(v):
    """(q1, q2, rest) with v = q1 2**-41 + q2 2**-83 + rest exactly, for
    0 <= v < 2: q1 the bits of v from 2**0 to 2**-41, q2 the next 42 (each
    step exact, see ``_cut``), rest 0 unless v has bits below 2**-83."""
    q1, v = _cut(v, 2.0 ** -UNIT_CUTS[0], 2.0 ** UNIT_CUTS[0])
    q2, v = _cut(v, 2.0 ** -UNIT_CUTS[1], 2.0 ** UNIT_CUTS[1])
    return q1, q2, v


@njit(**_JIT)
def _add_many_in_runs(bins, pending, special, i, values, square, labels, skip):
    """``add_many`` one value at a time, in runs of ``add_in_run``."""
    for start in range(0, values.size, RUN):
        for r in range(start, min(start + RUN, values.size)):
            if labels[r] != skip:
                add_in_run(bins, special, i, values[r] * values[r] if square else values[r])
        end_run(bins, pending, i)


@njit(**_JIT)
def _split(a):
    c = _SPLIT * a
    high = c - (c - a)
    return high, a - high


@njit(**_JIT)
def _product_error(a, b, p):
    """a * b - p exactly, for p = fl(a * b) (Dekker; needs no under- or overflow)."""
    ah, al = _split(a)
    bh, bl = _split(b)
    return ((ah * bh - p) + ah * bl + al * bh) + al * bl


@njit(**_INLINE_JIT)
def add_product(bins, pending, special, i, w, v):
    """Add ``w * v`` to accumulator ``i`` exactly, also where it under- or overflows
    float64.  A weight w = 0 adds nothing, whatever v (an infinite or NaN v
    included): a row of weight 0 is left out of the sums."""
    if w == 1.0:
        add(bins, pending, special, i, v)
        return
    if w == 0.0:
        return
    p = w * v
    if not (math.isfinite(w) and math.isfinite(v)):
        special[i] += p
        return
    if p == 0.0 and (w == 0.0 or v == 0.0):
        return
    if _PRODUCT_FLOOR <= abs(p) <= _SPLIT_LIMIT and abs(w) <= _SPLIT_LIMIT and abs(v) <= _SPLIT_LIMIT:
        _add_scaled(bins, pending, i, p, 0)
        error = _product_error(w, v, p)
        scale = 0
    else:  # move the exponents out of the way: mw * mv lies in [0.25, 1)
        mw, ew = math.frexp(w)
        mv, ev = math.frexp(v)
        p = mw * mv
        _add_scaled(bins, pending, i, p, ew + ev)
        error = _product_error(mw, mv, p)
        scale = ew + ev
    if error != 0.0:
        _add_scaled(bins, pending, i, error, scale)


@njit(**_JIT)
def merge_into(bins, pending, special, other_bins, other_pending, other_special):
    """Add every sum of the second set of accumulators into the first, exactly
    (the second's bins are carried on the way)."""
    for i in range(pending.size):
        special[i] += other_special[i]
        if other_pending[i] == 0:
            continue  # no bits to add
        _carry(other_bins, i)
        other_pending[i] = 1
        if pending[i]:
            _carry(bins, i)
        for e in range(_N_BINS):
            bins[i, e] += other_bins[i, e]
        pending[i] = 2  # two sets of bins below 2**53: two additions' worth


# Sums kept elsewhere (the GPU backend's, see ``nbce.cuda.tally``) as digits
# in base 2**DIGIT_BITS on the bins' scale: digit g (any int64) weighs
# 2**(DIGIT_BITS * g - _SHIFT).  N_DIGITS of them reach 2**(32 * 137 - _SHIFT),
# beyond every product of two float64 (their 53 x 53-bit integer product
# lies below bit 2 * 1024 + _SHIFT + 1 = 4353 of this scale).
DIGIT_BITS = 32
N_DIGITS = 137
SCALE = _SHIFT  # the bins' unit is 2**-SCALE
# The bits of ``special`` as kept with digit sums: which non-finite values were added.
ADDED_POS_INF, ADDED_NEG_INF, ADDED_NAN = 1, 2, 4


@njit(**_JIT)
def add_digits(bins, pending, special, digits, added):
    """Add, for each accumulator i, the sum sum_g digits[i, g] * 2**(DIGIT_BITS * g)
    (on the bins' scale) and the non-finite values flagged in ``added[i]``, exactly.

    The digits are first carried into [0, 2**DIGIT_BITS) (the last keeps the
    sign), so each bin DIGIT_BITS * g gains less than 2**DIGIT_BITS: one
    more addition for the carry count.
    """
    for i in range(digits.shape[0]):
        carry = 0
        for g in range(N_DIGITS):
            d = digits[i, g] + carry
            if g < N_DIGITS - 1:
                carry = d >> DIGIT_BITS  # floor division: negative digits borrow
                d -= carry << DIGIT_BITS
            if d != 0:
                bins[i, DIGIT_BITS * g] += d
        pending[i] += 1
        if pending[i] >= _CARRY_EVERY:
            _carry(bins, i)
            pending[i] = 1
        flags = added[i]
        if flags & ADDED_NAN or (flags & ADDED_POS_INF and flags & ADDED_NEG_INF):
            special[i] += math.nan
        elif flags & ADDED_POS_INF:
            special[i] += math.inf
        elif flags & ADDED_NEG_INF:
            special[i] -= math.inf


# Base-2**DIGIT_BITS digits of a set of bins: enough for every bin's bits and
# the carries out of the highest.
_BIN_DIGITS = _N_BINS // DIGIT_BITS + 4
_ZERO_RUN = 64


@njit(**_JIT)
def _bins_to_digits(bins, pending, digits):
    """The sum of each accumulator's bins as base-2**DIGIT_BITS digits, each in
    [0, 2**DIGIT_BITS) but the last (signed): bin j's value b * 2**j split
    over the digits it straddles, then carried.  The bins of an accumulator
    never added to (pending 0) are not read: its digits are zeros."""
    mask = (1 << DIGIT_BITS) - 1
    for i in range(bins.shape[0]):
        for g in range(_BIN_DIGITS):
            digits[i, g] = 0
        if pending[i] == 0:
            continue
        # Almost every bin is zero: runs of _ZERO_RUN bins are tested at once
        # (a vector OR), and only a run holding bits is gone through bin by bin
        # (40 -> 21 us for the 51 sums of the default metrics).
        for start in range(0, _N_BINS, _ZERO_RUN):
            run = bins[i, start:min(start + _ZERO_RUN, _N_BINS)]
            bits = 0
            for e in range(run.size):
                bits |= run[e]
            if bits == 0:
                continue
            for e in range(run.size):
                b = run[e]
                if b == 0:
                    continue
                j = start + e
                q, shift = j // DIGIT_BITS, j % DIGIT_BITS
                low = (b & mask) << shift  # below 2**63
                high = (b >> DIGIT_BITS) << shift  # |high| below 2**62: the sign stays in it
                digits[i, q] += low & mask
                digits[i, q + 1] += (low >> DIGIT_BITS) + (high & mask)
                digits[i, q + 2] += high >> DIGIT_BITS
        for g in range(_BIN_DIGITS - 1):
            carry = digits[i, g] >> DIGIT_BITS
            digits[i, g] -= carry << DIGIT_BITS
            digits[i, g + 1] += carry


def totals(bins, pending, special):
    """Every accumulator exactly, as ``total`` gives each: one pass over the bins,
    and one conversion of its digits' bytes to a Python integer per sum."""
    digits = np.empty((bins.shape[0], _BIN_DIGITS), dtype=np.int64)
    _bins_to_digits(bins, pending, digits)
    top = _BIN_DIGITS - 1
    low = memoryview(digits[:, :top].astype("<u4").tobytes())  # one buffer: slices of it copy nothing
    width = 4 * top
    exact = []
    for i, (high, s) in enumerate(zip(digits[:, top].tolist(), special.tolist())):
        n = int.from_bytes(low[i * width:(i + 1) * width], "little")
        exact.append((n + (high << (DIGIT_BITS * top)) if high else n, s))
    return exact


def total(bins, pending, special, i):
    """Accumulator ``i`` exactly, as ``(n, s)``: the sum is n * 2**-_SHIFT + s, where
    the Python integer n holds every finite addition and the float s is 0.0
    unless a non-finite value was added (then s, +-inf or nan, is the sum)."""
    return totals(bins[i:i + 1], pending[i:i + 1], special[i:i + 1])[0]


def _divide(n, d):
    """n / d for Python integers, correctly rounded (+-inf beyond float64's range)."""
    try:
        return n / d  # int / int rounds correctly once, however large both are
    except OverflowError:
        return math.inf if (n > 0) == (d > 0) else -math.inf


def to_float(exact):
    """The correctly rounded float64 value of a ``total`` (+-inf beyond float64's range)."""
    n, s = exact
    return _divide(n, 1 << _SHIFT) + s


def value(bins, pending, special, i):
    """The correctly rounded float64 value of accumulator ``i`` (+-inf beyond float64's range)."""
    return to_float(total(bins, pending, special, i))


def ratio(numerator, denominator):
    """numerator / denominator of two ``total`` results, rounded once; NaN when the
    denominator is 0.  Both share the scale 2**-_SHIFT, so the quotient of the
    integers is the quotient of the sums, even when a sum exceeds float64."""
    (n, s), (d, t) = numerator, denominator
    if s or t:  # a non-finite addition: float arithmetic gives its inf / nan rules
        x, y = to_float(numerator), to_float(denominator)
        return math.nan if y == 0.0 else x / y
    return math.nan if d == 0 else _divide(n, d)


def _trailing_zeros(x):
    """The exponent of the largest power of two dividing the integer x != 0."""
    return (x & -x).bit_length() - 1


def standard_error(sum_squares, sum_values, sum_weights, n):
    """The standard error of a weighted mean, as lm-eval-harness's ``mean_stderr``
    gives it for unit weights (sample standard deviation / sqrt(n)):

        sqrt((sum w x**2 / W - (sum w x / W)**2) / (n - 1)),  W = sum w,

    from three ``total`` results, the variance's cancellation done in exact
    integers (on the common scale the scales cancel) and rounded once before
    the square root.  NaN for n < 2, W = 0 or a non-finite sum.
    """
    (s2, a), (s1, b), (w, c) = sum_squares, sum_values, sum_weights
    if n < 2 or a or b or c or w == 0:
        return math.nan
    # The quotient is homogeneous of degree 2 in (s2, s1, w): their common
    # factor 2**k (most of the scale's 2304 bits are zeros) comes off first,
    # and the products are of integers of a hundred bits, not thousands.
    k = _trailing_zeros(s2 | s1 | w)
    s2, s1, w = s2 >> k, s1 >> k, w >> k
    variance = _divide(s2 * w - s1 * s1, w * w * (n - 1))
    return math.sqrt(variance) if variance > 0.0 else 0.0  # a variance of -0.0 gives 0.0, not -0.0


def export(bins, pending, special):
    """The non-zero bins and the rest of a set of accumulators, for pickling: a few kB
    (the bins are almost all zero).  ``restore`` reads it, also in another layout."""
    occupied = np.flatnonzero(bins)
    return {"occupied": occupied, "values": bins.reshape(-1)[occupied], "pending": pending,
            "special": special, "width": bins.shape[1], "shift": _SHIFT}


def restore(bins, pending, special, state):
    """Fill fresh accumulators from ``export``'s dict; ValueError if it does not fit them."""
    # States pickled before the bins reached below float64's exponents had 2112 bins, shift 1075.
    width, shift = int(state.get("width", 2112)), int(state.get("shift", 1075))
    occupied = np.asarray(state["occupied"], dtype=np.int64)
    rows, columns = np.divmod(occupied, width)
    columns += _SHIFT - shift
    if (occupied.size and (rows.max() >= bins.shape[0] or columns.min() < 0 or columns.max() >= _N_BINS)) \
            or np.shape(state["pending"]) != pending.shape or np.shape(state["special"]) != special.shape:
        raise ValueError("this Evaluator state does not fit its options: not an nbce Evaluator pickle?")
    bins[rows, columns] = state["values"]
    pending[:] = state["pending"]
    pending[rows] = np.maximum(pending[rows], 1)  # states saved when a carry left 0 pending
    special[:] = state["special"]
