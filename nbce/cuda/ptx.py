"""Compile every CUDA kernel to PTX for real GPUs, without a GPU.

``python -m nbce.cuda.ptx`` (with ``NUMBA_ENABLE_CUDASIM`` unset) compiles each
kernel for every input dtype and compute capability and prints one JSON line
per kernel with the PTX facts the tests check.  Needs numba-cuda's CUDA
toolkit wheels (``pip install 'nbce[cuda]'``).
"""

import json
import sys

from numba import types

from . import THREADS
from ._device import compile_ptx
from .kernels import build

F64, I64 = types.float64, types.int64
MATRIX_F64 = types.Array(F64, 2, "C")
VECTOR_F64 = types.Array(F64, 1, "C")
VECTOR_I64 = types.Array(I64, 1, "C")
# storage dtype -> (narrow maths, bfloat16 words)
STORAGE = {
    "float64": (types.float64, False, False),
    "float32": (types.float32, True, False),
    "float16": (types.float16, True, False),
    "bfloat16": (types.uint16, True, True),
}
CAPABILITIES = [(8, 0), (9, 0)]


def signatures(storage):
    x = types.Array(storage, 2, "C")
    return {
        "stats_partials": (x, I64, I64, MATRIX_F64, MATRIX_F64, MATRIX_F64, VECTOR_I64, I64, MATRIX_F64, I64, I64),
        "finish_metrics": (MATRIX_F64, MATRIX_F64, MATRIX_F64, MATRIX_F64, x, VECTOR_I64, I64, VECTOR_F64,
                           VECTOR_I64, VECTOR_F64, VECTOR_F64, VECTOR_I64),
        "coefficient_sums": (x, x, VECTOR_F64, F64, I64, VECTOR_F64, I64, I64, MATRIX_F64, I64, I64),
        "class_index_loss": (x, types.Array(I64, 1, "C"), VECTOR_F64, I64, F64, I64, VECTOR_F64, MATRIX_F64,
                             VECTOR_F64, VECTOR_F64, types.Array(I64, 1, "C")),
        "normalize": (x, VECTOR_F64, types.boolean, types.Array(types.float32, 2, "C")),
        "binary": (types.boolean, x, x, MATRIX_F64, MATRIX_F64, types.boolean, MATRIX_F64, VECTOR_F64,
                   types.Array(I64, 1, "C")),
        "gather": (types.Array(storage, 1, "C"), I64, types.Array(I64, 2, "C"), types.Array(storage, 1, "C")),
    }


SHARED = {
    "finish_stats": (MATRIX_F64, MATRIX_F64, MATRIX_F64, VECTOR_F64, VECTOR_F64),
    "negated_row_sums": (MATRIX_F64, VECTOR_F64),
    "partial_sums": (VECTOR_F64, VECTOR_F64),
    "cast_into": (VECTOR_F64, types.Array(types.float32, 1, "C")),
    "quotient": (VECTOR_F64, VECTOR_F64, VECTOR_F64),
}


def facts(ptx):
    return {
        "bytes": len(ptx),
        "target": next(line.split()[1] for line in ptx.splitlines() if line.startswith(".target")),
        "ex2_approx": "ex2.approx" in ptx,
        "atomic_min": "atom.global.min" in ptx,
        "shared_memory": ".shared" in ptx,
        "fp64_exp_libcall": "__nv_exp" in ptx,
        "wide_load": "ld.global.v2.f64" in ptx or "ld.global.v4." in ptx,
        "local_memory": ".local" in ptx,
    }


class _TargetDevice:
    """Stands in for ``get_current_device()`` while compiling without a GPU.

    Device functions called from a kernel are compiled for the current
    device's compute capability; with no device present, that is the
    capability being targeted.
    """

    def __init__(self, cc):
        self.compute_capability = cc


def _compile(kernel, sig, cc):
    from numba.cuda import dispatcher

    real = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: _TargetDevice(cc)
    try:
        for device_function in _device_functions(kernel):
            device_function.overloads.clear()  # recompile them for this capability
        return compile_ptx(kernel.py_func, sig, cc=cc)[0]
    finally:
        dispatcher.get_current_device = real


def _device_functions(kernel):
    closure = kernel.py_func.__closure__ or ()
    return [cell.cell_contents for cell in closure if hasattr(cell.cell_contents, "overloads")]


def main():
    if compile_ptx is None:
        sys.exit("PTX compilation needs the real CUDA target: unset NUMBA_ENABLE_CUDASIM")
    jobs = [(name, "any", sig, build(THREADS, False, False)) for name, sig in SHARED.items()]
    for dtype, (storage, narrow, bfloat16) in STORAGE.items():
        kernels = build(THREADS, narrow, bfloat16, bfloat16)  # targets stored like the logits
        jobs += [(name, dtype, sig, kernels) for name, sig in signatures(storage).items()]
    for name, dtype, sig, kernels in jobs:
        for cc in CAPABILITIES:
            ptx = _compile(getattr(kernels, name), sig, cc)
            print(json.dumps({"kernel": name, "dtype": dtype, "cc": f"{cc[0]}.{cc[1]}", **facts(ptx)}), flush=True)


if __name__ == "__main__":
    main()
