"""An evaluation's exact sums kept on the GPU: per-row metrics added by integer atomics.

``nbce._tally.tally`` adds each row's weighted metrics to exact sums on the
host, which needs every per-row figure copied back.  Here the same sums are
formed on the device, as integers, so that a whole evaluation leaves the GPU
as one small state copied back when it ends (``read``), however many chunks
it had.

Every finite float64 is an integer times a power of two, x = M * 2**q with
M < 2**53.  On the scale of ``nbce._exact`` (unit 2**-SCALE) x is the integer
M * 2**p, p = q + SCALE >= 0, and a sum of such integers is exact whatever the
order of the additions.  The state keeps each sum as N_DIGITS int64 *digits*
in base 2**32, digit g weighing 2**(32 g): M * 2**p is split at p's digit
into three pieces below 2**33 each, added by 64-bit integer atomics.  A
product w * v of two floats is the 106-bit integer Mw * Mv at p_w + p_v -
SCALE, formed exactly from 26/27-bit halves of the mantissas as three
integers below 2**54, each added as above; the same sum, bit for bit, as the
host's two-product, without relying on how the compiler contracts floating
multiply-adds.  Non-finite values set flags instead (+inf, -inf, NaN), and
``nbce._exact.add_digits`` turns digits and flags into the host's bins.

A row adds at most 3 pieces of < 2**33 to any one digit, so a digit stays
within int64 for 2**28 rows: ``ROWS_BETWEEN_READS`` bounds the rows added
between two reads (a larger chunk is added in parts, read back in between).

Most figures of an evaluation (losses, entropies, confidences, unit or modest
weights) lie in about [2**-140, 2**116) (weighted products: [2**-86, 2**117)):
their pieces fall in ``WINDOW`` digits
that each block first adds up in shared memory, so a block makes one global
atomic per digit it touched instead of one per row; other values go to the
global digits directly.
"""

import functools
import math
import weakref

import numpy as np
from numba import types

from .._exact import ADDED_NAN, ADDED_NEG_INF, ADDED_POS_INF, DIGIT_BITS, N_DIGITS, SCALE
from .._tally import (BIN_CONFIDENCE, BIN_CORRECT, BIN_WEIGHT, ENTROPY, IGNORED, IGNORED_ROW, LOSS, N_COUNTS,
                      ROWS, UNCALIBRATED, UNDEFINED, UNDEFINED_ROW, WEIGHT, calibration_bin)
from . import _device as dev
from ._device import cuda
from ._workspace import thread_workspaces, workspace

THREADS = 128
# Blocks per multiprocessor: enough to keep the atomics in flight, few enough
# that the shared sums are flushed rarely.
BLOCKS_PER_SM = 2
ROWS_BETWEEN_READS = 2**26
_DIGIT_MASK = (1 << DIGIT_BITS) - 1
_HALF_BITS = 26  # mantissa halves: 27 x 26 bits, products below 2**54
_HALF_MASK = (1 << _HALF_BITS) - 1
_TWO_53 = 2.0**53
# Digits 66-75 of every sum (bits 2112-2431 of the scale) are summed per block first.
WINDOW_FIRST, WINDOW = 66, 10
_SHARED_MOST = 4096  # int64 entries of shared memory (32 kB); more accumulators go to global memory

_calibration_bin = dev.jit(device=True)(calibration_bin.py_func)


def state_size(n_sums):
    """int64 entries of a state of ``n_sums`` sums: their digits, their flags, the row counts."""
    return n_sums * (N_DIGITS + 1) + N_COUNTS


@dev.jit(device=True)
def _add_digits(digits, at, d0, d1, d2):
    """Add three consecutive digits from ``at`` on (skipping zeros: no atomic for them)."""
    if d0 != 0:
        cuda.atomic.add(digits, at, d0)
    if d1 != 0:
        cuda.atomic.add(digits, at + 1, d1)
    if d2 != 0:
        cuda.atomic.add(digits, at + 2, d2)


@dev.jit(device=True)
def _add_integer(state, held, acc, magnitude, position, negative):
    """Add +-magnitude * 2**position (magnitude < 2**55, position >= 0) to sum ``acc``:
    into the block's window in shared memory where the digits fall in it, else global."""
    g, s = position // DIGIT_BITS, position % DIGIT_BITS  # its digit, and the shift within it
    low = (magnitude & _DIGIT_MASK) << s
    high = (magnitude >> DIGIT_BITS) << s
    d0 = low & _DIGIT_MASK
    d1 = (low >> DIGIT_BITS) + (high & _DIGIT_MASK)
    d2 = high >> DIGIT_BITS
    if negative:
        d0, d1, d2 = -d0, -d1, -d2
    at = acc * WINDOW + g - WINDOW_FIRST
    if g >= WINDOW_FIRST and g + 2 < WINDOW_FIRST + WINDOW and at + 2 < held.size:
        _add_digits(held, at, d0, d1, d2)
    else:
        _add_digits(state, acc * N_DIGITS + g, d0, d1, d2)


