"""Every CUDA kernel compiles to PTX for compute capability 8.0 and 9.0, every dtype.

Runs ``python -m nbce.cuda.ptx`` in a child process with the real CUDA
target (the test session itself uses the simulator).  No GPU is needed, only
numba-cuda's CUDA toolkit wheels.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("numba_cuda") is None, reason="needs numba-cuda")

KERNELS_PER_DTYPE = {"stats_partials", "finish_metrics", "coefficient_sums", "class_index_loss", "normalize",
                     "binary", "gather"}
SHARED_KERNELS = {"finish_stats", "negated_row_sums", "partial_sums", "cast_into", "quotient"}


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    out = subprocess.run([sys.executable, "-m", "nbce.cuda.ptx"], capture_output=True, text=True, env=env,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def test_every_kernel_dtype_and_capability(compiled):
    seen = {(r["kernel"], r["dtype"], r["cc"]) for r in compiled}
    for cc in ("8.0", "9.0"):
        for dtype in ("float64", "float32", "float16", "bfloat16"):
            for kernel in KERNELS_PER_DTYPE:
                assert (kernel, dtype, cc) in seen
        for kernel in SHARED_KERNELS:
            assert (kernel, "any", cc) in seen
    assert all(r["target"] == "sm_" + r["cc"].replace(".", "") for r in compiled)


def test_float32_exponentials_use_the_hardware_ex2(compiled):
    for r in compiled:
        if r["kernel"] in ("stats_partials", "normalize") and r["dtype"] != "float64":
            assert r["ex2_approx"], r


def test_reductions_use_shared_memory_and_bad_targets_an_atomic(compiled):
    for r in compiled:
        if r["kernel"] in ("stats_partials", "coefficient_sums", "binary", "partial_sums"):
            assert r["shared_memory"], r
        if r["kernel"] in ("class_index_loss", "binary", "finish_metrics"):
            assert r["atomic_min"], r


def test_row_reductions_read_16_bytes_per_load(compiled):
    """ld.global.v4.f32 / v2.f64 / v4.u32 (eight halves) in the two kernels that stream the logits."""
    for r in compiled:
        if r["kernel"] in ("stats_partials", "coefficient_sums"):
            assert r["wide_load"], r


def test_no_kernel_spills_to_local_memory(compiled):
    assert not [r for r in compiled if r["local_memory"]]
