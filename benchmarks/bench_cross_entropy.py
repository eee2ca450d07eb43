"""Mean cross-entropy, class-index targets: nbce beside NumPy, PyTorch and JAX (CPU)."""

import numpy as np

from ._cases import EVALUATIONS, IMPLEMENTATIONS, make_inputs, median_seconds, read_bandwidth_gbs

SHAPES = ["4096x32000", "4096x1000", "256x128256", "65536x100"]
DTYPES = ["float32", "float16", "bfloat16"]


def _shape(name):
    return tuple(int(n) for n in name.split("x"))


class CrossEntropy:
    params = [SHAPES, DTYPES, list(IMPLEMENTATIONS)]
    param_names = ["shape", "dtype", "library"]
    timeout = 300

    def setup(self, shape, dtype, library):
        if library == "numpy" and dtype != "float32":
            raise NotImplementedError("NumPy has no bfloat16 maths; float16 would measure conversions")
        if library == "torch" and dtype != "float32" and _shape(shape)[0] > 8192:
            # torch 2.13 on the CPU gives NaN (float16) or a mean 1 % off (bfloat16) at 65536 rows
            raise NotImplementedError("torch's half-precision mean over this many rows is not an answer to time")
        x, t = make_inputs(_shape(shape), dtype)
        self.run = IMPLEMENTATIONS[library](x, t)
        got = float(self.run())  # warm the JIT and check the answer once
        expected = float(IMPLEMENTATIONS["nbce"](x, t)())
        # torch returns a bfloat16/float16 loss for half inputs: 2-3 significant digits
        if not np.isclose(got, expected, rtol=1e-2 if dtype != "float32" else 1e-4):
            raise AssertionError(f"{library} gave {got}, nbce {expected}")

    def time_cross_entropy(self, shape, dtype, library):
        self.run()


class Throughput:
    """nbce's GB/s (cross_entropy, or evaluate with every metric), and as a
    fraction of a parallel read of the same array."""

    params = [SHAPES, ["float32", "float16"], ["cross_entropy", "evaluate"]]
    param_names = ["shape", "dtype", "function"]
    unit = "GB/s"
    timeout = 300

    def setup(self, shape, dtype, function):
        self.x, t = make_inputs(_shape(shape), dtype)
        registry = IMPLEMENTATIONS if function == "cross_entropy" else EVALUATIONS
        self.gbs = self.x.nbytes / median_seconds(registry["nbce"](self.x, t)) / 1e9

    def track_gbs(self, shape, dtype, function):
        return self.gbs

    def track_fraction_of_read_bandwidth(self, shape, dtype, function):
        return self.gbs / read_bandwidth_gbs(self.x)

    track_fraction_of_read_bandwidth.unit = "fraction"
