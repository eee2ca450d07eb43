"""Compile every CUDA kernel to PTX for real GPUs, without a GPU.

``python -m nbce.cuda.ptx`` (with ``NUMBA_ENABLE_CUDASIM`` unset) compiles each
kernel for every input dtype and compute capability and prints one JSON line
per kernel with the PTX facts the tests check.  Needs numba-cuda's CUDA
toolkit wheels (``pip install 'nbce[cuda]'``).
"""

import json
import re
import sys

from numba import types

from . import THREADS
from . import rows as row_jobs
from . import tally
from ._device import compile_ptx
from .kernels import elementwise_kernels, elementwise_signatures, utility_kernels, utility_signatures

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


def signatures(dtype):
    """(name, kernel, signature) of every kernel compiled for a storage dtype."""
    jobs = []
    for name, options in ROW_JOBS.items():
        plan = row_jobs.plan(THREADS, dtype, target_storage=dtype, **options)
        jobs.append((name, row_jobs.row_kernels(plan), row_jobs.signature(plan)))
    storage = row_jobs.STORAGE_TYPES[dtype]
    elementwise = elementwise_kernels(THREADS, dtype != "float64", dtype == "bfloat16", dtype == "bfloat16")
    element_sigs = elementwise_signatures(storage)
    jobs += [("normalize", elementwise.normalize, element_sigs.normalize),
             ("binary", elementwise.binary, element_sigs.binary),
             ("gather", utility_kernels(THREADS).gather, utility_signatures(storage).gather)]
    if dtype == "float64":  # the evaluation sums take per-row float64 figures whatever the logits
        jobs.append(("tally", tally.tally_kernel(tally.THREADS, 1024), _TALLY_SIGNATURE))
    return jobs


_VECTOR = types.Array(types.float64, 1, "C")
_INDICES = types.Array(types.int64, 1, "C")
_TALLY_SIGNATURE = (_VECTOR, _INDICES, _VECTOR, _VECTOR, _VECTOR, types.boolean, _INDICES, _VECTOR,
                    types.int64, types.int64, types.int64, types.int64, _INDICES)


def facts(ptx):
    return {
        "bytes": len(ptx),
        "target": next(line.split()[1] for line in ptx.splitlines() if line.startswith(".target")),
        "ex2_approx": "ex2.approx" in ptx,
        "shuffle": "shfl.sync" in ptx,
        "fp32_exp": "ex2.approx.f32" in ptx,
        "fp32_add": "add.f32" in ptx or "add.rn.f32" in ptx,
        "atomic_min": "atom.global.min" in ptx,
        "atomic_add_64": "atom.global.add.u64" in ptx or "red.global.add.u64" in ptx,
        "shared_atomic_add_64": "atom.shared.add.u64" in ptx or "red.shared.add.u64" in ptx,
        "shared_memory": ".shared" in ptx,
        "fp64_exp_libcall": "__nv_exp" in ptx,
        "wide_load": "ld.global.v2.f64" in ptx or "ld.global.v4." in ptx,
        "local_memory": ".local" in ptx,
        # An entry at the row's max counted by a select (1 or 0), not a branch.
        "counted_by_select": re.search(r"selp\.f(?:32|64)\s+%fd?\d+, 0[fd](?:3F800000|3FF0000000000000), 0[fd]0+, %p\d+;",
                                       ptx) is not None,
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
    """The device functions a kernel calls, directly or through other device
    functions, from its closure or its module's globals."""
    seen = {} if seen is None else seen
    code = kernel.py_func
    found = [cell.cell_contents for cell in code.__closure__ or ()]
    found += [code.__globals__.get(name) for name in code.__code__.co_names]
    for function in found:
        if hasattr(function, "overloads") and id(function) not in seen:
            seen[id(function)] = function
            _device_functions(function, seen)
    return list(seen.values())


def main():
    if compile_ptx is None:
        sys.exit("PTX compilation needs the real CUDA target: unset NUMBA_ENABLE_CUDASIM")
    jobs = []
    for dtype in row_jobs.STORAGE_TYPES:
        jobs += [(name, dtype, kernel, sig) for name, kernel, sig in signatures(dtype)]
    for name, dtype, kernel, sig in jobs:
        for cc in CAPABILITIES:
            ptx = _compile(kernel, sig, cc)
            print(json.dumps({"kernel": name, "dtype": dtype, "cc": f"{cc[0]}.{cc[1]}", **facts(ptx)}), flush=True)


if __name__ == "__main__":
    main()
