"""Row chunks of host arrays, read from memory-mapped files without touching the mapping.

A page of a mapped file that has been truncated (by another process, while
nbce scores it) cannot be read: touching it raises SIGBUS, which kills the
process, since Python cannot recover from a fault inside native code.  So a
chunk of a read-only file mapping that occupies one contiguous byte range
(rows of a C-order array, the usual case) is read with ``pread`` into an
array of its own: a truncated file gives a short read, hence a ``ValueError``
naming the file.  The kernel's read-ahead follows the sequential reads, and
no page of the mapping becomes resident, so memory stays at a chunk or two:
the chunks' memory is reused once the caller lets go of a chunk
(``_Buffers``).

The file is reopened by the memmap's file name only when it is still the
file mapped (``_reopen``: same inode, from /proc/self/maps);
a name since given to another file or removed, or a system without
/proc/self/maps, has the chunks scored through the mapping as below.

A chunk that is not contiguous in the file (class axis first, Fortran order)
is read the same way: one ``pread`` per contiguous run when the runs lie far
apart (16 KiB or more of file per run), else the byte range that covers it,
in windows of at most ``CHUNK_BYTES`` (the bytes between runs are read too,
and dropped); axes of negative stride are read in file order.  Mappings nbce
cannot reopen (no file name, copy-on-write or writable ones) are scored
through the mapping: their pages are dropped after use where that is safe
(``MADV_DONTNEED`` on a shared file mapping: the data stay in the page cache
and a later read faults them back in) and the next chunk is announced
(``MADV_WILLNEED``).
"""

import ctypes
import mmap
import os
import sys
from dataclasses import dataclass
from math import prod

import numpy as np

from ._dispatch import is_cuda_array

# Logits per chunk when the caller does not choose: large enough to amortize
# a parallel launch, small enough to bound the memory of a mapped file.
CHUNK_BYTES = 64 * 2**20
# Rows per chunk of logits already on a GPU (see ``default_chunk_rows``).
CUDA_CHUNK_ROWS = 2**22

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
    first_row: int  # index of the chunk's first entry along the target's first axis (None: a 0-d target)
    logits: object
    target: object
    weight: object
    rows: int  # rows (targets) in the chunk

    @property
    def origin(self):
        """Where the chunk's target starts in the whole target, for error messages:
        (first_row,), or () for a whole target of no axis."""
        return () if self.first_row is None else (self.first_row,)


def _is_file_mapping(array):
    # Only shared mappings: MADV_DONTNEED on a copy-on-write ("c") map would discard its edits.
    return isinstance(array, np.memmap) and getattr(array, "mode", None) in ("r", "r+")


def _file_position(part):
    """Offset in its file of the first byte of ``part``, a view of a ``np.memmap``."""
    # np.memmap maps from ``offset`` rounded down to the allocation granularity
    mapping = np.frombuffer(part._mmap, dtype=np.uint8)
    mapped_from = part.offset - part.offset % mmap.ALLOCATIONGRANULARITY
    return mapped_from + _byte_bounds(part)[0] - mapping.ctypes.data


def _truncated(part, end):
    return ValueError(f"{part.filename}: the file ends at byte {end:,}, before the array's end "
                      "(truncated while being read?)")


