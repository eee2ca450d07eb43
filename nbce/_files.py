"""Open ``.npy`` files, ``.npz`` members and safetensors tensors as memory maps, never reading them whole.

Every size is checked before anything is mapped or inflated: the header's
shape times the item size (Python integers: no overflow, no NumPy warning)
must fit in the bytes the file, or the zip member, holds.

A safetensors file is an 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": ...}``
and the tensors' bytes, offsets counted from the header's end.  nbce reads
that header itself: the ``safetensors`` library's NumPy reader has no
bfloat16 (and would copy), and its torch reader needs torch.
"""

import json
import os
import stat
import threading
import zipfile
import zlib
from math import prod

import numpy as np
from numpy.lib import format as npy_format

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_LOCAL_HEADER = 30  # bytes of a zip local file header before its name and extra field
# Compressed members (np.savez_compressed) are inflated into memory: at most
# this many bytes, so that a small archive cannot ask for gigabytes (a
# "decompression bomb").  Larger arrays belong in np.save / np.savez files,
# which are memory-mapped instead.
MAX_INFLATED_BYTES = 2**30
_INFLATE_STEP = 2**20  # bytes inflated per read
CHECKSUM_STEP = 2**24  # bytes read per step of a stored member's CRC-32
# safetensors dtype names -> NumPy (all little-endian); BF16 needs ml_dtypes.
_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
                       "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}
# A header larger than this is not a safetensors file (the format caps it at 100 MB).
_MAX_SAFETENSORS_HEADER = 100_000_000
_MAX_BYTES = np.iinfo(np.intp).max
_MAX_DIMENSIONS = 64  # NumPy's
_SAFETENSORS_SUFFIX = ".safetensors"
_HEADER_READERS = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}


class InputError(ValueError):
    """A file argument that cannot be read as an array."""


def open_array(spec, checks=None):
    """A read-only array for ``path.npy``, ``path.npz:key`` or ``path.safetensors:key``
    (no key when the file holds one array).

    ``.npy`` files and uncompressed ``.npz`` members (``np.savez``) are
    memory-mapped; compressed members (``np.savez_compressed``) are inflated
    into memory, since they cannot be mapped, up to ``MAX_INFLATED_BYTES``.
    Only regular files are opened (a FIFO or a device would block or never end).

    ``checks``: a list that receives, for an uncompressed ``.npz`` member, a
    started ``MemberChecksum`` (its CRC-32 computed beside whatever reads the
    array; call ``verify()`` before trusting a result).  Compressed members
    are checked as they are inflated.
    """
    path, key = _split_spec(spec)
    with _open_regular(path) as f:  # every later read goes through f, the file that was checked
        if path.lower().endswith(_SAFETENSORS_SUFFIX):
            return _safetensors_member(f, path, key)
        magic = f.read(6)
        f.seek(0)
        if magic.startswith(_NPY_MAGIC):
            if key is not None:
                raise InputError(f"{path}: a .npy file holds one array; drop ':{key}'")
            return _map(f, path, os.fstat(f.fileno()).st_size)
        if magic.startswith(_ZIP_MAGIC):
            return _npz_member(f, path, key, checks)
    raise InputError(f"{path}: not a .npy or .npz file (expected NumPy's format, see numpy.save; a safetensors file needs its .safetensors suffix)")


def _open_regular(path):
    """``open(path, "rb")`` for a regular file; InputError naming what else it is."""
    try:
        mode = os.stat(path).st_mode  # before opening: opening a FIFO blocks
        if stat.S_ISDIR(mode):
            raise InputError(f"{path}: is a directory, expected a .npy or .npz file")
        if not stat.S_ISREG(mode):
            raise InputError(f"{path}: not a regular file (a pipe, socket or device?), expected a .npy or .npz file")
        # O_NONBLOCK: should the path have become a FIFO since, opening it does not wait for a writer
        f = open(path, "rb", opener=lambda name, flags: os.open(name, flags | os.O_NONBLOCK))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as error:  # a symlink loop, no permission, ...
        raise InputError(f"{path}: cannot open ({error.strerror})") from None
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise InputError(f"{path}: not a regular file, expected a .npy or .npz file")
    return f


def _split_spec(spec):
    """'a.npz:key' -> ('a.npz', 'key'); 'a.safetensors:key' and 'a.npy:key' too (to say that
    .npy has no keys); else (spec, None)."""
    head, sep, tail = spec.rpartition(":")
    if sep and head.lower().endswith((".npz", ".npy", _SAFETENSORS_SUFFIX)) and tail and not os.path.lexists(spec):
        return head, tail
    return spec, None


