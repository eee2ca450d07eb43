import os
from collections import namedtuple

# The GPU tests run on Numba's CUDA simulator unless NBCE_TEST_REAL_GPU=1.
# This must be set before numba is first imported.
if os.environ.get("NBCE_TEST_REAL_GPU") != "1":
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

import numpy as np
import pytest
from hypothesis import settings

# JIT compilation makes first examples slow: no per-example deadline.
settings.register_profile("nbce", deadline=None, max_examples=60, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "nbce"))

try:
    import ml_dtypes
except ImportError:  # bfloat16 tests need the bf16 extra
    ml_dtypes = None

FLOAT_DTYPES = ["float64", "float32", "float16", "bfloat16"]

# (rtol, atol) of a result against the float64 reference computed from the
# same input values.  float64: exp within 1 ulp, float64 sums.  Narrower
# inputs: float32 block sums (relative error ~1e-6 in the sum, i.e. ~1e-6
# nats absolute in a log) and a float32 result.
TOLERANCES = {
    "float64": (1e-12, 1e-12),
    "float32": (1e-5, 1e-5),
    "float16": (1e-5, 1e-5),
    "bfloat16": (1e-5, 1e-5),
}


def np_dtype(name):
    if name == "bfloat16":
        if ml_dtypes is None:
            pytest.skip("bfloat16 needs ml_dtypes")
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def make_logits(rng, shape, dtype, scale=3.0):
    """Random logits already rounded to ``dtype`` (the reference sees the same values)."""
    return (rng.standard_normal(shape) * scale).astype(np_dtype(dtype))


def save_evaluation_set(folder, rng, shape, dtype, pad_every):
    """logits.npy and targets.npy in ``folder`` (every ``pad_every``-th target
    -100); returns (folder, logits, targets)."""
    x = make_logits(rng, shape, dtype)
    t = rng.integers(0, shape[1], shape[0])
    t[::pad_every] = -100
    np.save(folder / "logits.npy", x)
    np.save(folder / "targets.npy", t)
    return folder, x, t


def assert_close(actual, expected, dtype):
    rtol, atol = TOLERANCES[dtype]
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=rtol, atol=atol)


def pytest_addoption(parser):
    parser.addoption("--run-install", action="store_true", help="run the slow install/uninstall tests (marker 'install')")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-install"):
        return
    skip = pytest.mark.skip(reason="slow install test: run with --run-install")
    for item in items:
        if item.get_closest_marker("install"):
            item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


BACKENDS = ["cpu", "cuda"]
Backend = namedtuple("Backend", "name to_device to_host")


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """(name, to_device, to_host) for running a test on the CPU or the CUDA backend.

    The CUDA backend runs on the simulator here (8 threads per block, so rows
    span several blocks); host operands such as weights stay on the host.
    """
    if request.param == "cpu":
        return Backend("cpu", lambda a: a, lambda r: r)
    cuda_backend = pytest.importorskip("nbce.cuda")
    from numba import cuda

    monkeypatch.setattr(cuda_backend, "THREADS", 8)
    monkeypatch.setattr(cuda_backend, "MIN_ELEMENTS_PER_THREAD", 4)
    return Backend("cuda", cuda.to_device, lambda r: r.copy_to_host())
