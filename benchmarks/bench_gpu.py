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


class GpuEvaluate:
    """nbce.evaluate on a torch CUDA tensor against torch computing the same metrics on the GPU."""

    params = [["4096x32000", "8192x128256"], ["nbce", "torch"]]
    param_names = ["shape", "library"]
    timeout = 600

    def setup(self, shape, library):
        torch = _torch_cuda()
        n, v = (int(s) for s in shape.split("x"))
        self.torch = torch
        x = torch.randn(n, v, device="cuda", dtype=torch.bfloat16)
        t = torch.randint(0, v, (n,), device="cuda")
        if library == "nbce":
            self.run = lambda: nbce.evaluate(x, t, top_k=(1, 5))
        else:
            def run():
                log_p = torch.log_softmax(x.float(), dim=1)
                hits = torch.topk(x, 5, dim=1).indices == t[:, None]
                return (torch.nn.functional.nll_loss(log_p, t), hits[:, 0].float().mean(), hits.any(1).float().mean(),
                        -(log_p.exp() * log_p).sum(1).mean())
            self.run = run
        self.ms = _event_ms(torch, self.run, repeat=10)
        self.gbs = x.numel() * x.element_size() / (self.ms / 1e3) / 1e9

    def time_evaluate(self, shape, library):
        self.run()
        self.torch.cuda.synchronize()

    def track_event_ms(self, shape, library):
        return self.ms

    track_event_ms.unit = "ms"


class GpuHostStreaming:
    """Host chunks through the GPU: pinned buffers, two streams; the overlap of copies and kernels."""

    unit = "fraction"
    timeout = 600

    def setup(self):
        _torch_cuda()
        from nbce._chunks import row_chunks
        from nbce._progress import Progress
        from nbce.cuda.pipeline import stream_host_chunks

        rng = np.random.default_rng(0)
        x = rng.standard_normal((16384, 32000), dtype=np.float32).astype(np.float16)  # 1 GB
        t = rng.integers(0, 32000, 16384)
        def run():
            return stream_host_chunks(nbce.Evaluator(), row_chunks(x, t, None, 1, 1024), Progress(enabled=False))

        run()
        self.timings = run()

    def track_copy_compute_overlap(self):
        return self.timings.overlap

    def track_end_to_end_gbs(self):
        return self.timings.bytes / self.timings.wall_s / 1e9

    def track_host_to_device_gbs(self):
        return self.timings.copy_gb_per_second

    track_end_to_end_gbs.unit = "GB/s"
    track_host_to_device_gbs.unit = "GB/s"
