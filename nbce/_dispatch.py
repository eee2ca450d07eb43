"""Pick the backend from where the logits live."""

from . import cpu

# DLPack device types that denote CUDA memory (kDLCUDA, kDLCUDAHost, kDLCUDAManaged)
_DLPACK_CUDA = {2, 3, 13}


def is_cuda_array(obj):
    """True for objects exposing CUDA memory through the CUDA array interface or DLPack."""
    if hasattr(obj, "__cuda_array_interface__"):
        return True
    device = getattr(obj, "__dlpack_device__", None)
    if device is not None:
        try:
            return int(device()[0]) in _DLPACK_CUDA
        except Exception:  # a foreign object with a broken protocol is host data to us
            return False
    return False


def backend_for(logits):
    """The backend module for ``logits``: only the CPU one in this release."""
    if is_cuda_array(logits):
        raise NotImplementedError(
            "nbce got a CUDA array; this build computes on the CPU only. "
            "Copy the array to host memory (e.g. cupy.asnumpy or tensor.cpu()) first."
        )
    return cpu
