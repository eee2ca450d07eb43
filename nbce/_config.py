"""Compilation settings shared by every CPU kernel (one place, on purpose).

Importing it also points Numba's cache for nbce's kernels outside the
package and picks the threading layer: every module with cached or parallel
kernels imports it first, because Numba fixes a function's cache directory
when it decorates it and its threading layer at the first parallel launch.
"""

from . import __version__, _cache, _threads

_cache.install(__version__)
_threads.configure()

# Fast-math flags for the streaming reductions.  Reassociation lets LLVM split
# a sum over several vector accumulators and contraction lets it fuse
# multiply-adds; together they buy vectorization.  "nnan" and "ninf" are left
# out deliberately: -inf is a valid (masked) logit and NaN must propagate.
FASTMATH = frozenset({"reassoc", "contract", "nsz", "arcp"})

# Element-wise maths (the polynomial exp, log p = (x - c) - log s) is
# exact-rounding-sensitive: only contraction into FMAs is allowed there, never
# reassociation (which may regroup (x - c) - log s as x - (c + log s)).
ELEMENTWISE_FASTMATH = frozenset({"contract"})

# Elements per block of the blocked online log-sum-exp.  A block is read once
# from memory for its max and re-read from L1 for its sum of exponentials, so
# it must fit L1 with room to spare: 2048 float64 values are 16 KiB.
BLOCK = 2048

JIT_OPTIONS = dict(nogil=True, cache=True, fastmath=set(FASTMATH), error_model="numpy")
PARALLEL_JIT_OPTIONS = dict(JIT_OPTIONS, parallel=True)
# For the functions that form log p = (x - c) - log s and the kernels that
# use it.  Flags belong to instructions, so a caller's "nsz" and "reassoc"
# alone suffice to turn -((x - c) - log s) into (c + log s) - x; the streaming
# sums these kernels call keep their own flags (and their vector code).
ELEMENTWISE_JIT_OPTIONS = dict(JIT_OPTIONS, fastmath=set(ELEMENTWISE_FASTMATH))
ELEMENTWISE_PARALLEL_JIT_OPTIONS = dict(ELEMENTWISE_JIT_OPTIONS, parallel=True)
