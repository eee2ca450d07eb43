"""Print the README's softmax/log_softmax rows: ``python -m benchmarks.softmax_table``.

nbce with a fresh result, with a reused ``out=`` (no page faults of a new
array) and in place (``out=x``, the logits restored before each run, not
timed), beside PyTorch's ``softmax``/``log_softmax``: medians of 7 runs after
a warm-up, all in one process, the same thread count for both (set
``NUMBA_NUM_THREADS``; torch gets numba's count).  GB/s counts the logits
read and the result written once, for ``out=``.
"""

import time

import numpy as np

import nbce

from ._cases import make_inputs, median_seconds, torch_beside_numba

CASES = [((1024, 32000), "float32"), ((1024, 32000), "bfloat16")]


def _torch_tensor(torch, x):
    if x.dtype.name == "bfloat16":
        return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(x)


def median_in_place_seconds(function, x, repeat=7):
    """Median time of ``function(y, out=y)`` with ``y`` a fresh copy of ``x`` each run (after one warm-up)."""
    y = np.empty_like(x)
    times = []
    for _ in range(repeat + 1):
        np.copyto(y, x)
        start = time.perf_counter()
        function(y, out=y)
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def timings(x, torch):
    """{(function, variant): seconds} for nbce (fresh, out=, in place for float32) and torch (fresh)."""
    out = np.empty(x.shape, np.float32)
    xt = _torch_tensor(torch, x) if torch is not None else None
    found = {}
    for name in ("softmax", "log_softmax"):
        ours = getattr(nbce, name)
        found[name, "nbce"] = median_seconds(lambda: ours(x))
        found[name, "nbce out="] = median_seconds(lambda: ours(x, out=out))
        if x.dtype == np.float32:  # in place needs the result dtype
            found[name, "nbce in place"] = median_in_place_seconds(ours, x)
        if xt is not None:
            theirs = getattr(torch, name)
            found[name, "torch"] = median_seconds(lambda: theirs(xt, dim=1))
    return found


def _ms(seconds):
    return f"{seconds * 1e3:.1f}" if seconds else "–"


def main():
    torch = torch_beside_numba()
    print("| function | shape | dtype | nbce ms | nbce out= ms | nbce in place ms | GB/s (out=) | torch ms | ×torch "
          "| ×torch (out=) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for shape, dtype in CASES:
        x, _ = make_inputs(shape, dtype)
        found = timings(x, torch)
        moved = x.nbytes + x.size * 4
        for name in ("softmax", "log_softmax"):
            fresh, reused = found[name, "nbce"], found[name, "nbce out="]
            theirs = found.get((name, "torch"))
            cells = [name, f"{shape[0]}×{shape[1]}", dtype, _ms(fresh), _ms(reused),
                     _ms(found.get((name, "nbce in place"))), f"{moved / reused / 1e9:.1f}", _ms(theirs)]
            cells += [f"{theirs / fresh:.1f}", f"{theirs / reused:.1f}"] if theirs else ["–", "–"]
            print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
