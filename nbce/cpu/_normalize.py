"""The element-wise output pass of log_softmax and softmax (one row, serial).

Given a row's statistics from the row pass (``kernels.group_stats``, as
logsumexp forms them: the row maximum c and log s, s = sum_j exp(x_j - c)),
every entry is written once:

    log_softmax:  log p_j = (x_j - c) - log s
    softmax:      p_j = exp(log p_j)

in the row's compute type: float32 for float32, float16 and bfloat16
storage, float64 for float64 (where this is the float64 evaluation the GPU
kernel makes too).  The float32 pass uses the vector exp of ``_exp`` (a libm
call per element would not vectorize) and converts nothing to float64 per
element.  c is a row entry (or 0), so it is exact in the compute type; log s
is rounded to it once per row.

Error of the float32 pass, given (c, log s), with u = 2**-24:

* log_softmax: x_j - c <= 0 <= log s, so the two terms never cancel: the
  three roundings (of x_j - c, of log s, of the difference) give a relative
  error of at most 2u (about 2 ulp; 1.2e-7) of log p_j.  A value below
  float32's range is -inf, as its rounding would be.
* softmax: exp turns that into a relative error of 2u |log p_j|, plus vexp's
  1.05 ulp: at most u (2 |log p_j| + 2.1), i.e. below 1.6e-6 for
  p_j >= e**-12 (6e-6) and below 1.1e-5 for every p_j above float32's
  smallest normal (|log p_j| < 87.4); results below it are within an
  absolute 2**-148 (2.8e-45).

The row pass adds its own error: an absolute error d in log s (float32
block sums merged in float64: |d| of the order of 1e-7 to 1e-6) shifts
every log p_j by d and scales every p_j by exp(-d).  The float64 pass has the
same bounds with u = 2**-53.
"""

import numpy as np
from numba import njit

from .._config import ELEMENTWISE_JIT_OPTIONS
from ._bits import cast_like, widen
from ._exp import vexp


@njit(inline="always", **ELEMENTWISE_JIT_OPTIONS)  # a call would count references to both arrays
def write_normalized(src, src_start, n, shift, log_total, exponentiate, dst, dst_start):
    """dst[dst_start + j] = (x_j - c) - log s (log_softmax), or its exp
    (softmax), for the row x_j = src[src_start + j], j < n, in the row's
    compute type and in this order (compiled without reassociation: see
    ``_rows.log_softmax_entry``).  A row of -inf only (log s = -inf) and a
    row holding +inf (c = +inf, log s = NaN) give NaN.

    The rows are offsets into the caller's arrays, not views of them (a view
    costs an atomic reference count up and down); the offsets are unsigned,
    so that the loads and stores take no negative-index wraparound.
    """
    like = widen(src[src_start])
    c = cast_like(shift, like)
    log_s = cast_like(log_total, like)
    a = np.uint64(src_start)
    b = np.uint64(dst_start)
    if exponentiate:
        for j in range(np.uint64(n)):
            dst[b + j] = vexp((widen(src[a + j]) - c) - log_s)
    else:
        for j in range(np.uint64(n)):
            dst[b + j] = (widen(src[a + j]) - c) - log_s
