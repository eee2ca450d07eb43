"""Open ``.npy`` files and ``.npz`` members as memory maps, never reading them whole."""

import os
import zipfile

import numpy as np
from numpy.lib import format as npy_format

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_LOCAL_HEADER = 30  # bytes of a zip local file header before its name and extra field


class InputError(ValueError):
    """A file argument that cannot be read as an array."""


def open_array(spec):
    """A read-only array for ``path.npy`` or ``path.npz:key`` (``path.npz`` when it holds one array).

    ``.npy`` files and uncompressed ``.npz`` members (``np.savez``) are
    memory-mapped; compressed members (``np.savez_compressed``) are read into
    memory, since they cannot be mapped.
    """
    path, key = _split_spec(spec)
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    if os.path.isdir(path):
        raise InputError(f"{path}: is a directory, expected a .npy or .npz file")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(_NPY_MAGIC):
        if key is not None:
            raise InputError(f"{path}: a .npy file holds one array; drop ':{key}'")
        try:
            return np.load(path, mmap_mode="r")
        except ValueError as error:
            raise InputError(f"{path}: not a readable .npy file ({error})") from None
    if magic.startswith(_ZIP_MAGIC):
        return _npz_member(path, key)
    raise InputError(f"{path}: not a .npy or .npz file (expected NumPy's format, see numpy.save)")


def _split_spec(spec):
    """'a.npz:key' -> ('a.npz', 'key'); anything else -> (spec, None)."""
    head, sep, tail = spec.rpartition(":")
    if sep and head.lower().endswith(".npz") and tail:
        return head, tail
    return spec, None


def _npz_member(path, key):
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise InputError(f"{path}: not a readable .npz file") from None
    with archive:
        names = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
        if key is None:
            if len(names) != 1:
                raise InputError(f"{path} holds {len(names)} arrays ({', '.join(names)}): name one as {path}:KEY")
            key = names[0]
        if key not in names:
            raise InputError(f"{path} has no array {key!r}; it holds: {', '.join(names) or 'none'}")
        info = archive.getinfo(key + ".npy")
        if info.compress_type != zipfile.ZIP_STORED:
            with archive.open(info) as member:
                return np.lib.format.read_array(member)
    return _mapped_member(path, info)


def _mapped_member(path, info):
    """Map an uncompressed member: its bytes are a .npy file inside the zip file."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(_LOCAL_HEADER)
        name_length = int.from_bytes(header[26:28], "little")
        extra_length = int.from_bytes(header[28:30], "little")
        start = info.header_offset + _LOCAL_HEADER + name_length + extra_length
        f.seek(start)
        version = npy_format.read_magic(f)
        read_header = {(1, 0): npy_format.read_array_header_1_0,
                       (2, 0): npy_format.read_array_header_2_0}.get(version)
        if read_header is None:
            raise InputError(f"{path}:{info.filename[:-4]} uses .npy format {version}, which nbce cannot map")
        shape, fortran_order, dtype = read_header(f)
        offset = f.tell()
    if dtype.hasobject:
        raise InputError(f"{path}:{info.filename[:-4]} holds Python objects, not numbers")
    if 0 in shape:
        return np.empty(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                     order="F" if fortran_order else "C")
