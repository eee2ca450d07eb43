"""Where ``evaluate(..., device="auto")`` scores host arrays: on the CPU, or
through the GPU pipeline where that was measured faster on this machine.

Host arrays reach a GPU only through the pipeline (read on the host, copied
over the link, scored there); the CPU backend scores them where they lie.
Which is faster depends on the machine: on a 16-core H100 machine the CPU
backend scored a 1 GB float16 array at 14.7 GB/s and the pipeline, reading
on one thread then, at 4.9 GB/s; the link alone moved 44 GB/s.  So "auto"
measures both paths once per machine, on a sample (``SAMPLE_SHAPE`` float16,
256 MiB: four of the pipeline's chunks, so that it overlaps), the first
time it is given host arrays large enough for the choice to matter
(``MEASURE_FROM_BYTES``); smaller inputs stay on the CPU without measuring.  The rates are kept in ``<user cache>/nbce/routing.json`` under
the GPU's name, the host's core count and nbce's version, so later processes
reuse them.  ``NBCE_AUTO_HOST_DEVICE=cpu`` or ``=cuda`` decides without
measuring.
"""

import json
import os
import statistics
import threading
import time

import numpy as np

from . import __version__
from ._cache import user_cache_root

# Host inputs below this size stay on the CPU: the pipeline's start-up
# (streams, pinned buffers, the first kernels) is not worth a measurement.
MEASURE_FROM_BYTES = 2**30
SAMPLE_SHAPE = (32768, 4096)  # float16: 256 MiB
_REPEATS = 3
_ENVIRONMENT = "NBCE_AUTO_HOST_DEVICE"

_decided = {}  # machine key -> {"cpu_gb_per_second": ..., "cuda_gb_per_second": ...}
_lock = threading.Lock()


def routing_file():
    return os.path.join(os.path.dirname(user_cache_root()), "routing.json")


def host_arrays_to_gpu(nbytes, score):
    """Whether ``device="auto"`` streams ``nbytes`` of host logits through the GPU.

    ``score(logits, target, device)`` runs an evaluation (``nbce.evaluate``);
    it times the two paths on the sample when this machine has no rates yet.
    """
    forced = os.environ.get(_ENVIRONMENT, "").strip().lower()
    if forced in ("cpu", "cuda"):
        return forced == "cuda" and gpu_name() is not None
    if nbytes is None or nbytes < MEASURE_FROM_BYTES:
        return False
    name = gpu_name()
    if name is None:
        return False
    rates = _rates(f"{name} | {os.cpu_count()} cores | nbce {__version__}", score)
    return rates["cuda_gb_per_second"] > rates["cpu_gb_per_second"]


def gpu_name():
    """The current GPU's name; None without a usable GPU or numba-cuda (and on the simulator)."""
    try:
        from .cuda import _device
    except ImportError:
        return None
    if _device.SIMULATOR or not _device.available():
        return None
    return _device.device_name()


def _rates(key, score):
    with _lock:
        found = _decided.get(key) or _load().get(key)
        if found is None:
            found = measure(score)
            _save(key, found)
        _decided[key] = found
        return found


def measure(score, shape=None):
    """GB/s of the CPU backend and of the GPU pipeline scoring the same float16
    host sample (medians of ``_REPEATS`` after a warm-up, which compiles)."""
    rng = np.random.default_rng(0)
    shape = shape or SAMPLE_SHAPE
    # Finite float16 values in [0, 2) straight from random bits: no float32 temporary of twice the size.
    logits = rng.integers(0, 0x4000, shape, dtype=np.uint16).view(np.float16)
    target = rng.integers(0, shape[-1], shape[:-1])
    rates = {}
    for device in ("cpu", "cuda"):
        score(logits, target, device)
        seconds = []
        for _ in range(_REPEATS):
            start = time.perf_counter()
            score(logits, target, device)
            seconds.append(time.perf_counter() - start)
        rates[f"{device}_gb_per_second"] = logits.nbytes / statistics.median(seconds) / 1e9
    return rates


def _load():
    try:
        with open(routing_file()) as file:
            found = json.load(file)
        return found if isinstance(found, dict) else {}
    except (OSError, ValueError):
        return {}


def _save(key, rates):
    """Add ``rates`` to the file (best effort: an unwritable cache only costs a measurement per process)."""
    path = routing_file()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        everything = {**_load(), key: rates}
        temporary = f"{path}.{os.getpid()}.tmp"
        with open(temporary, "w") as file:
            json.dump(everything, file, indent=1)
        os.replace(temporary, path)  # readers see the old file or the new one, never half of one
    except OSError:
        pass
