"""What the GPU benchmarks share: finding torch and a CUDA device, Liger-Kernel's
forward, CUDA-event timing over rotated inputs, the float64 reference, and the
arithmetic that turns times into bandwidth figures.

Importing this module imports neither torch nor Numba, so the arithmetic can be
tested, and the suites skipped, on machines without them.
"""

import inspect
import math

import numpy as np

ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}

# Inputs are rotated through at least this many bytes so that a small input is
# not read from the L2 cache (50-60 MB on an H100/H200) after its first call.
ROTATION_BYTES = 512e6
MAX_ROTATION = 4096


def parse_shape(name):
    """``"4096x32000"`` -> ``(4096, 32000)``."""
    return tuple(int(n) for n in name.split("x"))


def torch_cuda():
    """torch, when it is installed and sees a CUDA device; otherwise
    NotImplementedError saying which is missing (asv skips the case)."""
    try:
        import torch
    except ImportError:
        raise NotImplementedError("torch is not installed") from None
    if not torch.cuda.is_available():
        raise NotImplementedError(f"torch {torch.__version__} sees no CUDA device")
    return torch


def liger_cross_entropy():
    """Liger-Kernel's mean cross-entropy forward as ``f(logits, target)``, or
    NotImplementedError when liger-kernel is not installed.

    ``LigerCrossEntropyFunction.forward`` gained a positional ``weight`` (no
    default) after ``target`` in later releases; every other argument keeps
    its default (ignore_index=-100, no smoothing, reduction="mean").  With
    ``requires_grad`` off, current releases skip the in-place gradient."""
    try:
        from liger_kernel.ops.cross_entropy import LigerCrossEntropyFunction
    except ImportError:
        raise NotImplementedError("liger-kernel is not installed") from None
    extra = (None,) if "weight" in inspect.signature(LigerCrossEntropyFunction.forward).parameters else ()

    def forward(x, t):
        out = LigerCrossEntropyFunction.apply(x, t, *extra)
        return out[0] if isinstance(out, tuple) else out
    return forward


def rotation_count(nbytes):
    """How many copies of an ``nbytes`` input to cycle through."""
    return max(1, min(MAX_ROTATION, math.ceil(ROTATION_BYTES / max(nbytes, 1))))


def rotating(make, nbytes):
    """``make()`` called ``rotation_count(nbytes)`` times; returns a function
    giving the next of these items on each call."""
    items = [make() for _ in range(rotation_count(nbytes))]
    state = [0]

    def following():
        state[0] = (state[0] + 1) % len(items)
        return items[state[0]]
    following.count = len(items)
    return following


def event_ms(torch, fn, repeat=20, warm=3):
    """Median milliseconds of ``repeat`` calls of ``fn`` between two CUDA
    events on the current stream, after ``warm`` calls (compilation)."""
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return float(np.median(times))


def copy_ms(torch, inputs):
    """Median ms of a device-to-device copy of the next of the rotated
    ``(logits, target)`` pairs from ``inputs`` into one destination."""
    dst = torch.empty_like(inputs()[0])
    return event_ms(torch, lambda: dst.copy_(inputs()[0]))


def _row_chunks(x, rows_per_chunk=None):
    n, v = x.shape
    step = rows_per_chunk or max(1, 2**25 // max(v, 1))  # float64 chunks of 256 MiB (and as much for log_softmax)
    for start in range(0, n, step):
        yield start, x[start:start + step].double()


def reference_cross_entropy(torch, x, t):
    """Mean cross-entropy of ``x`` (rows of class scores) and class indices
    ``t``, computed by torch in float64 a chunk of rows at a time."""
    total = 0.0
    for start, chunk in _row_chunks(x):
        total += float(torch.nn.functional.cross_entropy(chunk, t[start:start + len(chunk)], reduction="sum"))
    return total / x.shape[0]


def reference_logsumexp(torch, x):
    """Row log-sum-exp of ``x`` by torch in float64, a chunk of rows at a time."""
    return torch.cat([torch.logsumexp(chunk, dim=1) for _, chunk in _row_chunks(x)])


def bandwidth(shape, dtype, ms, copy_ms):
    """The figures of one timed row: ``ms`` to read logits of ``shape`` and
    ``dtype`` once, against ``copy_ms`` for a device-to-device copy of them.

    GB/s counts the bytes read; the copy's rate counts the bytes it reads and
    writes (twice the input), so ``of_copy`` is the fraction of the copy's
    bandwidth a one-read kernel reaches (1.0: as fast as the memory moves)."""
    nbytes = math.prod(shape) * ITEMSIZE[dtype]
    gbs = nbytes / ms / 1e6
    copy_gbs = 2 * nbytes / copy_ms / 1e6
    return {"bytes": nbytes, "gbs": gbs, "copy_gbs": copy_gbs, "of_copy": gbs / copy_gbs}


def speedups(ms, others):
    """``{"x_<name>": other_ms / ms}`` (above 1: nbce is faster); None where
    the other was not timed."""
    return {f"x_{name}": (None if other is None else other / ms) for name, other in others.items()}
