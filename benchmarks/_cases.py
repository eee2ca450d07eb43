"""Implementations compared by the benchmarks, and the bandwidth yardstick.

Each entry of ``IMPLEMENTATIONS`` turns (logits, target) into a zero-argument
callable computing the mean cross-entropy, or raises ``NotImplementedError``
when its library is not installed (asv then skips the case).
"""

import time

import numpy as np
from numba import njit, prange

import nbce


def _nbce(x, t):
    return lambda: nbce.cross_entropy(x, t)


def _numpy(x, t):
    def run():
        x64 = x.astype(np.float32, copy=False)
        m = x64.max(axis=1, keepdims=True)
        lse = np.log(np.exp(x64 - m).sum(axis=1)) + m[:, 0]
        return np.mean(lse - x64[np.arange(len(t)), t])
    return run


def _torch(x, t):
    try:
        import torch
    except ImportError:
        raise NotImplementedError("torch is not installed") from None
    if x.dtype.name == "bfloat16":
        xt = torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
    else:
        xt = torch.from_numpy(x)
    tt = torch.from_numpy(t)
    return lambda: torch.nn.functional.cross_entropy(xt, tt)


def _jax(x, t):
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        raise NotImplementedError("jax is not installed") from None

    @jax.jit
    def loss(x, t):
        x = x.astype(jnp.float32)
        picked = jnp.take_along_axis(x, t[:, None], axis=1)[:, 0]
        return jnp.mean(jax.nn.logsumexp(x, axis=1) - picked)

    xj, tj = jnp.asarray(x), jnp.asarray(t)
    return lambda: loss(xj, tj).block_until_ready()


IMPLEMENTATIONS = {"nbce": _nbce, "numpy": _numpy, "torch": _torch, "jax": _jax}


def make_inputs(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape, dtype=np.float32)
    if dtype == "bfloat16":
        import ml_dtypes
        x = x.astype(ml_dtypes.bfloat16)
    else:
        x = x.astype(dtype, copy=False)
    t = rng.integers(0, shape[1], shape[0])
    return x, t


@njit(parallel=True, fastmath={"reassoc"}, cache=True)
def _read_all(words):
    """Sum every 64-bit word, rows in parallel: a pure streaming read."""
    total = 0
    for r in prange(words.shape[0]):
        row = words[r]
        s = 0
        for j in range(row.size):
            s += row[j]
        total += s
    return total


def read_bandwidth_gbs(array, repeat=7):
    """Median GB/s of a parallel streaming read of ``array`` (same memory, same threads)."""
    words = array.reshape(array.shape[0], -1).view(np.uint64)
    _read_all(words)
    return array.nbytes / median_seconds(lambda: _read_all(words), repeat) / 1e9


def median_seconds(fn, repeat=7):
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))
