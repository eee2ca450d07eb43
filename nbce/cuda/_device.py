"""The one place that imports ``numba.cuda`` (numba-cuda may be replaced by its successor).

Everything CUDA-specific that the rest of nbce needs goes through here: the
kernel decorator, the simulator switch, device-array recognition and
conversion, streams.
"""

import collections
import contextlib
import math
import os
import threading
import warnings

import numpy as np
from numba import config, cuda

SIMULATOR = bool(config.ENABLE_CUDASIM)
jit = cuda.jit
compile_ptx = None if SIMULATOR else cuda.compile_ptx
# Kernels refer to thread indices, shared memory and atomics as ``cuda.<name>``
# through this module object: the simulator swaps a module bound to the
# global name ``cuda`` while it runs a kernel.
__all__ = ["cuda", "jit", "compile_ptx", "SIMULATOR"]

# Lanes per warp, and the mask of all of them for the warp shuffles.
WARP = 32
FULL_MASK = 0xFFFFFFFF


_usable = []  # True once a GPU was found: it stays usable for the process's life


def available():
    if SIMULATOR or _usable:
        return True
    if cuda.is_available():
        _usable.append(True)
        return True
    return False


def is_numba_device_array(obj):
    if SIMULATOR:
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        return isinstance(obj, FakeCUDAArray)
    return cuda.devicearray.is_cuda_ndarray(obj)


def to_device(array, stream=0):
    return cuda.to_device(array, stream=stream)


if SIMULATOR:
    def copy_to_device(destination, host, stream=0):
        """Copy the host array ``host`` into the device array ``destination`` on ``stream``."""
        destination.copy_to_device(host, stream=stream)

    def copy_to_host(destination, source, stream=0):
        """Copy the device array ``source`` into the host array ``destination`` on ``stream``."""
        source.copy_to_host(destination, stream=stream)

    def context():
        return contextlib.nullcontext()
else:
    from numba.cuda.cudadrv import driver as _driver

    # Both arrays are contiguous and of equal size (the callers' own buffers),
    # so the copies go straight to the driver: the device array's own methods
    # check and re-derive both layouts, a few tens of µs per small copy.
    def copy_to_device(destination, host, stream=0):
        """Copy the contiguous host array ``host`` into the contiguous device array
        ``destination`` of the same size on ``stream``."""
        if host.nbytes:
            _driver.host_to_device(destination, host.ctypes.data, host.nbytes, stream)

    def copy_to_host(destination, source, stream=0):
        """Copy the contiguous device array ``source`` into the contiguous host
        array ``destination`` of the same size on ``stream``."""
        if destination.nbytes:
            _driver.device_to_host(destination.ctypes.data, source, destination.nbytes, stream)

    try:  # numba-cuda's per-thread context lookup, entered once per call
        from numba.cuda.cudadrv.devices import _runtime

        context = _runtime.ensure_context
    except (ImportError, AttributeError):
        def context():
            return contextlib.nullcontext()



def device_empty(shape, dtype, stream=0):
    return cuda.device_array(shape, dtype=dtype, stream=stream)


def as_device_array(obj, stream=None):
    """A Numba device array viewing ``obj``'s memory (no copy).

    Objects that speak only DLPack go through CuPy, which reads DLPack and
    exports the CUDA array interface.  When the interface names the stream
    that produced the data: with ``stream`` (where nbce will launch), work on
    ``stream`` is ordered after the producer's without blocking the host (no
    ordering is needed when they are the same stream); without it, the
    producer's stream is synchronized, as numba-cuda does by default.
    """
    if is_numba_device_array(obj):
        return obj
    # A torch tensor builds its interface dict on every access: read it once.
    interface = obj.__cuda_array_interface__ if type(obj).__module__ == "torch" else None
    if interface is None and not hasattr(obj, "__cuda_array_interface__") and hasattr(obj, "__dlpack__"):
        try:
            import cupy
        except ImportError:
            raise TypeError(
                f"{type(obj).__name__} exposes CUDA memory only through DLPack; install CuPy to pass it to nbce"
            ) from None
        obj = cupy.from_dlpack(obj)
    if SIMULATOR or stream is None:
        return cuda.as_cuda_array(obj)
    interface = interface or obj.__cuda_array_interface__
    producer = interface.get("stream")
    if producer is not None:  # ordered here, below: numba-cuda would wrap the producer's stream on every call
        interface = {key: value for key, value in interface.items() if key != "stream"}
    array = cuda.from_cuda_array_interface(interface, owner=obj, sync=False)
    if producer is not None and _stream_handle(producer) != stream_key(stream):
        ready = cuda.event(timing=False)
        ready.record(external_stream(producer))
        ready.wait(stream)
    return array


