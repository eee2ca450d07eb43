"""``nbce bench``: a quick side-by-side timing on the user's machine (medians of 5 runs)."""

import time

import numpy as np


def median_seconds(run, repeat=5):
    """Median wall time of ``repeat`` calls of ``run`` after one warm-up call (compilation)."""
    run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _candidates(x, t):
    import nbce

    yield "nbce.cross_entropy", lambda: nbce.cross_entropy(x, t)
    yield "nbce.evaluate (all metrics)", lambda: nbce.evaluate(x, t)

    def numpy_cross_entropy():
        m = x.max(axis=1, keepdims=True)
        lse = np.log(np.exp(x - m).sum(axis=1)) + m[:, 0]
        return np.mean(lse - x[np.arange(len(t)), t])

    yield "numpy cross-entropy", numpy_cross_entropy
    try:
        import torch
    except ImportError:
        return
    xt, tt = torch.from_numpy(x), torch.from_numpy(t)
    yield f"torch {torch.__version__} cross_entropy", lambda: torch.nn.functional.cross_entropy(xt, tt)


def speed_table(rows, classes):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((rows, classes), dtype=np.float32) * 3.0)
    t = rng.integers(0, classes, rows)
    timings = [(name, median_seconds(run)) for name, run in _candidates(x, t)]
    reference = timings[0][1]
    lines = [f"{rows} x {classes} float32 logits ({x.nbytes / 1e6:.0f} MB), median of 5 runs",
             f"  {'implementation':<34} {'ms':>9} {'GB/s':>7} {'vs nbce.cross_entropy':>22}"]
    for name, seconds in timings:
        lines.append(f"  {name:<34} {seconds * 1e3:9.1f} {x.nbytes / seconds / 1e9:7.2f} "
                     f"{seconds / reference:21.2f}x")
    return "\n".join(lines)
