"""Extra memory is O(rows), never a copy of the logits (measured in a child process)."""

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SCRIPT = textwrap.dedent("""
    import json, resource
    import numpy as np
    import nbce

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    n_rows, n_classes = 8192, 32768                 # 1 GiB of float32 logits
    small = np.zeros((4, 8), np.float32)
    nbce.cross_entropy(small, np.zeros(4, np.int64))                          # compile first
    nbce.cross_entropy(small, np.zeros(4, np.int64), label_smoothing=0.1)
    x = np.empty((n_rows, n_classes), np.float32)
    x[:] = 0.5                                       # touch every page
    t = np.arange(n_rows) % n_classes
    before = peak_mb()
    loss = nbce.cross_entropy(x, t)
    smoothed = nbce.cross_entropy(x[:, 1:], t, label_smoothing=0.1)          # strided rows
    after = peak_mb()
    print(json.dumps({"input_mb": x.nbytes / 2**20, "growth_mb": after - before,
                      "loss": float(loss), "smoothed": float(smoothed)}))
""")


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss units differ off Linux")
def test_cross_entropy_on_1gib_grows_peak_memory_by_under_10_percent():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["input_mb"] == 1024
    assert result["growth_mb"] < 0.1 * result["input_mb"], result
    assert abs(result["loss"] - math.log(32768)) < 1e-5
    assert abs(result["smoothed"] - math.log(32767)) < 1e-5


EVALUATE_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import nbce

    def peak_mb():  # the high-water mark of the resident set, mapped file pages included
        status = dict(line.split(":", 1) for line in open("/proc/self/status"))
        return int(status["VmHWM"].split()[0]) / 1024

    nbce.evaluate(np.zeros((4, 8), np.float32), np.zeros(4, np.int64))      # compile first
    logits = np.load(sys.argv[1], mmap_mode="r")
    t = np.arange(logits.shape[0]) % logits.shape[1]
    before = peak_mb()
    result = nbce.evaluate(logits, t)
    after = peak_mb()
    print(json.dumps({"file_mb": logits.nbytes / 2**20, "growth_mb": after - before, "loss": result.loss,
                      "top1": result.accuracy[1]}))
""")


def write_constant_logits(path, n_rows, n_classes):
    """A .npy file of 0.5s, written in slices (the file is not resident in the child that reads it)."""
    mapped = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n_rows, n_classes))
    for start in range(0, n_rows, 512):
        mapped[start:start + 512] = 0.5
    mapped.flush()
    del mapped


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
def test_evaluate_streams_a_memory_map_larger_than_a_gigabyte_in_bounded_memory(tmp_path):
    path = tmp_path / "logits.npy"
    write_constant_logits(path, 10240, 32768)  # 1.25 GiB of float32 logits
    out = subprocess.run([sys.executable, "-c", EVALUATE_SCRIPT, str(path)], capture_output=True, text=True,
                         check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["file_mb"] == 1280
    assert result["growth_mb"] < 300, result
    assert abs(result["loss"] - math.log(32768)) < 1e-5 and result["top1"] == 1.0  # all tied
