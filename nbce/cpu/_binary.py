"""Element-wise binary cross-entropy: the per-element losses and their block loops.

The binary losses are element-wise, so the CPU kernel (``kernels.binary_chunks``)
splits the flattened elements into chunks of ``CHUNK`` elements, whatever the
shape, and sums each chunk serially in float64.  The chunks' sums are then
added on the host by one fixed-order (NumPy pairwise) sum, so a result does
not depend on the thread count.

A chunk (``kernels._binary_chunk``) is walked in segments that lie within one row of the last axis (rows
as in ``kernels``: ``base[offset(r) + j*step]``) and each segment in blocks
of at most ``BLOCK`` elements.  A block's logits and targets are read in
place when their step is 1 and gathered into small buffers otherwise;
weights and pos_weights always come through buffers (filled once per segment
when broadcast along the row, copied or gathered otherwise), so the block
loops see contiguous operands and become vector code: one writes the
block's losses (into the result, or a scratch buffer for a reduction), the
next sums them.

The losses are evaluated in the compute type (float32 for float32 and half
inputs, float64 for float64) with the vector ``vexp``, ``log1p_unit`` and
``vlog``; only the sums are float64.
"""

import numpy as np
from numba import njit

from .._config import ELEMENTWISE_JIT_OPTIONS, JIT_OPTIONS
from ._bits import cast_like, widen
from ._exp import vexp
from ._log import log1p_unit, vlog
from ._rows import LOG_CLAMP
from ._vectors import wide_vectors

# Elements per chunk: the unit of work of one thread and of one partial sum.
# Fixed (never derived from the thread count), so results are reproducible.
CHUNK = 1 << 15
# Elements per block: the four operand buffers (at most 8 bytes each) take 16 KiB of L1.
BLOCK = 512


@njit(inline="always", **ELEMENTWISE_JIT_OPTIONS)
def softplus(x):
    """log(1 + exp(x)) = log1p(exp(-|x|)) + max(x, 0), in x's float type.

    At most 2 ulp from the correctly rounded value over the whole float32
    (float64) range, NaN and +-inf included (``tests/test_log.py``): the
    ``vexp`` error (1.05 ulp) passes into log1p with a factor below 1, plus
    ``log1p_unit``'s own (1.3 ulp, float32).
    """
    zero = cast_like(0.0, x)
    core = log1p_unit(vexp(-abs(x)))
    return core + (x if x > zero else zero)


@njit(inline="always", **ELEMENTWISE_JIT_OPTIONS)
def logits_loss(x, y, w, pw):
    """w ((1 - y) x + (1 + (pw - 1) y) softplus(-x)), PyTorch's formula, evaluated as

        w ((1 - y) softplus(x) + pw y softplus(-x))

    (equal for finite x, since softplus(x) = x + softplus(-x)), which has no
    cancellation for targets in [0, 1] and pos_weight >= 0: PyTorch's form
    loses everything but ulp(|x|) when (1 - y) x nearly cancels softplus(-x)
    (y = 0, x << 0).  For infinite x PyTorch's own form is taken, so that
    inf - inf gives NaN exactly where PyTorch gives NaN.  ``y``, ``w`` and
    ``pw`` are converted to x's float type first.
    """
    y, w, pw = cast_like(y, x), cast_like(w, x), cast_like(pw, x)
    zero, one = cast_like(0.0, x), cast_like(1.0, x)
    core = log1p_unit(vexp(-abs(x)))
    up = core + (x if x > zero else zero)  # softplus(x) = -log(1 - sigmoid(x))
    down = core + (zero if x > zero else -x)  # softplus(-x) = -log sigmoid(x)
    stable = (one - y) * up + pw * y * down
    pytorch = (one - y) * x + (one + (pw - one) * y) * down
    return w * (stable if abs(x) < np.inf else pytorch)


@njit(inline="always", **ELEMENTWISE_JIT_OPTIONS)
def clamped_log(p):
    """max(log p, -100), PyTorch's clamp; NaN stays NaN."""
    clamp = cast_like(LOG_CLAMP, p)
    lp = vlog(p)
    return clamp if lp < clamp else lp


@njit(inline="always", **ELEMENTWISE_JIT_OPTIONS)
def clamped_log1m(p):
    """max(log(1 - p), -100) for p in [0, 1], as log1p(-p) (PyTorch's form).

    u = 1 - p rounds, but c = (1 - u) - p is its exact error, and
    log(1 - p) = log(u + c) ~ log(u) + c/u; so tiny probabilities keep
    log(1 - p) ~ -p instead of log(1) = 0.
    """
    zero, one = cast_like(0.0, p), cast_like(1.0, p)
    clamp = cast_like(LOG_CLAMP, p)
    u = one - p
    c = (one - u) - p
    lq = vlog(u) + (c / u if c != zero else zero)
    return clamp if lq < clamp else lq


@njit(inline="always", **ELEMENTWISE_JIT_OPTIONS)
def probability_loss(p, y, w):
    """-w (y max(log p, -100) + (1 - y) max(log(1 - p), -100)), in p's float type."""
    y, w = cast_like(y, p), cast_like(w, p)
    one = cast_like(1.0, p)
    return -w * (y * clamped_log(p) + (one - y) * clamped_log1m(p))


@njit(**ELEMENTWISE_JIT_OPTIONS)
def logits_losses(x, y, w, pw, out):
    """out[k] = the loss of element k (``logits_loss``)."""
    wide_vectors()
    for k in range(x.size):
        out[k] = logits_loss(widen(x[k]), widen(y[k]), widen(w[k]), widen(pw[k]))


@njit(**ELEMENTWISE_JIT_OPTIONS)
def probability_losses(p, y, w, out):
    """out[k] = the loss of element k (``probability_loss``); returns the number
    of probabilities or targets outside [0, 1]."""
    wide_vectors()
    bad = 0
    for k in range(p.size):
        pk, yk = widen(p[k]), widen(y[k])
        bad += (pk < 0.0) | (pk > 1.0) | (yk < 0.0) | (yk > 1.0)  # no short circuit: vector compares
        out[k] = probability_loss(pk, yk, widen(w[k]))
    return bad


@njit(**JIT_OPTIONS)
def float64_sum(values):
    """sum_k values[k] in float64 (reassociated into vector accumulators)."""
    wide_vectors()
    total = 0.0
    for k in range(values.size):
        total += np.float64(values[k])
    return total


@njit(**JIT_OPTIONS)
def block_loss(from_logits, x, y, w, pw, out):
    """(sum of the losses, count outside [0, 1]) of a block of logits or
    probabilities; the losses are left in ``out``.

    Two loops on purpose: the losses are element-wise maths (contraction
    only), the sum is a reduction (reassociation): flags belong to the loop
    that needs them, and each loop is vector code.
    """
    wide_vectors()
    bad = 0
    if from_logits:
        logits_losses(x, y, w, pw, out)
    else:
        bad = probability_losses(x, y, w, out)
    return float64_sum(out), bad


@njit(**JIT_OPTIONS)
def fill(buffer, n, base, offset, step):
    """buffer[:n] = base[offset + j*step] for j < n; a loop per step kind, so
    the common ones (1, 0) are vector copies and fills."""
    wide_vectors()
    if step == 1:
        source = base[offset:offset + n]
        for j in range(n):
            buffer[j] = source[j]
    elif step == 0:
        value = base[offset]
        for j in range(n):
            buffer[j] = value
    else:
        for j in range(n):
            buffer[j] = base[offset + j * step]
    return buffer[:n]