def _stream_handle(producer):
    """The interface's stream as ``stream_key`` names it: 1 and 2 (the legacy
    and per-thread default streams) are the default stream, 0."""
    return 0 if producer in (1, 2) else int(producer)


def address(array):
    """The device address of ``array``'s first element."""
    if SIMULATOR:
        return array._ary.ctypes.data
    return array.device_ctypes_pointer.value or 0


def _interface_address(array):
    if SIMULATOR:
        return array._ary.ctypes.data
    return array.__cuda_array_interface__["data"][0]


def strided_view(array, offset, shape, strides):
    """A device array over ``array``'s memory, no copy: ``shape`` with byte
    ``strides`` (non-negative), starting ``offset`` bytes from ``array``'s
    first element (negative to reach memory before it)."""
    start = _interface_address(array) + offset
    if SIMULATOR:
        import ctypes

        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        memory = array._ary  # keeps the owner alive when the view starts at its first element
        if offset:
            extent = sum((n - 1) * s for n, s in zip(shape, strides)) + array.itemsize
            memory = np.frombuffer((ctypes.c_char * extent).from_address(start), dtype=array.dtype)
        return FakeCUDAArray(np.lib.stride_tricks.as_strided(memory, shape, strides))
    interface = {"shape": tuple(shape), "strides": tuple(strides), "data": (start, False),
                 "typestr": array.dtype.str, "version": 3}
    return cuda.from_cuda_array_interface(interface, owner=array, sync=False)


def stream():
    return cuda.stream()


def pinned_empty(shape, dtype):
    """Page-locked host memory: copies from it run asynchronously on a stream."""
    return cuda.pinned_array(shape, dtype=dtype)


def event():
    return cuda.event()


def elapsed_ms(start, stop):
    """Milliseconds between two recorded events (None on the simulator, which has no clock)."""
    return None if SIMULATOR else cuda.event_elapsed_time(start, stop)


_external_streams = {}


def external_stream(handle):
    """numba-cuda's wrapper of a stream made elsewhere; one per handle (a wrapper holds only the handle)."""
    found = _external_streams.get(handle)
    if found is None:
        found = cuda.external_stream(handle)
        if len(_external_streams) < 1024:
            _external_streams[handle] = found
    return found


def stream_key(stream):
    """An integer naming ``stream`` (0 for the default stream), stable across wrappers of one handle."""
    if SIMULATOR or not stream:
        return 0
    handle = stream.handle
    try:
        return int(handle)  # numba-cuda's CUstream handles
    except TypeError:
        return int(handle.value or 0)  # ctypes handles


def device_name():
    """The current GPU's name, as text."""
    name = cuda.get_current_device().name
    return name.decode() if isinstance(name, bytes) else str(name)


def current_device_id():
    return 0 if SIMULATOR else cuda.get_current_device().id


def current_device(device_id):
    """A context in which GPU ``device_id`` is the current one."""
    if SIMULATOR or device_id == current_device_id():
        return contextlib.nullcontext()
    return cuda.gpus[device_id]


def launch_bounds(threads, blocks):
    """``jit`` options promising at most ``threads`` per block and asking for
    ``blocks`` resident blocks per multiprocessor, which caps the registers a
    thread may use (none asked for when ``blocks`` is 0, and none on the simulator)."""
    if SIMULATOR or not blocks:
        return {}
    return {"launch_bounds": (threads, blocks)}