def _read(part, file, buffers=None):
    """``part`` of a read-only file mapping as an in-memory array, read from
    ``file`` with ``pread``, never through the mapping (a file truncated
    meanwhile is a ValueError, not a SIGBUS): one read when it is one
    contiguous byte range (into memory from ``buffers``, a ``_Buffers``,
    when given); else one read per contiguous run when the bytes between
    runs are many (``_BYTES_PER_READ`` a run or more), else the covering
    byte range in windows of at most ``CHUNK_BYTES``."""
    if part.size == 0:
        return np.asarray(part)
    if part.flags.c_contiguous or part.flags.f_contiguous:
        order = "C" if part.flags.c_contiguous else "F"
        if buffers is None:
            copy = np.empty(part.shape, part.dtype, order=order)
        else:
            copy = np.ndarray(part.shape, part.dtype, buffer=buffers.take(part.nbytes), order=order)
        _pread_into(file, copy.reshape(-1, order="A").view(np.uint8), _file_position(part), part)
        return copy
    # Axes of negative stride are read in file order and turned back (views).
    backwards = tuple(k for k, stride in enumerate(part.strides) if stride < 0 and part.shape[k] > 1)
    forwards = np.flip(part, axis=backwards) if backwards else part
    position = _file_position(forwards)
    order, axes, run_bytes = _contiguous_runs(forwards)
    low, high = _byte_bounds(forwards)
    if high - low >= forwards.nbytes // run_bytes * _BYTES_PER_READ:
        copy = _read_runs(forwards, file, position, order, axes)
    else:
        copy = np.empty(forwards.shape, forwards.dtype)
        _read_windows(forwards, file, position, copy)
    return np.flip(copy, axis=backwards) if backwards else copy


def _read_windows(part, file, position, out):
    """Fill ``out`` with ``part`` (non-negative strides; its first byte at file
    ``position``): its covering byte range read at once when it is at most
    ``CHUNK_BYTES``, else split along its axis of largest stride into pieces
    that fit, each read the same way."""
    low, high = _byte_bounds(part)
    if high - low <= CHUNK_BYTES or part.size == 1:
        span = np.empty(high - low, np.uint8)
        _pread_into(file, span, position, part)
        out[...] = np.ndarray(part.shape, part.dtype, buffer=span, offset=part.ctypes.data - low, strides=part.strides)
        return
    axis = max((k for k in range(part.ndim) if part.shape[k] > 1), key=lambda k: part.strides[k])
    stride = part.strides[axis]
    one_index = high - low - (part.shape[axis] - 1) * stride  # the bytes one index along ``axis`` covers
    step = 1 + max(0, CHUNK_BYTES - one_index) // stride
    for start in range(0, part.shape[axis], step):
        where = (slice(None),) * axis + (slice(start, start + step),)
        piece = part[where]
        _read_windows(piece, file, position + _byte_bounds(piece)[0] - low, out[where])


def _pread_into(file, data, position, part):
    """Fill the bytes ``data`` from ``file`` at ``position``; ValueError if the file ends first."""
    done = 0
    while done < data.size:
        n = os.preadv(file.fileno(), [data[done:]], position + done)
        if n == 0:
            raise _truncated(part, position + done)
        done += n


# A run is read with a pread of its own when the bytes between runs average at
# least this many: a pread costs about as much as copying 16 KiB from the
# page cache.  A chunk of class-axis-first float32 logits (64 MiB by default)
# has runs of 2 KiB at 32000 classes, far apart: 32768 reads of about a
# microsecond each.  Runs closer together (short rows of a Fortran-order
# array, say) are read with the bytes between them, a window at a time.
_BYTES_PER_READ = 16 * 2**10


def _contiguous_runs(part):
    """(order, axes, run bytes) of a ``part`` with non-negative strides
    (length-1 axes aside): its elements form byte runs, each contiguous in C
    order over its last ``axes`` axes (order "C") or in Fortran order over its
    first (order "F"), whichever makes the longer runs."""
    found = []
    for order, shape, strides in (("C", part.shape, part.strides), ("F", part.shape[::-1], part.strides[::-1])):
        run, axes = part.itemsize, 0
        for n, stride in zip(reversed(shape), reversed(strides)):
            if stride != run and n > 1:
                break
            run *= n
            axes += 1
        found.append((run, order, axes))
    run, order, axes = max(found, key=lambda f: f[0])
    return order, axes, run


