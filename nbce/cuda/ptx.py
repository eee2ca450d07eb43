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
from . import rows as row_jobs
from ._device import compile_ptx
from .kernels import elementwise_kernels, utility_kernels

F32, F64, I32, I64 = types.float32, types.float64, types.int32, types.int64
MATRIX_F64 = types.Array(F64, 2, "C")
VECTOR_F64 = types.Array(F64, 1, "C")
VECTOR_F32 = types.Array(F32, 1, "C")
VECTOR_I64 = types.Array(I64, 1, "C")
VECTOR_I32 = types.Array(I32, 1, "C")
# storage dtype -> (Numba storage type, narrow maths, bfloat16 words)
STORAGE = {
    "float64": (types.float64, False, False),
    "float32": (types.float32, True, False),
    "float16": (types.float16, True, False),
    "bfloat16": (types.uint16, True, True),
}
CAPABILITIES = [(8, 0), (9, 0)]

# Row kernels checked: one plan per job, with the options that add work.
ROW_JOBS = {
    "row_logsumexp": dict(job=row_jobs.LSE),
    "row_entropy": dict(job=row_jobs.ENTROPY),
    "row_shift": dict(job=row_jobs.SHIFT),
    "row_cross_entropy": dict(job=row_jobs.CLASS_LOSS, reduction=row_jobs.MEAN),
    "row_cross_entropy_smoothed": dict(job=row_jobs.CLASS_LOSS, reduction=row_jobs.MEAN, weighted=True,
                                       smoothing=True),
    "row_soft_targets": dict(job=row_jobs.SOFT_LOSS, reduction=row_jobs.SUM, weighted=True, smoothing=True),
    "row_metrics": dict(job=row_jobs.METRICS),
}


def _row_outputs(job, narrow):
    """The types of out, out2, out3, out4 for a job."""
    if job in (row_jobs.LSE, row_jobs.ENTROPY, row_jobs.CLASS_LOSS, row_jobs.SOFT_LOSS):
        return (VECTOR_F32 if narrow else VECTOR_F64,) + (VECTOR_F64,) * 3
    if job == row_jobs.METRICS:
        return VECTOR_F64, VECTOR_I64, VECTOR_F64, VECTOR_F64
    return (VECTOR_F64,) * 4


def row_jobs_for(dtype):
    """(name, kernel, signature) of the row kernels and one finishing kernel for a storage dtype."""
    storage, narrow, bfloat16 = STORAGE[dtype]
    x = types.Array(storage, 2, "C")
    jobs = []
    for name, options in ROW_JOBS.items():
        plan = row_jobs.plan(THREADS, dtype, target_storage=dtype, **options)
        row_kernel, finish_kernel = row_jobs.row_kernels(plan)
        outputs = _row_outputs(plan.job, narrow)
        sig = (x, I64, I64, I64, I64, VECTOR_I64, VECTOR_F64, x, I64, F64, *outputs, MATRIX_F64, MATRIX_F64,
               VECTOR_I32, VECTOR_I64)
        jobs.append((name, row_kernel, sig))
        if plan.job == row_jobs.CLASS_LOSS and plan.smoothing:
            finish_sig = (x, I64, VECTOR_I64, VECTOR_F64, I64, F64, *outputs, MATRIX_F64, MATRIX_F64, VECTOR_I32,
                          VECTOR_I64)
            jobs.append(("row_finish", finish_kernel, finish_sig))
    return jobs


def signatures(dtype):
    storage, narrow, bfloat16 = STORAGE[dtype]
    x = types.Array(storage, 2, "C")
    elementwise = elementwise_kernels(THREADS, narrow, bfloat16, bfloat16)  # targets stored like the logits
    utilities = utility_kernels(THREADS)
    return row_jobs_for(dtype) + [
        ("normalize", elementwise.normalize,
         (x, VECTOR_F64, VECTOR_F64, types.boolean, types.Array(types.float32, 2, "C"))),
        ("binary", elementwise.binary,
         (types.boolean, x, x, MATRIX_F64, MATRIX_F64, types.boolean, MATRIX_F64, VECTOR_F64, VECTOR_I64)),
        ("gather", utilities.gather,
         (types.Array(storage, 1, "C"), I64, types.Array(I64, 2, "C"), types.Array(storage, 1, "C"))),
    ]


def shared_signatures():
    utilities = utility_kernels(THREADS)
    return [
        ("partial_sums", utilities.partial_sums, (VECTOR_F64, VECTOR_F64)),
        ("cast_into", utilities.cast_into, (VECTOR_F64, VECTOR_F32)),
        ("quotient", utilities.quotient, (VECTOR_F64, VECTOR_F64, VECTOR_F64)),
    ]


def facts(ptx):
    return {
        "bytes": len(ptx),
        "target": next(line.split()[1] for line in ptx.splitlines() if line.startswith(".target")),
        "ex2_approx": "ex2.approx" in ptx,
        "shuffle": "shfl.sync" in ptx,
        "fp32_exp": "ex2.approx.f32" in ptx,
        "fp32_add": "add.f32" in ptx or "add.rn.f32" in ptx,
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


def _device_functions(kernel, seen=None):
    """The device functions a kernel calls, directly or through other device functions."""
    seen = {} if seen is None else seen
    for cell in kernel.py_func.__closure__ or ():
        function = cell.cell_contents
        if hasattr(function, "overloads") and id(function) not in seen:
            seen[id(function)] = function
            _device_functions(function, seen)
    return list(seen.values())


def main():
    if compile_ptx is None:
        sys.exit("PTX compilation needs the real CUDA target: unset NUMBA_ENABLE_CUDASIM")
    jobs = [(name, "any", kernel, sig) for name, kernel, sig in shared_signatures()]
    for dtype in STORAGE:
        jobs += [(name, dtype, kernel, sig) for name, kernel, sig in signatures(dtype)]
    for name, dtype, kernel, sig in jobs:
        for cc in CAPABILITIES:
            ptx = _compile(kernel, sig, cc)
            print(json.dumps({"kernel": name, "dtype": dtype, "cc": f"{cc[0]}.{cc[1]}", **facts(ptx)}), flush=True)


if __name__ == "__main__":
    main()