# Launch configurations kept for reuse: numba-cuda builds one (and converts
# the stream) on every ``kernel[grid, block, stream]``.
_CONFIGURED_KEPT = 512
try:  # numba-cuda's own warning class (older releases raise numba's)
    from numba.cuda.core.errors import NumbaPerformanceWarning
except ImportError:
    from numba.core.errors import NumbaPerformanceWarning
_configured = collections.OrderedDict()
_configured_lock = threading.Lock()


def configure(kernel, blocks, threads, stream=0):
    """``kernel[blocks, threads, stream]``, built once per (kernel, grid, block, stream).

    nbce sizes its grids to its rows, so numba-cuda's warning about grids
    under 128 blocks is not shown to users (it is only raised while building).
    """
    if SIMULATOR:  # the simulator's configured kernel is the kernel itself, reconfigured in place
        return kernel[blocks, threads, stream]
    key = (id(kernel), blocks, threads, stream_key(stream))
    found = _configured.get(key)
    if found is None:
        with _configured_lock, warnings.catch_warnings():
            warnings.simplefilter("ignore", NumbaPerformanceWarning)
            found = _configured[key] = kernel[blocks, threads, stream]
            while len(_configured) > _CONFIGURED_KEPT:
                _configured.popitem(last=False)
    return found


def launch(kernel, blocks, threads, stream, args):
    """``kernel[blocks, threads, stream](*args)``, by the direct path where it can."""
    direct = _direct.get(kernel)
    if direct is None:
        direct = _direct[kernel] = DirectKernel(kernel) if DIRECT_LAUNCH else None
    if direct is None:
        _record_other_launch()
        configure(kernel, blocks, threads, stream)(*args)
    else:
        direct.launch(blocks, threads, stream, args)


_direct = {}
_recorder = threading.local()


@contextlib.contextmanager
def recording_launches():
    """A list that receives (function handle, blocks, threads, stream key,
    argument words) for each launch of this thread's block by the direct
    path, and None for each launch that took numba-cuda's own path."""
    launches = []
    outer = getattr(_recorder, "launches", None)
    _recorder.launches = launches
    try:
        yield launches
    finally:
        _recorder.launches = outer


def _record_other_launch():
    recording = getattr(_recorder, "launches", None)
    if recording is not None:
        recording.append(None)


# Direct launches.  numba-cuda's launch path costs about 5 µs per argument on
# every call: it re-derives each argument's Numba type, wraps every array in a
# memory view and converts the stream.  A DirectKernel looks the compiled
# kernel up once per argument signature (a cheap key: per array its dtype,
# ndim and layout; per scalar its type), then lays the arguments out as the
# compiled kernel receives them -- per array (meminfo, parent, size,
# itemsize, data, *shape, *strides) as in numba-cuda's ``_prepare_args`` --
# every one an 8-byte word (a float as its bits; a bool's kernel parameter
# is the word's low byte), and launches.  Only where numba-cuda has the
# pieces this relies on (cuda.core launches, 0.30 and later); else every
# launch takes numba-cuda's own path.
#
# With ``NBCE_CUDA_RAW_LAUNCH=1`` the words go to the driver's cuLaunchKernel
# in one int64 array with an array of pointers to them (the driver copies the
# parameters at the launch, so both are free as soon as it returns) instead
# of through cuda.core's ``launch``, which converts each of the row kernel's
# hundred-odd words on its own.  Both give the same bits on an H200; which is
# faster was not settled there (separate processes on a noisy host), so
# cuda.core stays the default until ``benchmarks.gpu_table`` (which times
# both in one process) says otherwise.
DIRECT_LAUNCH = False
RAW_LAUNCH_AVAILABLE = False
RAW_LAUNCH = False
if not SIMULATOR:
    try:
        from cuda.core import LaunchConfig as _LaunchConfig
        from cuda.core import launch as _core_launch
        from numba.cuda._compat import CUDA_CORE_GE_1_0 as _CORE_1
        from numba.cuda.cudadrv.driver import _to_core_stream
        from numba.cuda.dispatcher import _Kernel

        DIRECT_LAUNCH = hasattr(_Kernel, "_prepare_args") and os.environ.get("NBCE_CUDA_DIRECT_LAUNCH", "1") != "0"
    except ImportError:
        pass
    try:
        from cuda.bindings import driver as _bindings

        RAW_LAUNCH_AVAILABLE = DIRECT_LAUNCH
        RAW_LAUNCH = RAW_LAUNCH_AVAILABLE and os.environ.get("NBCE_CUDA_RAW_LAUNCH", "0") == "1"
    except ImportError:
        pass

