"""The GPU benchmarks' arithmetic and their exit without a GPU (torch imported by one
test only), and the CPU functions table's calls."""

import math

import numpy as np
import pytest

_gpu = pytest.importorskip("benchmarks._gpu", reason="run from the repository root: python -m pytest")
gpu_table = pytest.importorskip("benchmarks.gpu_table")


def test_bandwidth_counts_bytes_read_against_the_copys_read_and_write():
    f = _gpu.bandwidth((1000, 1000), "float32", ms=1.0, copy_ms=2.0)
    assert f["bytes"] == 4_000_000
    assert f["gbs"] == pytest.approx(4.0)          # 4 MB read in 1 ms
    assert f["copy_gbs"] == pytest.approx(4.0)     # 4 MB read + 4 MB written in 2 ms
    assert f["of_copy"] == pytest.approx(1.0)      # a one-read kernel as fast as the memory moves
    assert _gpu.bandwidth((1000, 1000), "bfloat16", 1.0, 2.0)["gbs"] == pytest.approx(2.0)


def test_bandwidth_of_a_measured_row():
    # Liger-Kernel on an H200 (../shared/gpu/README.md): 8.6 GB in 2.224 ms, copy 4.004 ms: 90 % of the copy.
    f = _gpu.bandwidth((16384, 131072), "float32", 2.224, 4.004)
    assert f["gbs"] == pytest.approx(3862, abs=1)
    assert f["of_copy"] == pytest.approx(0.90, abs=0.005)


def test_speedups_are_the_others_time_over_nbces():
    assert _gpu.speedups(2.0, {"torch": 3.0, "liger": None}) == {"x_torch": 1.5, "x_liger": None}


def test_rotation_keeps_small_inputs_out_of_l2():
    assert _gpu.rotation_count(8 * 2**30) == 1
    assert _gpu.rotation_count(16 * 262144 * 4) == math.ceil(_gpu.ROTATION_BYTES / (16 * 262144 * 4))
    assert _gpu.rotation_count(32 * 1000 * 4) == 4000
    assert _gpu.rotation_count(1) == _gpu.MAX_ROTATION
    following = _gpu.rotating(iter(range(10)).__next__, 100e6)  # makes 6 items: 0..5
    assert [following() for _ in range(8)] == [1, 2, 3, 4, 5, 0, 1, 2]


def test_table_without_a_gpu_says_why_in_one_line_and_exits_0(monkeypatch, capsys):
    def no_device():
        raise NotImplementedError("torch is not installed")
    monkeypatch.setattr(gpu_table, "torch_cuda", no_device)
    assert gpu_table.main([]) == 0
    out = capsys.readouterr()
    assert out.out == "gpu_table: nothing to measure: torch is not installed.\n" and out.err == ""


def test_the_functions_table_compares_like_with_like():
    torch = pytest.importorskip("torch")
    from benchmarks import functions_table

    for label, ours, theirs in functions_table.cases(scale=256):
        np.testing.assert_allclose(np.asarray(ours(), np.float64), theirs(torch).double().numpy(), rtol=2e-5,
                                   atol=1e-6, err_msg=label)