def _read_runs(part, file, position, order, axes):
    """``part`` read run by run (one ``pread`` each) into an array of its own:
    a file truncated meanwhile gives ValueError, never a SIGBUS."""
    copy = np.empty(part.shape, part.dtype, order=order)
    outer = part.shape[: part.ndim - axes] if order == "C" else part.shape[axes:]
    outer_strides = part.strides[: part.ndim - axes] if order == "C" else part.strides[axes:]
    for index in np.ndindex(*outer):
        offset = sum(i * stride for i, stride in zip(index, outer_strides))
        target = copy[(*index, Ellipsis)] if order == "C" else copy[(Ellipsis, *index)]  # views, also of one element
        _pread_into(file, target.reshape(-1, order="A").view(np.uint8), position + offset, part)
    return copy


def _advise(array, advice):
    if _libc is None or array.size == 0:
        return
    low, high = _byte_bounds(array)
    start = low - low % _PAGE
    stop = -(-high // _PAGE) * _PAGE
    _libc.madvise(start, stop - start, advice)  # a failed hint changes nothing: ignore it


def release_written(part):
    """Drop the pages of ``part``, just written through a shared file mapping
    (``np.lib.format.open_memmap(..., "w+")``), from the process: the data stay
    in the page cache, to be written back, so an output file of any size costs
    a chunk of resident memory.  Anything else is left alone."""
    if isinstance(part, np.memmap) and getattr(part, "mode", None) in ("r+", "w+"):
        _advise(part, _MADV_DONTNEED)


def chunk_axis(axis):
    """The logits axis that chunks split: the first batch axis."""
    return 0 if axis != 0 else 1


def default_chunk_rows(logits, axis):
    """Indices along the chunked axis per chunk: about ``CHUNK_BYTES`` of host
    logits.  Logits already in GPU memory are one chunk of up to
    ``CUDA_CHUNK_ROWS`` rows: chunking them bounds no memory of the logits,
    and each chunk costs two launches (and a wait for device targets' check);
    what the cap bounds is the per-row scratch on the device, about 40 bytes
    a row."""
    if logits.ndim < 2:  # one row of classes: one chunk
        return 1
    if is_cuda_array(logits):
        along = chunk_axis(axis)
        # prod(shape), not .size: a torch tensor's size is a method
        rows_per_index = prod(logits.shape) // max(1, logits.shape[along] * logits.shape[axis])
        return max(1, min(logits.shape[along], CUDA_CHUNK_ROWS // max(1, rows_per_index)))
    along = chunk_axis(axis)
    per_index = logits.nbytes // max(1, logits.shape[along])
    return max(1, CHUNK_BYTES // max(1, per_index))


def _mapped_inode(address):
    """The inode of the file mapped at ``address``, from /proc/self/maps; None
    where that is unknown (no such file: not Linux)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                low, high = (int(a, 16) for a in fields[0].split("-"))
                if low <= address < high:
                    return int(fields[4])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reopen(array):
    """The file behind the mapping of ``array`` (a ``np.memmap``), opened for
    reading, or None when its name no longer leads to it.

    The name is all a memmap keeps, and since it was mapped the name may have
    been given to another file (a file rewritten and renamed into place, a
    link pointed elsewhere) or removed: reading by name would then score
    other bytes.  So the file opened must have the inode of the one mapped
    (as /proc/self/maps lists the mapping; a mapped inode cannot be freed,
    so its number is not given to another file of that file system
    meanwhile).  The devices are not compared: /proc/self/maps gives the file
    system's, which fstat does not on btrfs subvolumes.  Where the inodes
    differ, or where the mapped one cannot be known, the caller scores
    through the mapping, which still holds the mapped data.  Once opened,
    the file stays the mapped one whatever later happens to its name.
    """
    mapped = _mapped_inode(np.frombuffer(array._mmap, dtype=np.uint8).ctypes.data)
    if mapped is None:
        return None
    try:
        file = open(array.filename, "rb")
    except OSError:
        return None
    if os.fstat(file.fileno()).st_ino != mapped:
        file.close()
        return None
    return file


def _references(buffers, i):
    """The references to buffers[i] (the list's, and any view's), as counted
    from here."""
    return sys.getrefcount(buffers[i])


def _idle_references():
    """What ``_references`` counts for an array that only its list refers to:
    measured at each use, by the same code, rather than assumed (an
    interpreter may count a reference passed to ``getrefcount`` differently)."""
    return _references([np.empty(0, np.uint8)], 0)


class _Buffers:
    """Memory for the chunks read with ``pread``, handed out again once nothing
    refers to it any more.

    A fresh array per chunk costs its page faults on every chunk (reading
    64 MiB chunks of a 1 GB file from the page cache: 8.3 GB/s into fresh
    arrays, 14.3 GB/s into reused ones).  A buffer is reused only when its
    reference count is that of an array only the pool refers to (every view
    of an array holds a reference to it): a chunk the caller still holds (a
    list of chunks, a view of one, a chunk being copied to a GPU) keeps its
    memory, and the next chunk gets other memory.  A consumer that keeps
    only a raw pointer to a chunk (its address, without the array) holds no
    reference: like freed memory before, the pool's may then hold other data.
    """

    # The chunk being read, the one before it (the caller's until it asks for
    # the next), the first chunk (``evaluate`` holds it to the end), and one
    # more for a target and a weight read from the same file.
    KEEP = 4

    def __init__(self):
        self._buffers = []

    def take(self, nbytes):
        """``nbytes`` bytes (a uint8 array) that no earlier chunk still uses."""
        idle = _idle_references()
        for i in range(len(self._buffers)):
            if self._buffers[i].size >= nbytes and _references(self._buffers, i) <= idle:
                return self._buffers[i][:nbytes]
        if len(self._buffers) >= self.KEEP:
            return np.empty(nbytes, np.uint8)
        self._buffers.append(np.empty(nbytes, np.uint8))
        return self._buffers[-1][:nbytes]


class _Files:
    """The files behind mapped chunks, each opened once, for ``_read``."""

    def __init__(self):
        # id of a mapping -> (the mapping, kept so the id stays its own; its file or None; memory for its chunks)
        self._open = {}

    def resident(self, part):
        """``part`` read into memory when it is a view of a read-only file mapping
        whose file can be reopened (see ``_read`` and ``_reopen``); the
        chunks of one mapping share a ``_Buffers``."""
        if part is None or not _is_file_mapping(part) or part.filename is None or part._mmap is None:
            return part  # not a view of a file mapping nbce can reopen: scored as it is
        key = id(part._mmap)
        if key not in self._open:
            self._open[key] = (part._mmap, _reopen(part), _Buffers())
        _, file, buffers = self._open[key]
        return part if file is None else _read(part, file, buffers)

    def close(self):
        for _, file, _ in self._open.values():
            if file is not None:
                file.close()


def row_chunks(logits, target, weight, axis, chunk_rows):
    """Yield ``Chunk``s of ``chunk_rows`` indices along the first batch axis.

    ``logits`` is an ndarray (possibly a memmap) with class axis ``axis``
    (non-negative); ``target`` (and ``weight``, if given) has its shape
    without that axis.  Chunks of read-only file mappings are read as the
    module docstring says.
    """
    files = _Files()
    try:
        if logits.ndim == 1:
            yield Chunk(None if target.ndim == 0 else 0, files.resident(logits), files.resident(target),
                        files.resident(weight), 1)
            return
        along = chunk_axis(axis)
        n = logits.shape[along]
        per_row = prod(target.shape[1:])
        for start in range(0, n, chunk_rows):
            stop = min(n, start + chunk_rows)
            part = logits[(slice(None),) * along + (slice(start, stop),)]
            scored = files.resident(part)
            mapped = scored is part and _is_file_mapping(part)  # scored through the mapping
            if mapped and stop < n:
                ahead = logits[(slice(None),) * along + (slice(stop, min(n, stop + chunk_rows)),)]
                _advise(ahead, _MADV_WILLNEED)
            yield Chunk(start, scored, files.resident(target[start:stop]),
                        None if weight is None else files.resident(weight[start:stop]), (stop - start) * per_row)
            if mapped:
                _advise(part, _MADV_DONTNEED)
    finally:
        files.close()