_INT64 = (-(2**63), 2**63 - 1)
_NOT_YET = object()
_KEPT = 1024  # launch configurations and streams kept per kernel
_WORD = 8


def _array_layout(array):
    """The layout letter Numba types a device array with (as its ``_numba_type_``)."""
    flags = array.flags
    broadcast = 0 in array.strides and array.size != 0
    if flags["C_CONTIGUOUS"] and not broadcast:
        return "C"
    if flags["F_CONTIGUOUS"] and not broadcast:
        return "F"
    return "A"


def _array_fields(array):
    """(signature key, kernel argument words) of a Numba device array, kept
    on the array: its shape, strides and address never change."""
    found = array.__dict__.get("_nbce_fields")
    if found is None:
        pointer = array.device_ctypes_pointer.value or 0
        key = (array.dtype, len(array.shape), _array_layout(array))
        words = (0, 0, array.size, array.dtype.itemsize, pointer, *array.shape, *array.strides)
        found = array.__dict__["_nbce_fields"] = (key, words)
    return found


def _float_bits(value):
    """The float64 ``value``'s bits as a signed 64-bit integer."""
    return int(np.float64(value).view(np.int64))


class DirectKernel:
    """A kernel launched by the direct path (see above)."""

    def __init__(self, dispatcher):
        self._dispatcher = dispatcher
        self._compiled = {}
        self._configs = {}
        self._streams = {}
        self._packed = {}  # argument count -> (words, pointers to them, the pointers' address): raw launches
        self._packing = threading.Lock()

    def launch(self, blocks, threads, stream, args):
        keys, words = [], []
        for value in args:
            if isinstance(value, bool):
                keys.append(bool)
                words.append(int(value))
            elif isinstance(value, int):
                if not _INT64[0] <= value <= _INT64[1]:
                    return self._launch_by_numba(blocks, threads, stream, args)
                keys.append(int)
                words.append(value)
            elif isinstance(value, float):
                keys.append(float)
                words.append(_float_bits(value))
            elif isinstance(value, cuda.devicearray.DeviceNDArray):
                key, fields = _array_fields(value)
                keys.append(key)
                words.extend(fields)
            else:  # anything else (NumPy scalars, host arrays) takes numba-cuda's path
                return self._launch_by_numba(blocks, threads, stream, args)
        signature = (current_device_id(), *keys)
        kernel = self._compiled.get(signature, _NOT_YET)
        if kernel is _NOT_YET:  # first launch of this signature: numba-cuda compiles and launches it
            self._launch_by_numba(blocks, threads, stream, args)
            types = tuple(self._dispatcher.typeof_pyval(value) for value in args)
            compiled = self._dispatcher.overloads.get(types)
            # Debug builds check an error code after the launch, cooperative ones
            # launch otherwise, extensions convert arguments: numba-cuda's path.
            plain = (compiled is not None and not getattr(compiled, "debug", False)
                     and not getattr(compiled, "cooperative", False) and not self._dispatcher.extensions)
            function = compiled._codelibrary.get_cufunc() if plain else None
            self._compiled[signature] = None if function is None else (function.kernel, function.handle)
            return None
        if kernel is None:  # compiled for other types than the arguments': numba-cuda converts them
            return self._launch_by_numba(blocks, threads, stream, args)
        recording = getattr(_recorder, "launches", None)
        if recording is not None:
            recording.append((kernel[1], blocks, threads, stream_key(stream), tuple(words)))
        if RAW_LAUNCH and isinstance(blocks, int) and isinstance(threads, int):
            self._raw_launch(kernel[1], blocks, threads, stream, words)
            return None
        config = self._configs.get((blocks, threads))
        if config is None:
            cooperative = {"is_cooperative" if _CORE_1 else "cooperative_launch": False}
            config = _LaunchConfig(grid=blocks, block=threads, shmem_size=0, **cooperative)
            if len(self._configs) < _KEPT:
                self._configs[blocks, threads] = config
        key = stream_key(stream)
        core_stream = self._streams.get(key)
        if core_stream is None:
            core_stream = _to_core_stream(stream)
            if len(self._streams) < _KEPT:
                self._streams[key] = core_stream
        _core_launch(core_stream, config, kernel[0], *words)
        return None

    def _launch_by_numba(self, blocks, threads, stream, args):
        _record_other_launch()
        configure(self._dispatcher, blocks, threads, stream)(*args)

    def _raw_launch(self, handle, blocks, threads, stream, words):
        """cuLaunchKernel with the words in one array (see above), kept per
        argument count with its array of pointers: the driver has copied the
        words when the launch returns, so the next launch may overwrite them
        (one thread at a time)."""
        with self._packing:
            packed = self._packed.get(len(words))
            if packed is None:
                packed = self._packed[len(words)] = packed_words(words)
            else:
                packed[0][:] = words
            error = launch_words(handle, blocks, threads, stream_key(stream), packed[2])
        if error is not None:
            raise RuntimeError(f"cuLaunchKernel failed: {error!r}")


