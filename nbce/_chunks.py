"""Row chunks of host arrays, and the page hints that keep a memory map's footprint bounded.

A memory-mapped file that is read from start to end stays resident in the
process (its pages count in RSS) until the kernel needs the memory back.
After a chunk has been scored its pages are dropped from the mapping
(``MADV_DONTNEED``: for a shared file mapping the data stay in the page
cache and a later read faults them back in), and the next chunk is announced
(``MADV_WILLNEED``) so that the kernel reads it ahead while the current one
is scored.
"""

import ctypes
import mmap
import sys
from dataclasses import dataclass
from math import prod

import numpy as np

# Logits per chunk when the caller does not choose: large enough to amortize
# a parallel launch, small enough to bound the memory of a mapped file.
CHUNK_BYTES = 64 * 2**20

_PAGE = mmap.PAGESIZE
_MADV_WILLNEED, _MADV_DONTNEED = 3, 4
_libc = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    except (OSError, AttributeError):  # no libc madvise: hints are an optimization only
        _libc = None


# numpy >= 2 moved byte_bounds out of the main namespace
_byte_bounds = getattr(getattr(np.lib, "array_utils", None), "byte_bounds", None) or np.byte_bounds


@dataclass(frozen=True)
class Chunk:
    first_row: int  # index of the chunk's first entry along the target's first axis
    logits: object
    target: object
    weight: object
    rows: int  # rows (targets) in the chunk


def _is_file_mapping(array):
    # Only shared mappings: MADV_DONTNEED on a copy-on-write ("c") map would discard its edits.
    return isinstance(array, np.memmap) and getattr(array, "mode", None) in ("r", "r+")


def _advise(array, advice):
    if _libc is None or array.size == 0:
        return
    low, high = _byte_bounds(array)
    start = low - low % _PAGE
    stop = -(-high // _PAGE) * _PAGE
    _libc.madvise(start, stop - start, advice)  # a failed hint changes nothing: ignore it


def chunk_axis(axis):
    """The logits axis that chunks split: the first batch axis."""
    return 0 if axis != 0 else 1


def default_chunk_rows(logits, axis):
    """Indices along the chunked axis per chunk: about ``CHUNK_BYTES`` of logits."""
    if logits.ndim < 2:  # one row of classes: one chunk
        return 1
    along = chunk_axis(axis)
    per_index = logits.nbytes // max(1, logits.shape[along])
    return max(1, CHUNK_BYTES // max(1, per_index))


def row_chunks(logits, target, weight, axis, chunk_rows):
    """Yield ``Chunk``s of ``chunk_rows`` indices along the first batch axis.

    ``logits`` is an ndarray (possibly a memmap) with class axis ``axis``
    (non-negative); ``target`` (and ``weight``, if given) has its shape
    without that axis.  Pages of a mapped file are released behind the
    reader and requested ahead of it.
    """
    if logits.ndim == 1:
        yield Chunk(0, logits, target, weight, 1)
        return
    along = chunk_axis(axis)
    n = logits.shape[along]
    mapped = _is_file_mapping(logits)
    per_row = prod(target.shape[1:])
    for start in range(0, n, chunk_rows):
        stop = min(n, start + chunk_rows)
        part = logits[(slice(None),) * along + (slice(start, stop),)]
        if mapped and stop < n:
            ahead = logits[(slice(None),) * along + (slice(stop, min(n, stop + chunk_rows)),)]
            _advise(ahead, _MADV_WILLNEED)
        yield Chunk(start, part, target[start:stop], None if weight is None else weight[start:stop],
                    (stop - start) * per_row)
        if mapped:
            _advise(part, _MADV_DONTNEED)