def _read_header(f, label):
    """(shape, fortran_order, dtype, nbytes) of the .npy data at ``f``'s position, which ends at the header."""
    try:
        version = npy_format.read_magic(f)
        read_header = _HEADER_READERS.get(version)
        if read_header is None:
            raise InputError(f"{label} uses .npy format {version}, which nbce cannot read (1.0 and 2.0 only)")
        shape, fortran_order, dtype = read_header(f)
    except InputError:
        raise
    except (ValueError, EOFError) as error:  # a damaged or foreign header
        raise InputError(f"{label}: not a readable .npy array ({error})") from None
    if dtype.hasobject:
        raise InputError(f"{label} holds Python objects, not numbers")
    _check_shape(label, shape, dtype.itemsize)
    return shape, fortran_order, dtype, prod(shape) * dtype.itemsize


def _check_shape(label, shape, itemsize):
    """InputError for a declared shape NumPy cannot make: a negative length, more
    than 64 axes, or lengths whose non-zero ones span more bytes than an index
    reaches (an array with a zero length holds no bytes, so the size checks
    let it through, but NumPy refuses to make it)."""
    if any(n < 0 for n in shape):
        raise InputError(f"{label}: its header declares the shape {shape}, with a negative length")
    if len(shape) > _MAX_DIMENSIONS or prod(n for n in shape if n) * itemsize > _MAX_BYTES:
        raise InputError(f"{label}: its header declares the shape {shape}, beyond NumPy's limits "
                         f"(at most {_MAX_DIMENSIONS} axes, whose non-zero lengths span at most "
                         f"{_MAX_BYTES:,} bytes)")


def _check_size(label, shape, dtype, nbytes, available, exact=False):
    """InputError unless the ``nbytes`` a header declares fit in (or, ``exact``, are) the ``available`` bytes."""
    if nbytes > available or (exact and nbytes != available):
        raise InputError(f"{label}: its header declares a {shape} {dtype} array ({nbytes:,} bytes), but "
                         f"{available:,} bytes follow the header (a truncated or damaged file)")


def _map(f, label, end):
    """Map the .npy data at the position of the file ``f``, whose bytes end at offset ``end``."""
    shape, fortran_order, dtype, nbytes = _read_header(f, label)
    offset = f.tell()
    _check_size(label, shape, dtype, nbytes, end - offset)
    if nbytes == 0:
        return np.empty(shape, dtype=dtype)
    return np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran_order else "C")


def _npz_member(f, path, key, checks=None):
    try:
        archive = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise InputError(f"{path}: not a readable .npz file ({error})") from None
    with archive:
        key = _choose(path, key, [n[:-4] for n in archive.namelist() if n.endswith(".npy")], "array")
        info = archive.getinfo(key + ".npy")
        label = f"{path}:{key}"
        if info.compress_type == zipfile.ZIP_STORED:
            return _mapped_member(f, info, label, checks)
        if info.compress_type != zipfile.ZIP_DEFLATED:
            raise InputError(f"{label} uses zip compression method {info.compress_type}; nbce reads "
                             "NumPy's own: stored (np.savez) or deflated (np.savez_compressed)")
        try:
            return _inflate(archive, info, label)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:  # damaged data, a bad CRC
            raise InputError(f"{label}: a damaged .npz member ({error})") from None


def _choose(path, key, names, what):
    """``key``, or the one name when ``key`` is None; InputError listing ``names`` otherwise."""
    if key is None:
        if len(names) != 1:
            raise InputError(f"{path} holds {len(names)} {what}s ({', '.join(names)}): name one as {path}:KEY")
        key = names[0]
    if key not in names:
        raise InputError(f"{path} has no {what} {key!r}; it holds: {', '.join(names) or 'none'}")
    return key


def _mapped_member(f, info, label, checks=None):
    """Map an uncompressed member: its bytes are a .npy file inside the zip file ``f``
    (and start its checksum when ``checks`` is a list, see ``open_array``)."""
    f.seek(info.header_offset)
    header = f.read(_LOCAL_HEADER)
    if len(header) < _LOCAL_HEADER or not header.startswith(_ZIP_MAGIC):
        raise InputError(f"{label}: a damaged .npz member (no local header at byte {info.header_offset})")
    name_length = int.from_bytes(header[26:28], "little")
    extra_length = int.from_bytes(header[28:30], "little")
    start = info.header_offset + _LOCAL_HEADER + name_length + extra_length
    f.seek(start)
    array = _map(f, label, min(start + info.file_size, os.fstat(f.fileno()).st_size))
    if checks is not None:
        checks.append(MemberChecksum(f, start, info.file_size, info.CRC, label))
    return array


