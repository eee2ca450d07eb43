"""Implementations compared by the benchmarks, and the bandwidth yardstick.

Each entry of ``IMPLEMENTATIONS`` turns (logits, target) into a zero-argument
callable computing the mean cross-entropy, or raises ``NotImplementedError``
when its library is not installed (asv then skips the case).
"""

import importlib

import numpy as np
from numba import njit, prange

import nbce
from nbce import _bench


def optional(module):
    """Import ``module``, or tell asv to skip the case when it is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise NotImplementedError(f"{module.split('.')[0]} is not installed") from None


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
    torch = optional("torch")
    if x.dtype.name == "bfloat16":
        xt = torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
    else:
        xt = torch.from_numpy(x)
    tt = torch.from_numpy(t)
    return lambda: torch.nn.functional.cross_entropy(xt, tt)


def _jax(x, t):
    jax = optional("jax")
    jnp = optional("jax.numpy")

    @jax.jit
    def loss(x, t):
        x = x.astype(jnp.float32)
        picked = jnp.take_along_axis(x, t[:, None], axis=1)[:, 0]
        return jnp.mean(jax.nn.logsumexp(x, axis=1) - picked)

    xj, tj = jnp.asarray(x), jnp.asarray(t)
    return lambda: loss(xj, tj).block_until_ready()


IMPLEMENTATIONS = {"nbce": _nbce, "numpy": _numpy, "torch": _torch, "jax": _jax}


# Batch evaluation: each entry turns (logits, target) into a callable returning
# (mean loss, top-1 accuracy, top-5 accuracy, mean entropy) — what
# nbce.evaluate gives, less the calibration error that only nbce computes.

def _nbce_evaluate(x, t):
    def run():
        r = nbce.evaluate(x, t, top_k=(1, 5))
        return r.loss, r.accuracy[1], r.accuracy[5], r.entropy
    return run


def _numpy_evaluate(x, t):
    def run():
        rows = np.arange(len(t))
        z = x - x.max(axis=1, keepdims=True)
        s = np.exp(z).sum(axis=1)
        log_p = z - np.log(s)[:, None]
        rank = (x > x[rows, t][:, None]).sum(axis=1)
        entropy = -(np.exp(log_p) * log_p).sum(axis=1)
        return -log_p[rows, t].mean(), (rank < 1).mean(), (rank < 5).mean(), entropy.mean()
    return run


def _torch_evaluate(x, t):
    torch = optional("torch")
    xt, tt = torch.from_numpy(x), torch.from_numpy(t)

    def run():
        log_p = torch.log_softmax(xt, dim=1)
        top5 = torch.topk(xt, 5, dim=1).indices
        hits = top5 == tt[:, None]
        entropy = -(log_p.exp() * log_p).sum(dim=1)
        return (float(torch.nn.functional.nll_loss(log_p, tt)), float(hits[:, 0].double().mean()),
                float(hits.any(dim=1).double().mean()), float(entropy.mean()))
    return run


def _jax_evaluate(x, t):
    jax = optional("jax")
    jnp = optional("jax.numpy")

    @jax.jit
    def metrics(x, t):
        log_p = jax.nn.log_softmax(x, axis=1)
        picked = jnp.take_along_axis(x, t[:, None], axis=1)
        rank = jnp.sum(x > picked, axis=1)
        entropy = -jnp.sum(jnp.exp(log_p) * log_p, axis=1)
        loss = -jnp.mean(jnp.take_along_axis(log_p, t[:, None], axis=1))
        return loss, jnp.mean(rank < 1), jnp.mean(rank < 5), jnp.mean(entropy)

    xj, tj = jnp.asarray(x), jnp.asarray(t)
    return lambda: tuple(float(v) for v in metrics(xj, tj))


EVALUATIONS = {"nbce": _nbce_evaluate, "numpy": _numpy_evaluate, "torch": _torch_evaluate, "jax": _jax_evaluate}


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


def torch_beside_numba():
    """torch with numba's thread count, or None when it is not installed; prints
    the line naming the machine and versions that heads a table."""
    import platform

    import numba

    try:
        torch = optional("torch")
        torch.set_num_threads(numba.get_num_threads())
    except NotImplementedError:
        torch = None
    print(f"CPU: {platform.processor() or platform.machine()}, threads: {numba.get_num_threads()}, "
          f"numpy {np.__version__}, numba {numba.__version__}, torch {torch.__version__ if torch else '–'}")
    return torch


def median_seconds(fn, repeat=7):
    return _bench.median_seconds(fn, repeat)
