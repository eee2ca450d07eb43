"""Print the README's speed table: ``python -m benchmarks.speed_table``.

Medians of 7 runs after a warm-up, all libraries timed in the same process
one after another, plus a parallel read of the same array as the bandwidth
yardstick.  The same implementations as the asv suite (``_cases.py``).
"""

import platform

import numba
import numpy as np

from ._cases import IMPLEMENTATIONS, make_inputs, median_seconds, read_bandwidth_gbs

CASES = [((4096, 32000), "float32"), ((4096, 1000), "float32"), ((256, 128256), "float32"),
         ((65536, 100), "float32"), ((4096, 32000), "float16"), ((4096, 32000), "bfloat16")]


def print_table(implementations, cases, others):
    """One markdown row per (shape, dtype): nbce's time, GB/s and fraction of a
    parallel read, then each of ``others`` with its ratio to nbce.  Libraries
    other than nbce run on float32 only where NumPy lacks the dtype's maths."""
    print(f"CPU: {platform.processor() or platform.machine()}, numba threads: {numba.get_num_threads()}, "
          f"numpy {np.__version__}, numba {numba.__version__}")
    header = "| shape | dtype | nbce ms | GB/s | of read bw | " + " | ".join(f"{o} ms | ×{o}" for o in others) + " |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for shape, dtype in cases:
        x, t = make_inputs(shape, dtype)
        times = {}
        for name, make in implementations.items():
            if name == "numpy" and dtype != "float32":
                continue
            try:
                times[name] = median_seconds(make(x, t))
            except NotImplementedError:
                pass
        ours = times["nbce"]
        gbs = x.nbytes / ours / 1e9
        cells = [f"{shape[0]}×{shape[1]}", dtype, f"{ours * 1e3:.1f}", f"{gbs:.1f}",
                 f"{gbs / read_bandwidth_gbs(x):.0%}"]
        for name in others:
            cells += [f"{times[name] * 1e3:.1f}", f"{times[name] / ours:.1f}"] if name in times else ["–", "–"]
        print("| " + " | ".join(cells) + " |", flush=True)


def main():
    print_table(IMPLEMENTATIONS, CASES, ("torch", "jax", "numpy"))


if __name__ == "__main__":
    main()