class MemberChecksum:
    """The CRC-32 of a stored ``.npz`` member, computed on a thread of its own
    from a duplicate of the file's descriptor, ``CHECKSUM_STEP`` bytes per read
    (zlib releases the GIL while it sums: the scoring runs on meanwhile), and
    compared with the archive's record by ``verify``.

    A stored member is memory-mapped, never read whole, so nothing else would
    notice damaged bytes: they would be scored as logits."""

    def __init__(self, f, start, size, expected, label):
        self.label, self._expected, self._found, self._error = label, expected, None, None
        self._descriptor = os.dup(f.fileno())
        self._thread = threading.Thread(target=self._run, args=(start, size), name="nbce-npz-crc", daemon=True)
        try:
            self._thread.start()
        except BaseException:
            os.close(self._descriptor)
            raise

    def _run(self, start, size):
        try:
            crc, done = 0, 0
            while done < size:
                piece = os.pread(self._descriptor, min(CHECKSUM_STEP, size - done), start + done)
                if not piece:
                    self._error = f"the file ends {size - done:,} bytes before the member's end"
                    return
                crc = zlib.crc32(piece, crc)
                done += len(piece)
            self._found = crc
        except OSError as error:
            self._error = f"cannot read it ({error.strerror or error})"
        except BaseException as error:  # noqa: BLE001 - reported by verify, in the caller's thread
            self._error = f"its checksum failed ({type(error).__name__}: {error})"
        finally:
            os.close(self._descriptor)

    def verify(self):
        """Wait for the checksum; InputError when the member's bytes are not the archive's."""
        self._thread.join()
        if self._error is not None or self._found is None:
            raise InputError(f"{self.label}: a damaged .npz member ({self._error or 'no checksum'})")
        if self._found != self._expected:
            raise InputError(f"{self.label}: a damaged .npz member (CRC-32 {self._found:08x}, "
                             f"the archive records {self._expected:08x})")


def _inflate(archive, info, label):
    """Read a deflated member into memory, ``_INFLATE_STEP`` bytes at a time, after
    checking its header's size against the member's and ``MAX_INFLATED_BYTES``."""
    with archive.open(info) as member:
        shape, fortran_order, dtype, nbytes = _read_header(member, label)
        # exactly: the last read then reaches the member's end, where zipfile checks the CRC
        _check_size(label, shape, dtype, nbytes, info.file_size - member.tell(), exact=True)
        if nbytes > MAX_INFLATED_BYTES:
            raise InputError(f"{label} inflates to {nbytes:,} bytes, over nbce's limit of {MAX_INFLATED_BYTES:,} "
                             "for compressed arrays: store it uncompressed (np.save or np.savez), "
                             "which nbce memory-maps")
        array = np.empty(shape, dtype=dtype, order="F" if fortran_order else "C")
        data = array.reshape(-1, order="A").view(np.uint8)
        for start in range(0, nbytes, _INFLATE_STEP):
            step = data[start:start + _INFLATE_STEP]
            if member.readinto(step) != step.size:
                raise InputError(f"{label}: a damaged .npz member (its data end early)")
    return array


def _safetensors_member(f, path, key):
    """Map one tensor of a safetensors file (see the module docstring), after checking
    that the header is JSON of the format's shape and the tensor's bytes fit the file."""
    size = os.fstat(f.fileno()).st_size
    prefix = f.read(8)
    length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
    if not 2 <= length <= min(size - 8, _MAX_SAFETENSORS_HEADER):
        raise InputError(f"{path}: not a readable safetensors file (no header length that fits its {size:,} bytes)")
    try:
        header = json.loads(f.read(length))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not a readable safetensors file ({error})") from None
    header.pop("__metadata__", None)
    key = _choose(path, key, sorted(header), "tensor")
    label = f"{path}:{key}"
    entry = header[key]
    try:
        name, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        if not all(isinstance(n, int) and n >= 0 for n in (*shape, begin, end)) or begin > end:
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{label}: a damaged safetensors header entry ({entry!r})") from None
    dtype = _safetensors_dtype(name, label)
    _check_shape(label, shape, dtype.itemsize)
    nbytes = prod(shape) * dtype.itemsize
    start = 8 + length + begin
    if nbytes != end - begin:
        raise InputError(f"{label}: its header declares a {shape} {name} tensor ({nbytes:,} bytes) in "
                         f"{end - begin:,} bytes (a damaged file)")
    _check_size(label, shape, name, nbytes, size - start)
    if nbytes == 0:
        return np.empty(shape, dtype=dtype)
    return np.memmap(f, dtype=dtype, mode="r", offset=start, shape=shape)


def _safetensors_dtype(name, label):
    if name == "BF16":
        try:
            import ml_dtypes
        except ImportError:
            raise InputError(f"{label} is bfloat16, which needs ml_dtypes: pip install 'nbce[bf16]'") from None
        return np.dtype(ml_dtypes.bfloat16)
    if name not in _SAFETENSORS_DTYPES:
        raise InputError(f"{label} has dtype {name}, which nbce does not read "
                         f"(it reads {', '.join(['BF16', *_SAFETENSORS_DTYPES])})")
    return np.dtype(_SAFETENSORS_DTYPES[name])
