"""GPU: nbce.cross_entropy on PyTorch CUDA tensors against torch's own, timed with CUDA events.

Skipped (NotImplementedError in setup) where no CUDA device and torch are present,
and the Liger-Kernel cases where liger-kernel is not installed.  Throughput is
reported against a device-to-device copy measured in the same run.  The same
comparison as one table: ``python -m benchmarks.gpu_table``.
"""

import numpy as np

import nbce

from ._gpu import (ITEMSIZE, bandwidth, copy_ms, event_ms, liger_cross_entropy, parse_shape, reference_cross_entropy,
                   rotating, torch_cuda)

SHAPES = ["8192x128256", "4096x32000", "16x262144", "65536x100"]
DTYPES = ["float32", "bfloat16"]
FLOAT32_ONLY = {"16x262144", "65536x100"}  # split rows and short rows: one dtype is enough


class GpuCrossEntropy:
    """Mean cross-entropy, int64 targets: nbce, torch eager and Liger-Kernel's
    forward (skipped where liger-kernel is not installed), inputs rotated so
    that small ones are not read from L2; the copy is measured in the same
    setup as the yardstick."""

    params = [SHAPES, DTYPES, ["nbce", "torch", "liger"]]
    param_names = ["shape", "dtype", "library"]
    timeout = 600

    def setup(self, shape, dtype, library):
        torch = torch_cuda()
        if shape in FLOAT32_ONLY and dtype != "float32":
            raise NotImplementedError(f"only float32 for {shape}")
        if library == "liger":
            run = liger_cross_entropy()
        else:
            run = nbce.cross_entropy if library == "nbce" else torch.nn.functional.cross_entropy
        n, v = parse_shape(shape)
        self.torch = torch
        inputs = rotating(lambda: (torch.randn(n, v, device="cuda", dtype=getattr(torch, dtype)),
                                   torch.randint(0, v, (n,), device="cuda")), n * v * ITEMSIZE[dtype])
        x, t = inputs()
        if library == "nbce":
            ours, ref = float(nbce.cross_entropy(x, t)), reference_cross_entropy(torch, x, t)
            if not np.isclose(ours, ref, rtol=1e-4, atol=0):
                raise AssertionError(f"nbce {ours} vs torch float64 {ref}")
        self.run = lambda: run(*inputs())
        self.ms = event_ms(torch, self.run)
        self.figures = bandwidth((n, v), dtype, self.ms, copy_ms(torch, inputs))

    def time_cross_entropy(self, shape, dtype, library):
        self.run()
        self.torch.cuda.synchronize()

    def track_event_ms(self, shape, dtype, library):
        return self.ms

    def track_fraction_of_copy_bandwidth(self, shape, dtype, library):
        """The library's GB/s (logits read ÷ time) over a device copy's
        (read + write): nbce's fraction under library="nbce"."""
        return self.figures["of_copy"]

    track_event_ms.unit = "ms"
    track_fraction_of_copy_bandwidth.unit = "fraction"


class GpuEvaluate:
    """nbce.evaluate on a torch CUDA tensor against torch computing the same metrics on the GPU."""

    params = [["4096x32000", "8192x128256"], ["nbce", "torch"]]
    param_names = ["shape", "library"]
    timeout = 600

    def setup(self, shape, library):
        torch = torch_cuda()
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
        self.ms = event_ms(torch, self.run, repeat=10)
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
        torch_cuda()
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
