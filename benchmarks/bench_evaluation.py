"""Batch evaluation (loss, top-1/top-5 accuracy, entropy in one pass) beside NumPy, PyTorch and JAX
doing the same with their own operations, and the resident memory of evaluating a memory-mapped file
larger than a gigabyte.  Its throughput is in ``bench_cross_entropy.Throughput``."""

import json
import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np

from ._cases import EVALUATIONS, IMPLEMENTATIONS, make_inputs, median_seconds

SHAPES = ["4096x32000", "65536x100"]


def _shape(name):
    return tuple(int(n) for n in name.split("x"))


class Evaluate:
    params = [SHAPES, list(EVALUATIONS)]
    param_names = ["shape", "library"]
    timeout = 300

    def setup(self, shape, library):
        x, t = make_inputs(_shape(shape), "float32")
        self.run = EVALUATIONS[library](x, t)
        got = np.array(self.run(), dtype=np.float64)  # warm up, and check the answer once
        expected = np.array(EVALUATIONS["nbce"](x, t)(), dtype=np.float64)
        if not np.allclose(got, expected, rtol=1e-4, atol=1e-6):
            raise AssertionError(f"{library} gave {got}, nbce {expected}")

    def time_evaluate(self, shape, library):
        self.run()


class EvaluateCost:
    """What every metric costs beyond the loss: evaluate's time over a
    cross_entropy's on the same float32 array (medians, the two alternated
    three times; the lowest ratio of the three rounds)."""

    params = [SHAPES + ["512x100"]]
    param_names = ["shape"]
    unit = "ratio"
    timeout = 300

    def setup(self, shape):
        x, t = make_inputs(_shape(shape), "float32")
        evaluate, loss = EVALUATIONS["nbce"](x, t), IMPLEMENTATIONS["nbce"](x, t)
        evaluate(), loss()  # compiled, or loaded from the cache
        self.ratio = min(median_seconds(evaluate) / median_seconds(loss) for _ in range(3))

    def track_evaluate_over_cross_entropy(self, shape):
        return self.ratio


_MAPPED_EVALUATION = textwrap.dedent("""
    import json, sys
    import numpy as np
    import nbce

    def high_water_mb():
        status = dict(line.split(":", 1) for line in open("/proc/self/status"))
        return int(status["VmHWM"].split()[0]) / 1024

    nbce.evaluate(np.zeros((4, 8), np.float32), np.zeros(4, np.int64))
    logits = np.load(sys.argv[1], mmap_mode="r")
    target = np.arange(logits.shape[0]) % logits.shape[1]
    before = high_water_mb()
    nbce.evaluate(logits, target)
    print(json.dumps({"growth_mb": high_water_mb() - before}))
""")


class MappedFileMemory:
    """Growth of the resident set's high-water mark while nbce.evaluate reads a 1.25 GiB
    memory-mapped .npy file (in a fresh process, so the file is not already resident)."""

    unit = "MB"
    timeout = 600

    def setup(self):
        if not sys.platform.startswith("linux"):
            raise NotImplementedError("reads /proc/self/status")
        self.folder = tempfile.mkdtemp(prefix="nbce-bench-")
        self.path = os.path.join(self.folder, "logits.npy")
        mapped = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float32, shape=(10240, 32768))
        for start in range(0, mapped.shape[0], 512):
            mapped[start:start + 512] = 0.5
        mapped.flush()
        del mapped

    def teardown(self):
        os.remove(self.path)
        os.rmdir(self.folder)

    def track_rss_growth_evaluate_mapped_1_25gib(self):
        out = subprocess.run([sys.executable, "-c", _MAPPED_EVALUATION, self.path], capture_output=True, text=True,
                             check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])["growth_mb"]
