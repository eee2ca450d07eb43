"""Host arrays -> what the CPU kernels read: storage dtype and row geometry.

Half-precision storage convention (``nbce.cpu._bits``): float16 words are
passed as ``int16``, bfloat16 (``ml_dtypes.bfloat16``) words as ``uint16``;
the kernels widen them to float32 in registers, so no float32 copy exists.
"""

import sys
from dataclasses import dataclass
from math import prod

import numpy as np
from numpy.lib.stride_tricks import as_strided

# dtype name -> the integer view the kernels read
_HALF_STORAGE = {"float16": np.int16, "bfloat16": np.uint16}
_FLOAT_NAMES = ("float64", "float32", "float16", "bfloat16")


def _bfloat16():
    try:
        import ml_dtypes
    except ImportError:
        raise RuntimeError("bfloat16 needs ml_dtypes: pip install 'nbce[bf16]'") from None
    return np.dtype(ml_dtypes.bfloat16)


def host_array(values):
    """``values`` as an ndarray, without copying NumPy arrays, memory maps or
    PyTorch CPU tensors.

    A CPU tensor becomes a NumPy view of its memory, strides included
    (``Tensor.numpy()``), detached first when it requires grad; a bfloat16
    tensor, which NumPy cannot describe, is viewed as its 16-bit words and
    those as ``ml_dtypes.bfloat16``.  torch is never imported here: a tensor
    exists only once the caller has imported it.
    """
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(values, torch.Tensor) or values.device.type != "cpu":
        return np.asarray(values)
    tensor = values.detach().resolve_conj().resolve_neg()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(_bfloat16())
    return tensor.numpy()


def writable_host_array(values, name="out"):
    """A caller's result array as an ndarray viewing its memory: a NumPy array
    (a memory map included) or a PyTorch CPU tensor.  ``TypeError`` for
    anything else, ``ValueError`` when read-only."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(values, torch.Tensor) and values.device.type == "cpu":
        array = host_array(values)
    elif isinstance(values, np.ndarray):
        array = values
    else:
        where = f" on {values.device}" if torch is not None and isinstance(values, torch.Tensor) else ""
        raise TypeError(f"{name} must be a NumPy array or a PyTorch CPU tensor for host input, got "
                        f"{type(values).__module__}.{type(values).__name__}{where}")
    if not array.flags.writeable:
        raise ValueError(f"{name} is read-only")
    return array


def result_dtype(dtype):
    """float64 for float64 input, float32 for every narrower float."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def _raw_halves(dtype):
    """True for 2-byte data with no meaning of its own: void (what ``np.save`` writes
    for ``ml_dtypes.bfloat16``), uint16, int16."""
    return dtype.itemsize == 2 and (dtype.kind in "iu" or (dtype.kind == "V" and dtype.names is None))


_DTYPE_NAMES = {}
_MAX_DTYPE_NAMES = 64


