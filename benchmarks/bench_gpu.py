"""GPU: nbce.cross_entropy on PyTorch CUDA tensors against torch's own, timed with CUDA events.

Skipped (NotImplementedError in setup) where no CUDA device and torch are present.
Throughput is reported against a device-to-device copy measured in the same run.
"""

import numpy as np

import nbce

SHAPES = ["8192x128256", "4096x32000", "16x262144"]
DTYPES = ["float32", "bfloat16"]


def _torch_cuda():
    try:
        import torch
    except ImportError:
        raise NotImplementedError("torch is not installed") from None
    if not torch.cuda.is_available():
        raise NotImplementedError("no CUDA device")
    return torch


def _event_ms(torch, fn, repeat=20):
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


class GpuCrossEntropy:
    params = [SHAPES, DTYPES, ["nbce", "torch"]]
    param_names = ["shape", "dtype", "library"]
    timeout = 600

    def setup(self, shape, dtype, library):
        torch = _torch_cuda()
        if shape == "16x262144" and dtype != "float32":
            raise NotImplementedError("only float32 for the split-row shape")
        n, v = (int(s) for s in shape.split("x"))
        self.torch = torch
        self.x = torch.randn(n, v, device="cuda", dtype=getattr(torch, dtype))
        self.t = torch.randint(0, v, (n,), device="cuda")
        if library == "nbce":
            self.run = lambda: nbce.cross_entropy(self.x, self.t)
        else:
            self.run = lambda: torch.nn.functional.cross_entropy(self.x, self.t)
        ours = float(nbce.cross_entropy(self.x, self.t))
        theirs = float(torch.nn.functional.cross_entropy(self.x.float(), self.t))
        if not np.isclose(ours, theirs, rtol=1e-4):
            raise AssertionError(f"nbce {ours} vs torch {theirs}")
        self.ms = _event_ms(torch, self.run)
        nbytes = self.x.numel() * self.x.element_size()
        self.copy_gbs = nbytes * 2 / (_event_ms(torch, lambda: self.x.clone()) / 1e3) / 1e9
        self.gbs = nbytes / (self.ms / 1e3) / 1e9

    def time_cross_entropy(self, shape, dtype, library):
        self.run()
        self.torch.cuda.synchronize()

    def track_event_ms(self, shape, dtype, library):
        return self.ms

    def track_fraction_of_copy_bandwidth(self, shape, dtype, library):
        return self.gbs / self.copy_gbs

    track_event_ms.unit = "ms"
    track_fraction_of_copy_bandwidth.unit = "fraction"
