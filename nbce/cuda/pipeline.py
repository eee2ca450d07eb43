"""Host chunks through the GPU with copy and compute overlapped.

Two slots, each with its own stream, pinned staging buffer and device buffer,
take chunks in turn.  While the GPU copies and scores chunk i on one stream,
the host reads chunk i+1 (from a memory-mapped file, say) into the other
slot's pinned buffer and queues its copy; a slot's per-row results are copied
back asynchronously and tallied when the slot comes round again.  Nothing
waits on the GPU except that hand-over.
"""

import time
from dataclasses import dataclass, field

import numpy as np

from .. import cpu
from .._arrays import as_float_array, normalize_axis
from ..cpu._copy import copy_into
from . import DeviceFloats, as_rows, row_metrics
from . import _device as dev
from ._workspace import release


@dataclass
class PipelineTimings:
    """What the GPU spent per phase (CUDA events; ``None`` on the simulator) and the wall time."""

    copy_ms: float = 0.0
    compute_ms: float = 0.0
    wall_s: float = 0.0
    bytes: int = 0
    timed: bool = True

    @property
    def overlap(self):
        """Fraction of the shorter phase hidden behind the longer one (1: perfect overlap)."""
        if not self.timed or not min(self.copy_ms, self.compute_ms):
            return None
        hidden = self.copy_ms + self.compute_ms - 1e3 * self.wall_s
        return max(0.0, min(1.0, hidden / min(self.copy_ms, self.compute_ms)))

    @property
    def copy_gb_per_second(self):
        return self.bytes / self.copy_ms / 1e6 if self.timed and self.copy_ms else None


def _grow(buffer, size, dtype, allocate):
    """A flat buffer of at least ``size`` items of ``dtype``, reusing ``buffer`` when it fits."""
    if buffer is None or buffer.size < size or buffer.dtype != dtype:
        return allocate(size, dtype)
    return buffer


@dataclass
class _Slot:
    stream: object
    staging: object = None
    device: object = None
    outputs: list = field(default_factory=lambda: [None] * 4)
    pending: tuple = None  # (host result views, weights, events) of the chunk in flight

    def submit(self, evaluator, chunk, weights):
        from ..evaluation import check_targets

        x = as_float_array(chunk.logits, "logits")
        x = np.moveaxis(x, normalize_axis(evaluator.axis, x.ndim), -1)
        bfloat16 = x.dtype.name == "bfloat16"
        words = x.view(np.uint16) if bfloat16 else x
        self.staging = _grow(self.staging, words.size, words.dtype, dev.pinned_empty)
        self.device = _grow(self.device, words.size, words.dtype,
                            lambda n, dtype: dev.device_empty(n, dtype, self.stream))
        staged = self.staging[: words.size].reshape(words.shape)
        copy_into(staged, words)  # the host reads the chunk here, on every core, while the GPU works on the other slot
        events = [dev.event() for _ in range(3)]
        events[0].record(self.stream)
        on_device = self.device[: words.size].reshape(words.shape)
        on_device.copy_to_device(staged, stream=self.stream)
        events[1].record(self.stream)
        logical = np.dtype(np.float32) if bfloat16 else words.dtype
        rows = as_rows(DeviceFloats(on_device, logical, bfloat16, on_device), words.ndim - 1, self.stream)
        check_targets(cpu, chunk.target, rows.batch_shape)
        per_row = row_metrics(rows, chunk.target, evaluator.ignore_index, (chunk.first_row,), self.stream)
        events[2].record(self.stream)
        results = []
        for i, values in enumerate(per_row):
            self.outputs[i] = _grow(self.outputs[i], values.size, values.dtype, dev.pinned_empty)
            host = self.outputs[i][: values.size]
            values.copy_to_host(host, stream=self.stream)
            results.append(host)
        self.pending = (results, weights, events)

    def drain(self, evaluator, timings):
        """Wait for the chunk in flight, if any, and tally it."""
        if self.pending is None:
            return
        results, weights, (started, copied, computed) = self.pending
        self.pending = None
        self.stream.synchronize()
        copy_ms, compute_ms = dev.elapsed_ms(started, copied), dev.elapsed_ms(copied, computed)
        if copy_ms is None:
            timings.timed = False
        else:
            timings.copy_ms += copy_ms
            timings.compute_ms += compute_ms
        evaluator._tally(results, weights)


def stream_host_chunks(evaluator, chunks, progress):
    """Score host ``chunks`` (``nbce._chunks.Chunk``) on the GPU into ``evaluator``;
    returns ``PipelineTimings``."""
    from ..evaluation import row_weights

    slots = [_Slot(dev.stream()), _Slot(dev.stream())]
    timings = PipelineTimings()
    start = time.perf_counter()
    try:
        for i, chunk in enumerate(chunks):
            slot = slots[i % 2]
            slot.drain(evaluator, timings)
            target_shape = np.shape(chunk.target)
            slot.submit(evaluator, chunk, row_weights(cpu, chunk.weight, target_shape, (chunk.first_row,)))
            timings.bytes += chunk.logits.nbytes
            progress.update(chunk.rows, chunk.logits.nbytes)
        for slot in slots:
            slot.drain(evaluator, timings)
    finally:
        for slot in slots:  # after an error, leave no copy running into buffers about to be freed
            slot.stream.synchronize()
            release(slot.stream)  # the slot's stream is dropped: so is its workspace
    timings.wall_s = time.perf_counter() - start
    return timings