def dtype_name(dtype):
    """``dtype.name``, remembered per dtype: NumPy builds the string anew on each
    access (about 1 us, paid several times by every small call)."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = dtype.name
        if len(_DTYPE_NAMES) < _MAX_DTYPE_NAMES:  # structured dtypes made afresh per call must not pile up
            _DTYPE_NAMES[dtype] = name
    return name


def as_float_array(values, name):
    """``values`` as an ndarray of a supported float dtype (no copy when possible)."""
    array = host_array(values)
    if dtype_name(array.dtype) not in _FLOAT_NAMES:
        hint = ""
        if _raw_halves(array.dtype) and array.dtype.kind == "V":
            hint = (" (raw 2-byte values, as np.save writes ml_dtypes.bfloat16 arrays: read them as bfloat16 "
                    "with dtype='bfloat16' in nbce.evaluate, --dtype bfloat16 in nbce score, "
                    "or .view(ml_dtypes.bfloat16))")
        raise TypeError(
            f"{name} must be a floating-point array (float64, float32, float16 or bfloat16), "
            f"got dtype {array.dtype}{hint}"
        )
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array


def reinterpret(array, dtype, name="logits"):
    """``array``'s memory read as ``dtype`` ("bfloat16"): a view, no copy (a
    copy in native byte order for words stored in the other order).

    Reads 2-byte void, uint16 or int16 data (a file of bfloat16 words) as
    ``ml_dtypes.bfloat16``; an array that already is bfloat16 is returned as
    it is.  Anything else is a ``TypeError`` naming its dtype: float16 data
    are not reinterpreted (they are float16 already).
    """
    if dtype is None:
        return array
    if dtype != "bfloat16":
        raise ValueError(f"dtype must be None or 'bfloat16', got {dtype!r}")
    if not isinstance(array, np.ndarray):
        raise TypeError(f"dtype='bfloat16' reinterprets host NumPy arrays; {name} is a {type(array).__name__}")
    if array.dtype.name == "bfloat16":
        return array
    if not _raw_halves(array.dtype):
        raise TypeError(f"dtype='bfloat16' reads raw 2-byte values (void, uint16 or int16) as bfloat16, but {name} "
                        f"has dtype {array.dtype} ({array.dtype.itemsize} bytes an item)")
    if not array.dtype.isnative:  # big-endian words: swapped into native order (a copy), as for other dtypes
        array = array.astype(array.dtype.newbyteorder("="))
    return array.view(_bfloat16())


def as_weight_array(values, name):
    """Weights as an ndarray: a supported float dtype as it is (``as_float_array``),
    integers and booleans as float64 (PyTorch takes integer weights too)."""
    array = host_array(values)
    if array.dtype.kind in "iub":
        return array.astype(np.float64)
    if array.dtype.kind != "f" and dtype_name(array.dtype) != "bfloat16":
        raise TypeError(f"{name} must be a real array (floating-point, integer or boolean), got dtype {array.dtype}")
    return as_float_array(array, name)


def storage_view(array):
    """The same memory with the dtype the kernels read (16-bit words for halves)."""
    word = _HALF_STORAGE.get(dtype_name(array.dtype))
    return array.view(word) if word is not None else array


@dataclass(frozen=True)
class Rows:
    """A strided operand seen as ``n_rows`` rows of ``length`` elements.

    ``base`` is a read-only 1-D view spanning the operand's memory; ``geom`` is
    ``[step, ndim, *batch_shape, *batch_strides]`` in elements (see
    ``nbce.cpu.kernels``).  ``batch_shape`` is the shape without the row axis.
    """

    base: np.ndarray
    geom: np.ndarray
    batch_shape: tuple
    length: int

    @property
    def n_rows(self):
        return prod(self.batch_shape)


def _coalesce(shape, strides):
    """Drop unit dimensions and merge neighbours that are one in memory."""
    dims = [(n, s) for n, s in zip(shape, strides) if n != 1]
    merged = []
    for n, s in dims:
        if merged and merged[-1][1] == n * s:
            merged[-1] = (merged[-1][0] * n, s)
        else:
            merged.append((n, s))
    return [n for n, _ in merged], [s for _, s in merged]


def as_rows(array, axis, stream=None):
    """Rows of ``array`` along ``axis`` without copying, for any strides.

    Copies only arrays with negative strides or strides that are not a
    multiple of the item size.  ``stream`` matches the CUDA backend's
    signature; host rows need none.
    """
    array = storage_view(array)
    itemsize = array.itemsize
    if any(s < 0 or s % itemsize for s in array.strides):
        array = np.ascontiguousarray(array)
    return _strided_rows(array, axis, writeable=False)


def output_rows(array, axis):
    """Writable rows of a result array along ``axis``: its own memory, never a
    copy.  The caller has checked that its strides are positive multiples of
    the item size (``nbce._checks.check_out_layout``)."""
    return _strided_rows(array, axis, writeable=True)


def row_layout(shape, strides, axis, itemsize):
    """(batch shape, length, class step, coalesced batch shape, its strides):
    the rows of an array of ``shape`` and byte ``strides`` along ``axis``,
    strides in elements (see ``Rows``); a negative ``axis`` counts from the end."""
    axis = axis % len(shape)
    element_strides = [s // itemsize for s in strides]
    batch = [n for k, n in enumerate(shape) if k != axis]
    batch_strides = [s for k, s in enumerate(element_strides) if k != axis]
    length = shape[axis]
    step = element_strides[axis] if length > 1 else 1
    coalesced, coalesced_strides = _coalesce(batch, batch_strides)
    return tuple(batch), length, step, coalesced, coalesced_strides


def _strided_rows(array, axis, writeable):
    batch_shape, length, step, shape, strides = row_layout(array.shape, array.strides, axis, array.itemsize)
    if array.size == 0:
        # Flagged as below (inputs read-only, outputs writable): the kernels are
        # compiled once per dtype, and a writable empty input would cost a
        # specialization of its own.
        base = np.empty(0, dtype=array.dtype)
        base.flags.writeable = writeable
    elif type(array) is np.ndarray and array.flags.c_contiguous:
        # A flat view without as_strided's few microseconds; not for subclasses
        # (an np.matrix stays 2-D when reshaped).
        base = array.reshape(-1)
        if not writeable:
            base.flags.writeable = False
    else:
        span = 1 + sum((n - 1) * s // array.itemsize for n, s in zip(array.shape, array.strides))
        base = as_strided(array, shape=(span,), strides=(array.itemsize,), writeable=writeable)
    geom = np.array([step, len(shape), *shape, *strides], dtype=np.int64)
    return Rows(base, geom, batch_shape, length)


def normalize_axis(axis, ndim, name="logits"):
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis must be an integer, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for {name} with {ndim} dimension(s)")
    return int(axis) % ndim
