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

# Rows of at most BLOCK entries are rows of one block: read four at a time,
# a pass for their extrema and one for their sums, from L1 (2048 float64
# values are 16 KiB).
BLOCK = 2048
# Longer rows are streamed STREAM_BLOCK entries at a time: each block summed
# against the running maximum in the read that finds its extrema, and read
# again (from L1) only when it raises the maximum.  Short blocks make those
# second reads short (in a row of 32000 random logits the maximum rises in
# about 3.4 of 16 blocks of 2048, 21 % of the row read again, and in 5.4 of
# 125 blocks of 256, 4 %), at a few nanoseconds of reductions per block.
# 4096x32000 float32, two threads, six alternate processes each (2-core Zen
# 5): cross_entropy 15.0-18.2 -> 14.0-14.7 ms, logsumexp 14.3-18.2 -> 13.0-13.8,
# bfloat16 cross_entropy 14.1-18.7 -> 12.7-13.3; rows already in cache lose up
# to 15 % (4x131072 logsumexp, one thread, 0.13 -> 0.15 ns an entry).
STREAM_BLOCK = 256
# ... and each block asks for the cache lines STREAM_AHEAD_BYTES further on
# (``_rows.row_sums``): the hardware prefetcher alone does not run far enough
# ahead of a loop doing this much arithmetic a byte, so the row's reads and its
# sums took turns instead of overlapping.  4096x32000, two threads, five
# alternate processes each (2-core Zen 5), ms without / with: float32
# cross_entropy 14.5-15.4 / 13.2-13.6, logsumexp 14.0-14.8 / 12.6-12.8 (one
# 14.5), evaluate 18.7-20.4 / 15.9-17.2; float64 (2048x32000) cross_entropy
# 27.7-30.7 / 16.4-18.1; bfloat16 12.9-13.2 / 11.9-12.7.  Two, four, eight
# and sixteen kilobytes ahead (one thread): four and eight were best.
STREAM_AHEAD_BYTES = 4096

JIT_OPTIONS = dict(nogil=True, cache=True, fastmath=set(FASTMATH), error_model="numpy")
PARALLEL_JIT_OPTIONS = dict(JIT_OPTIONS, parallel=True)
# For the functions that form log p = (x - c) - log s and the kernels that
# use it.  Flags belong to instructions, so a caller's "nsz" and "reassoc"
# alone suffice to turn -((x - c) - log s) into (c + log s) - x; the streaming
# sums these kernels call keep their own flags (and their vector code).
ELEMENTWISE_JIT_OPTIONS = dict(JIT_OPTIONS, fastmath=set(ELEMENTWISE_FASTMATH))
ELEMENTWISE_PARALLEL_JIT_OPTIONS = dict(ELEMENTWISE_JIT_OPTIONS, parallel=True)