# Driver calls without a Numba object on the way, so without a context
# query: raw launches, and the replayed calls of ``nbce.cuda._replay``, which
# take the ordinary path where the driver refuses.
_raw_streams = {}


def _raw_stream(handle):
    found = _raw_streams.get(handle)
    if found is None:
        found = _bindings.CUstream(handle)
        if len(_raw_streams) < _KEPT:
            _raw_streams[handle] = found
    return found


def current_context_handle():
    """The calling thread's current CUDA context, as an integer (0: none)."""
    error, context = _bindings.cuCtxGetCurrent()
    return int(context) if error == _bindings.CUresult.CUDA_SUCCESS else 0


def packed_words(words):
    """(int64 array of the argument ``words``, array of pointers to its
    entries, that array's address): what ``launch_words`` takes."""
    array = np.array(words, dtype=np.int64)
    pointers = np.arange(array.size, dtype=np.int64) * _WORD + array.ctypes.data
    return array, pointers, pointers.ctypes.data


def launch_words(function_handle, blocks, threads, stream_handle, words_address):
    """cuLaunchKernel with the argument words at ``words_address`` (an array of
    pointers to them); None, or the driver's error."""
    error, = _bindings.cuLaunchKernel(function_handle, blocks, 1, 1, threads, 1, 1, 0, _raw_stream(stream_handle),
                                      words_address, 0)
    return None if error == _bindings.CUresult.CUDA_SUCCESS else error


def read_word_and_wait(host_address, device_address, stream_handle):
    """Copy 8 bytes from the device to page-locked host memory on a stream, and wait for it."""
    stream = _raw_stream(stream_handle)
    error, = _bindings.cuMemcpyDtoHAsync(host_address, device_address, 8, stream)
    if error != _bindings.CUresult.CUDA_SUCCESS:
        return False
    error, = _bindings.cuStreamSynchronize(stream)
    return error == _bindings.CUresult.CUDA_SUCCESS


# Bytes per wide load: a warp moves 512 bytes per load instruction instead of
# the 128 of float32 scalars, so each thread keeps more bytes in flight.
VECTOR_BYTES = 16

