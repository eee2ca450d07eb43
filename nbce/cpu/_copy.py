"""A copy spread over the cores: how the GPU pipeline reads a host chunk into
its page-locked staging buffer.

A pipeline whose host-to-GPU copies run at 40+ GB/s is bound by the host's
side when that reads on one thread (an H100 machine streamed a 1 GB float16
array through the pipeline at 4.9 GB/s end to end, its copies at 44 GB/s).
"""

import numpy as np
from numba import njit, prange

from .._config import PARALLEL_JIT_OPTIONS
from .._threads import launches
from ._vectors import wide_vectors


@njit(**PARALLEL_JIT_OPTIONS)
def _copy_rows(source, destination):
    for r in prange(source.shape[0]):
        wide_vectors()  # the loop's body is a function of its own
        for j in range(source.shape[1]):
            destination[r, j] = source[r, j]


@launches
def copy_into(destination, source):
    """``destination[...] = source`` for arrays of one shape and dtype, rows
    copied in parallel; ``destination`` is C-contiguous, ``source`` any
    layout whose last axis flattens with the others to rows (else a plain copy)."""
    if source.ndim < 2 or source.size == 0:
        np.copyto(destination, source)
        return
    try:
        rows = source.reshape(-1, source.shape[-1])  # a view, or a copy for layouts that do not flatten
    except ValueError:
        np.copyto(destination, source)
        return
    if not np.shares_memory(rows, source):
        np.copyto(destination, source)
        return
    words = np.dtype(f"u{source.dtype.itemsize}")  # bits, whatever the dtype (float16 included)
    _copy_rows(rows.view(words), destination.reshape(-1, source.shape[-1]).view(words))