@dev.jit(device=True)
def _flag(state, n_sums, acc, x):
    """Record the non-finite ``x`` added to sum ``acc``."""
    bit = ADDED_NAN if x != x else (ADDED_POS_INF if x > 0 else ADDED_NEG_INF)
    cuda.atomic.or_(state, n_sums * N_DIGITS + acc, bit)


@dev.jit(device=True)
def _mantissa(x):
    """(M, q) with |x| = M * 2**q, M an integer below 2**53 (x finite, non-zero)."""
    fraction, exponent = math.frexp(abs(x))
    return int(fraction * _TWO_53), exponent - 53


@dev.jit(device=True)
def _add(state, held, n_sums, acc, x):
    """Add ``x`` to sum ``acc`` exactly."""
    if not math.isfinite(x):
        _flag(state, n_sums, acc, x)
    elif x != 0.0:
        m, q = _mantissa(x)
        _add_integer(state, held, acc, m, q + SCALE, x < 0.0)


@dev.jit(device=True)
def _add_product(state, held, n_sums, acc, w, v):
    """Add the exact product ``w * v`` to sum ``acc``, also where it under- or overflows
    float64; nothing for w = 0, whatever v (as ``nbce._exact.add_product``)."""
    if w == 1.0:
        _add(state, held, n_sums, acc, v)
        return
    if w == 0.0:
        return
    if not (math.isfinite(w) and math.isfinite(v)):
        _flag(state, n_sums, acc, w * v)
        return
    if w == 0.0 or v == 0.0:
        return
    mw, qw = _mantissa(w)
    mv, qv = _mantissa(v)
    wh, wl = mw >> _HALF_BITS, mw & _HALF_MASK
    vh, vl = mv >> _HALF_BITS, mv & _HALF_MASK
    position = qw + qv + SCALE  # >= 2 * (-1074 - 52) + SCALE > 0
    negative = (w < 0.0) != (v < 0.0)
    _add_integer(state, held, acc, wl * vl, position, negative)
    _add_integer(state, held, acc, wh * vl + wl * vh, position + _HALF_BITS, negative)
    _add_integer(state, held, acc, wh * vh, position + 2 * _HALF_BITS, negative)


