"""The one place that imports ``numba.cuda`` (numba-cuda may be replaced by its successor).

Everything CUDA-specific that the rest of nbce needs goes through here: the
kernel decorator, the simulator switch, device-array recognition and
conversion, streams.
"""

from numba import config, cuda

SIMULATOR = bool(config.ENABLE_CUDASIM)
jit = cuda.jit
compile_ptx = None if SIMULATOR else cuda.compile_ptx
# Kernels refer to thread indices, shared memory and atomics as ``cuda.<name>``
# through this module object: the simulator swaps a module bound to the
# global name ``cuda`` while it runs a kernel.
__all__ = ["cuda", "jit", "compile_ptx", "SIMULATOR"]


def available():
    return SIMULATOR or cuda.is_available()


def is_numba_device_array(obj):
    if SIMULATOR:
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        return isinstance(obj, FakeCUDAArray)
    return cuda.devicearray.is_cuda_ndarray(obj)


def to_device(array, stream=0):
    return cuda.to_device(array, stream=stream)


def device_empty(shape, dtype, stream=0):
    return cuda.device_array(shape, dtype=dtype, stream=stream)


def as_device_array(obj):
    """A Numba device array viewing ``obj``'s memory (no copy).

    Objects that speak only DLPack go through CuPy, which reads DLPack and
    exports the CUDA array interface.
    """
    if is_numba_device_array(obj):
        return obj
    if not hasattr(obj, "__cuda_array_interface__") and hasattr(obj, "__dlpack__"):
        try:
            import cupy
        except ImportError:
            raise TypeError(
                f"{type(obj).__name__} exposes CUDA memory only through DLPack; install CuPy to pass it to nbce"
            ) from None
        obj = cupy.from_dlpack(obj)
    return cuda.as_cuda_array(obj)


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


def external_stream(handle):
    return cuda.external_stream(handle)


if SIMULATOR:
    import numpy as _np

    def bfloat16_to_float32(word):
        """Simulator fallback: the same bit shift, through NumPy views."""
        return _np.array([_np.uint32(word) << _np.uint32(16)], dtype=_np.uint32).view(_np.float32)[0]

    def multiprocessor_count():
        return 1
else:
    from numba import int32 as _int32
    from numba.cuda import libdevice as _libdevice

    @cuda.jit(device=True)
    def bfloat16_to_float32(word):
        """bfloat16 bits are the high half of a float32."""
        return _libdevice.int_as_float(_int32(_int32(word) << 16))

    def multiprocessor_count():
        return cuda.get_current_device().MULTIPROCESSOR_COUNT
