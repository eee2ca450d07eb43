"""Every CUDA kernel compiles to PTX for compute capability 8.0 and 9.0, every dtype,
with the instructions it was written for.

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

ROW_KERNELS = {"row_logsumexp", "row_entropy", "row_shift", "row_cross_entropy", "row_cross_entropy_smoothed",
               "row_soft_targets", "row_metrics"}
KERNELS_PER_DTYPE = ROW_KERNELS | {"normalize", "binary", "gather"}


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    out = subprocess.run([sys.executable, "-m", "nbce.cuda.ptx"], capture_output=True, text=True, env=env,
                         timeout=1500)
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def test_every_kernel_dtype_and_capability(compiled):
    seen = {(r["kernel"], r["dtype"], r["cc"]) for r in compiled}
    for cc in ("8.0", "9.0"):
        for dtype in ("float64", "float32", "float16", "bfloat16"):
            for kernel in KERNELS_PER_DTYPE:
                assert (kernel, dtype, cc) in seen
    assert all(r["target"] == "sm_" + r["cc"].replace(".", "") for r in compiled)


def test_narrow_rows_are_summed_in_float32_with_the_hardware_ex2(compiled):
    """float32/float16/bfloat16 rows: exponentials by ex2.approx.f32 and float32 adds in the per-element path."""
    for r in compiled:
        if r["kernel"] in ROW_KERNELS and r["dtype"] != "float64":
            assert r["fp32_exp"] and r["fp32_add"], r
        if r["kernel"] == "normalize" and r["dtype"] != "float64":
            assert r["ex2_approx"], r


def test_row_kernels_count_entries_at_the_max_without_a_branch(compiled):
    """The per-element path is straight-line: e^(x - m) for every entry, and
    the entries at the max counted by a select (a branch per element kept
    the loads of a slot from overlapping its arithmetic)."""
    for r in compiled:
        if r["kernel"] in ROW_KERNELS:
            assert r["counted_by_select"], r


def test_row_kernels_read_16_bytes_per_load_and_merge_by_warp_shuffles(compiled):
    """ld.global.v4.f32 / v2.f64 / v4.u32 (eight halves), and shfl.sync for the in-row merges."""
    for r in compiled:
        if r["kernel"] in ROW_KERNELS:
            assert r["wide_load"] and r["shuffle"], r


def test_bad_targets_raise_a_flag_by_an_atomic(compiled):
    for r in compiled:
        if r["kernel"] in ("row_cross_entropy", "row_metrics", "binary"):
            assert r["atomic_min"], r
        if r["kernel"] == "binary":
            assert r["shared_memory"], r


def test_no_kernel_spills_to_local_memory(compiled):
    assert not [r for r in compiled if r["local_memory"]]


def test_evaluation_sums_are_added_by_64_bit_integer_atomics(compiled):
    """The device's exact sums: integer atomics into the block's shared window and global memory, no floats summed."""
    found = [r for r in compiled if r["kernel"] == "tally"]
    assert {r["cc"] for r in found} == {"8.0", "9.0"}
    for r in found:
        assert r["atomic_add_64"] and r["shared_atomic_add_64"] and not r["local_memory"], r