@functools.lru_cache(maxsize=None)
def tally_kernel(threads, shared_entries):
    """The kernel adding per-row metrics to a state, with ``shared_entries``
    int64 of shared memory for the window digits (0: none)."""
    held_size = max(shared_entries, 1)

    @dev.jit
    def tally(loss, rank, entropy, confidence, weight, weighted, top_k, edges, n_sums, first_top_k, first_bin,
              squares, state):
        """The same sums as ``nbce._tally.tally``, into ``state`` (see ``state_size``)."""
        held = cuda.shared.array(held_size, types.int64)
        held_counts = cuda.shared.array(N_COUNTS, types.int64)
        tid = cuda.threadIdx.x
        for i in range(tid, held_size, threads):
            held[i] = 0
        if tid < N_COUNTS:
            held_counts[tid] = 0
        cuda.syncthreads()
        scored = ignored = undefined = uncalibrated = 0
        for r in range(cuda.grid(1), rank.size, cuda.gridsize(1)):
            k_rank = rank[r]
            if k_rank == IGNORED_ROW:
                ignored += 1
                continue
            scored += 1
            w = weight[r] if weighted else 1.0
            row_loss = loss[r]
            _add(state, held, n_sums, WEIGHT, w)
            _add_product(state, held, n_sums, LOSS, w, row_loss)
            _add_product(state, held, n_sums, ENTROPY, w, entropy[r])
            _add_product(state, held, n_sums, squares, w, row_loss * row_loss)
            if k_rank == UNDEFINED_ROW:
                undefined += 1
                continue
            for i in range(top_k.size):
                if k_rank < top_k[i]:
                    _add(state, held, n_sums, first_top_k + i, w)
            c = confidence[r]
            if c != c:
                uncalibrated += 1
                continue
            at = first_bin + 3 * _calibration_bin(c, edges)
            _add(state, held, n_sums, at + BIN_WEIGHT, w)
            _add_product(state, held, n_sums, at + BIN_CONFIDENCE, w, c)
            if k_rank == 0:
                _add(state, held, n_sums, at + BIN_CORRECT, w)
        if scored:
            cuda.atomic.add(held_counts, ROWS, scored)
        if ignored:
            cuda.atomic.add(held_counts, IGNORED, ignored)
        if undefined:
            cuda.atomic.add(held_counts, UNDEFINED, undefined)
        if uncalibrated:
            cuda.atomic.add(held_counts, UNCALIBRATED, uncalibrated)
        cuda.syncthreads()
        # One global atomic per window digit this block touched.
        for i in range(tid, held_size, threads):
            if held[i] != 0:
                cuda.atomic.add(state, (i // WINDOW) * N_DIGITS + WINDOW_FIRST + i % WINDOW, held[i])
        counts_at = n_sums * (N_DIGITS + 1)
        if tid < N_COUNTS and held_counts[tid] != 0:
            cuda.atomic.add(state, counts_at + tid, held_counts[tid])

    return tally


@functools.lru_cache(maxsize=None)
def clear_kernel(threads):
    @dev.jit
    def clear(state):
        for i in range(cuda.grid(1), state.size, cuda.gridsize(1)):
            state[i] = 0

    return clear


def _shared_entries(n_sums):
    entries = n_sums * WINDOW
    if entries > _SHARED_MOST:
        return 0
    return -(-entries // 256) * 256  # a few kernel variants, not one per layout


class _Pending:
    """Whose sums a workspace's evaluation state holds, of which layout, over how many rows."""

    def __init__(self, owner, layout):
        self.owner = weakref.ref(owner)
        self.layout = layout
        self.rows = 0


def _nobody():
    return None


def _state(ws, layout):
    return ws.zeroed_buffer("evaluation_sums", (state_size(layout.size),), np.int64)


def add(per_row, weights, layout, top_k, edges, stream, owner):
    """Launch the addition of one chunk's per-row metrics (device arrays from
    ``row_metrics``; ``weights`` a float64 host array, empty when unweighted)
    to the evaluation state of the stream's workspace, on behalf of ``owner``
    (an object with ``_absorb(digits, added, counts)``, which ``settle``
    hands the sums to).  One launch per ``ROWS_BETWEEN_READS`` rows, and the
    weights' upload; the state of another owner still in the workspace is
    settled into it first.  (A digit holds the sums of 2**28 rows: the rows
    are added in parts of at most ``ROWS_BETWEEN_READS``, read back in between.)"""
    ws = workspace(stream)
    n = per_row[1].size
    if n == 0:
        return
    weighted = weights.size > 0
    weight = ws.upload("row_weights", weights) if weighted else ws.unused
    top_k_device, edges_device = ws.constant("top_k", top_k), ws.constant("calibration_edges", edges)
    kernel = tally_kernel(THREADS, _shared_entries(layout.size))
    for start in range(0, n, ROWS_BETWEEN_READS):
        stop = min(n, start + ROWS_BETWEEN_READS)
        pending = ws.evaluation
        if pending is not None and (pending.owner() is not owner or pending.rows + stop - start > ROWS_BETWEEN_READS):
            _settle(ws, stream)
            pending = None
        if pending is None:
            pending = ws.evaluation = _Pending(owner, layout)
        part = per_row if stop - start == n else [values[start:stop] for values in per_row]
        part_weight = weight[start:stop] if weighted and stop - start < n else weight
        blocks = max(1, min(-(-(stop - start) // THREADS), BLOCKS_PER_SM * dev.multiprocessor_count()))
        dev.launch(kernel, blocks, THREADS, stream,
                   (*part, part_weight, weighted, top_k_device, edges_device, layout.size, layout.top_k(0),
                    layout.bin(0, 0), layout.loss_squares, _state(ws, layout)))
        pending.rows += stop - start


def _settle(ws, stream, keep=True):
    """Hand the workspace's state to its owner (unless ``keep`` is false or the
    owner is gone): one copy back, waited for; then zero the state (one launch).

    The state is cleared whatever happens meanwhile (an error, an interrupt
    while waiting for the copy): until the clear is launched, the workspace
    records sums of nobody, which the next use clears."""
    pending = ws.evaluation
    owner = pending.owner() if keep else None
    pending.owner = _nobody
    state = _state(ws, pending.layout)
    try:
        if owner is not None:
            host = ws.read(state, stream)
            n = pending.layout.size
            owner._absorb(host[: n * N_DIGITS].reshape(n, N_DIGITS), host[n * N_DIGITS: n * (N_DIGITS + 1)],
                          host[n * (N_DIGITS + 1):])
    finally:
        dev.launch(clear_kernel(THREADS), max(1, min(-(-state.size // THREADS), 64)), THREADS, stream, (state,))
        ws.evaluation = None


def settle(owner, keep=True):
    """Hand ``owner`` the sums this thread's workspaces hold for it (``keep``
    false: drop them, after an error): one copy back per stream it used, each
    with its own GPU current."""
    for ws, stream, device_id in thread_workspaces():
        if ws.evaluation is not None and ws.evaluation.owner() is owner:
            with dev.current_device(device_id):
                _settle(ws, stream, keep)
