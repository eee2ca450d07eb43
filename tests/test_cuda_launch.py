"""The direct launch path on a real GPU (NBCE_TEST_REAL_GPU=1): the same
results as numba-cuda's own launches, bit for bit, and numba-cuda's launch
path left out of repeated calls.  The simulator has no compiled kernels to
launch directly, so these tests need hardware.
"""

import numpy as np
import pytest

import nbce

cuda_backend = pytest.importorskip("nbce.cuda")
from nbce.cuda import _device  # noqa: E402  (after the simulator switch in conftest)

pytestmark = pytest.mark.skipif(_device.SIMULATOR or not _device.DIRECT_LAUNCH,
                                reason="direct launches need a GPU and cuda.core")


def _calls(rng, cuda):
    x = cuda.to_device(rng.standard_normal((300, 1000)).astype(np.float32))
    wide = cuda.to_device(rng.standard_normal((3, 70000)).astype(np.float32))  # split rows
    t = cuda.to_device(rng.integers(0, 1000, 300))
    return [
        lambda: nbce.logsumexp(x),
        lambda: nbce.entropy(wide),
        lambda: nbce.cross_entropy(x, t),
        lambda: nbce.cross_entropy(x, t, reduction="none", label_smoothing=0.1),
        lambda: nbce.log_softmax(x),
    ]


def test_direct_launches_equal_numba_cuda_launches(rng, monkeypatch):
    from numba import cuda

    calls = _calls(rng, cuda)
    direct = [[c().copy_to_host() for _ in range(2)] for c in calls]  # the second call is a direct launch
    monkeypatch.setattr(_device, "DIRECT_LAUNCH", False)
    monkeypatch.setattr(_device, "_direct", {})
    plain = [c().copy_to_host() for c in calls]
    for (first, second), expected in zip(direct, plain):
        np.testing.assert_array_equal(first, expected)
        np.testing.assert_array_equal(second, expected)


@pytest.mark.skipif(not _device.RAW_LAUNCH_AVAILABLE, reason="raw launches need cuda.bindings")
def test_raw_launches_equal_cuda_core_launches(rng, monkeypatch):
    """The words packed for the driver's cuLaunchKernel are the ones cuda.core gets."""
    from numba import cuda

    calls = _calls(rng, cuda)
    monkeypatch.setattr(_device, "RAW_LAUNCH", True)
    taken = []
    real = _device.DirectKernel._raw_launch
    monkeypatch.setattr(_device.DirectKernel, "_raw_launch", lambda self, *a: (taken.append(1), real(self, *a))[1])
    raw = [[c().copy_to_host() for _ in range(2)] for c in calls]
    assert taken  # the second call of each went through cuLaunchKernel
    monkeypatch.setattr(_device, "RAW_LAUNCH", False)
    core = [c().copy_to_host() for c in calls]
    for (first, second), expected in zip(raw, core):
        np.testing.assert_array_equal(first, expected)
        np.testing.assert_array_equal(second, expected)


def test_repeated_calls_do_not_take_numba_cudas_launch_path(rng, monkeypatch):
    from numba import cuda
    from numba.cuda.dispatcher import _Kernel

    calls = _calls(rng, cuda)
    for c in calls:
        c()
    taken = []
    real = _Kernel.launch
    monkeypatch.setattr(_Kernel, "launch", lambda self, *a, **k: (taken.append(self), real(self, *a, **k))[1])
    for c in calls:
        c()
    assert taken == []


def test_a_utility_kernel_launched_directly(rng):
    from numba import cuda

    kernel = cuda_backend.utility_kernels(cuda_backend.THREADS).gather
    values = cuda.to_device(rng.standard_normal(10))
    geometry = cuda.to_device(np.array([[10, -1]], dtype=np.int64))  # reversed
    out = cuda.device_array(10, np.float64)
    for _ in range(2):  # numba-cuda's launch, then the direct one
        out.copy_to_device(np.full(10, np.nan))  # (numba-cuda's `out[:] =` launches its own one-block kernel)
        _device.launch(kernel, 1, cuda_backend.THREADS, 0, (values, 9, geometry, out))
        np.testing.assert_array_equal(out.copy_to_host(), values.copy_to_host()[::-1])
