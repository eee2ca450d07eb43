"""Pick the backend from where the logits live: CUDA memory -> nbce.cuda, anything else -> nbce.cpu."""

import functools
import inspect

import numpy as np

from . import cpu

# DLPack device types that denote CUDA memory (kDLCUDA, kDLCUDAHost, kDLCUDAManaged)
_DLPACK_CUDA = {2, 3, 13}


def is_cuda_array(obj):
    """True for Numba device arrays and objects exposing CUDA memory (CUDA array interface or DLPack)."""
    if type(obj) is np.ndarray:  # the common case, answered without the protocol queries below
        return False
    module = type(obj).__module__
    if module == "torch":  # the interface is a property that builds its dict (and raises for CPU tensors)
        return obj.is_cuda
    if module.startswith(("numba.cuda", "cupy")) or hasattr(obj, "__cuda_array_interface__"):
        return True
    device = getattr(obj, "__dlpack_device__", None)
    if device is not None:
        try:
            return int(device()[0]) in _DLPACK_CUDA
        except Exception:  # a foreign object with a broken protocol is host data to us
            return False
    return False


def backend_for(logits):
    """The backend module for ``logits``; ``nbce.cuda`` (and numba.cuda) is imported only when needed."""
    if is_cuda_array(logits):
        from . import cuda

        cuda.require_device()
        return cuda
    return cpu


def gpu_available():
    """True when a real CUDA GPU can run kernels (not the simulator, not without numba-cuda)."""
    try:
        from .cuda import _device
    except ImportError:
        return False
    return not _device.SIMULATOR and _device.available()


def in_device_context(function):
    """``function`` (a public function whose first parameter is the logits), run
    in one CUDA context block (``nbce.cuda.context``) when that argument is a
    CUDA array: its CUDA calls then skip the driver's context queries, the
    larger part of a small call's host time (a repeated call on PyTorch
    tensors may be replayed instead: ``nbce.cuda._replay``).  The argument
    may be passed by position or by name."""
    first_name = next(iter(inspect.signature(function).parameters))

    @functools.wraps(function)
    def run(*args, **kwargs):
        first = args[0] if args else kwargs.get(first_name)
        if not is_cuda_array(first):
            return function(*args, **kwargs)
        from . import cuda

        cuda.require_device()
        return cuda.run_public(function, args, kwargs)

    return run