if SIMULATOR:
    def load_vector(array, row, column):
        """Simulator fallback: the same elements, read one by one, after the
        alignment check that the hardware would fail on."""
        data = getattr(array, "_ary", array)
        where = data.ctypes.data + row * data.strides[0] + column * data.strides[1]
        if where % VECTOR_BYTES:
            raise RuntimeError(f"misaligned {VECTOR_BYTES}-byte load at address {where:#x}")
        return tuple(array[row, column + i] for i in range(VECTOR_BYTES // array.itemsize))

    def bfloat16_to_float32(word):
        """Simulator fallback: the same bit shift, through NumPy views."""
        return np.array([np.uint32(word) << np.uint32(16)], dtype=np.uint32).view(np.float32)[0]

    def multiprocessor_count():
        return 1

    @cuda.jit(device=True)
    def exp2f(v):
        """Simulator fallback of the hardware 2**v (float32)."""
        if v < -200.0:  # 2**v underflows; math.pow would too, but say it without a warning
            return np.float32(0.0)
        if v != v or v > 200.0:
            return np.float32(v if v != v else math.inf)
        return np.float32(2.0 ** float(v))

    @cuda.jit(device=True)
    def shuffle_down(value, delta, scratch):
        """Simulator fallback of a warp's shfl.down: lane i gets lane i + delta's
        ``value`` (its own when that lane lies past the warp), exchanged through
        ``scratch`` (one shared entry per thread).  Called by every thread."""
        tid = cuda.threadIdx.x
        cuda.syncthreads()
        scratch[tid] = value
        cuda.syncthreads()
        lane = tid % WARP
        other = scratch[tid + delta] if lane + delta < WARP and tid + delta < scratch.shape[0] else value
        cuda.syncthreads()
        return other
else:
    from llvmlite import ir as _ir
    from numba import int32 as _int32
    from numba import types as _types
    from numba.cuda import cgutils as _cgutils
    from numba.cuda import libdevice as _libdevice
    from numba.cuda.extending import intrinsic as _intrinsic

    @_intrinsic
    def load_vector(typingctx, array, row, column):
        """x[row, column : column + w] as a w-tuple from one ``VECTOR_BYTES``-wide load
        (w = VECTOR_BYTES / itemsize).  The caller guarantees the alignment."""
        width = VECTOR_BYTES * 8 // array.dtype.bitwidth
        result = _types.UniTuple(array.dtype, width)

        def codegen(context, builder, sig, args):
            array_type = sig.args[0]
            data = context.make_array(array_type)(context, builder, value=args[0])
            indices = [context.cast(builder, v, t, _types.intp) for v, t in zip(args[1:], sig.args[1:])]
            pointer = _cgutils.get_item_pointer(context, builder, array_type, data, indices, wraparound=False)
            element = context.get_value_type(array_type.dtype)
            bits = array_type.dtype.bitwidth
            # Words of at least 32 bits: PTX narrower than that splits a
            # 16-byte vector of halves into two 8-byte loads.
            word_bits = max(bits, 32)
            word = _ir.IntType(word_bits) if bits < 32 else element
            vector_type = _ir.VectorType(word, VECTOR_BYTES * 8 // word_bits)
            vector = builder.load(builder.bitcast(pointer, vector_type.as_pointer()), align=VECTOR_BYTES)
            items = []
            for i in range(vector_type.count):
                value = builder.extract_element(vector, _ir.Constant(_ir.IntType(32), i))
                if bits == word_bits:
                    items.append(value)
                    continue
                for part in range(word_bits // bits):  # little-endian: the low bits come first
                    piece = builder.trunc(builder.lshr(value, _ir.Constant(word, part * bits)), _ir.IntType(bits))
                    items.append(builder.bitcast(piece, element))
            return context.make_tuple(builder, result, items)

        return result(array, row, column), codegen

    @cuda.jit(device=True)
    def bfloat16_to_float32(word):
        """bfloat16 bits are the high half of a float32."""
        return _libdevice.int_as_float(_int32(_int32(word) << 16))

    _multiprocessors = {}

    def multiprocessor_count():
        device = cuda.get_current_device()
        found = _multiprocessors.get(device.id)
        if found is None:
            found = _multiprocessors[device.id] = device.MULTIPROCESSOR_COUNT
        return found

    @cuda.jit(device=True)
    def exp2f(v):
        """2**v in float32 by the hardware's ex2.approx (relative error below 2**-22)."""
        return _libdevice.exp2f(v)

    @cuda.jit(device=True)
    def shuffle_down(value, delta, scratch):
        """Lane i of a warp gets lane i + delta's ``value`` (its own past the warp's
        end), register to register; ``scratch`` is the simulator's stand-in."""
        return cuda.shfl_down_sync(FULL_MASK, value, delta)
