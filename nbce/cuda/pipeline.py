"""Host chunks through the GPU with reading, copying and computing overlapped.

Two slots, each with its own stream, pinned staging buffer and device buffer,
take chunks in turn.  While the GPU copies and scores chunk i on one stream,
the host reads chunk i+1 (from a memory-mapped file, say) into the other
slot's pinned buffer and queues its copy; a slot's stream is waited for only
when the slot comes round again, two chunks later.  The evaluation's sums
stay on the device (``tally``) and come back once, at the end; per-row
figures are copied back only when the caller asked for them (per-token or
per-sequence results).
"""

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .. import cpu
from .._arrays import as_float_array, normalize_axis
from ..cpu._copy import copy_into
from .. import cuda as cuda_backend
from . import DeviceFloats, as_rows, row_metrics
from . import _device as dev
from ._workspace import release


@dataclass
class PipelineTimings:
    """Time per stage: the host's reads (wall clock), the GPU's copies and
    kernels (CUDA events; not timed on the simulator), and the whole wall time."""

    read_s: float = 0.0
    copy_ms: float = 0.0
    compute_ms: float = 0.0
    wall_s: float = 0.0
    bytes: int = 0
    timed: bool = True

    @property
    def overlap(self):
        """How much of the possible overlap of the three stages was reached:

            (read + copy + compute - wall) / (read + copy + compute - max stage)

        1 when the wall time is the longest stage's (everything else hidden
        behind it), 0 when the stages ran one after another; None untimed."""
        if not self.timed:
            return None
        stages = (self.read_s, self.copy_ms / 1e3, self.compute_ms / 1e3)
        possible = sum(stages) - max(stages)
        if possible <= 0:
            return None
        return max(0.0, min(1.0, (sum(stages) - self.wall_s) / possible))

    def to_dict(self):
        """The stages and rates, JSON-ready (None where not timed)."""
        return {"bytes": self.bytes, "wall_s": self.wall_s, "read_s": self.read_s,
                "copy_ms": self.copy_ms if self.timed else None,
                "compute_ms": self.compute_ms if self.timed else None,
                "copy_gb_per_second": self.copy_gb_per_second, "compute_gb_per_second": self.compute_gb_per_second,
                "overlap": self.overlap}

    @property
    def copy_gb_per_second(self):
        return self.bytes / self.copy_ms / 1e6 if self.timed and self.copy_ms else None

    @property
    def compute_gb_per_second(self):
        return self.bytes / self.compute_ms / 1e6 if self.timed and self.compute_ms else None


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

    def submit(self, evaluator, chunk, weights, timings):
        from ..evaluation import check_targets

        x = as_float_array(chunk.logits, "logits")
        x = np.moveaxis(x, normalize_axis(evaluator.axis, x.ndim), -1)
        bfloat16 = x.dtype.name == "bfloat16"
        words = x.view(np.uint16) if bfloat16 else x
        self.staging = _grow(self.staging, words.size, words.dtype, dev.pinned_empty)
        self.device = _grow(self.device, words.size, words.dtype,
                            lambda n, dtype: dev.device_empty(n, dtype, self.stream))
        staged = self.staging[: words.size].reshape(words.shape)
        started = time.perf_counter()
        copy_into(staged, words)  # the host reads the chunk here, on every core, while the GPU works on the other slot
        timings.read_s += time.perf_counter() - started
        events = [dev.event() for _ in range(3)]
        events[0].record(self.stream)
        on_device = self.device[: words.size].reshape(words.shape)
        on_device.copy_to_device(staged, stream=self.stream)
        events[1].record(self.stream)
        logical = np.dtype(np.float32) if bfloat16 else words.dtype
        rows = as_rows(DeviceFloats(on_device, logical, bfloat16, on_device), words.ndim - 1, self.stream)
        check_targets(cpu, chunk.target, rows.batch_shape)
        per_row = row_metrics(rows, chunk.target, evaluator.ignore_index, chunk.origin, self.stream)
        events[2].record(self.stream)
        results = None
        if evaluator._sink is None:  # the sums stay on the device
            evaluator._add(cuda_backend, per_row, weights, self.stream)
        else:  # per-row figures wanted on the host: copied back, tallied there
            results = []
            for i, values in enumerate(per_row):
                self.outputs[i] = _grow(self.outputs[i], values.size, values.dtype, dev.pinned_empty)
                host = self.outputs[i][: values.size]
                values.copy_to_host(host, stream=self.stream)
                results.append(host)
        self.pending = (results, weights, events)

    def drain(self, evaluator, timings):
        """Wait for the chunk in flight, if any, and tally it where its per-row figures came back."""
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
        if results is not None:
            evaluator._tally(results, weights)


# The two slots of each (thread, GPU), kept from one call to the next: their
# page-locked staging buffers, device buffers and streams are allocated by the
# first call only.  Page-locking 64 MiB takes milliseconds, and freeing device
# memory waits for the whole device, so per call these would cost more than
# the chunks' copies, outside every timed stage.
_kept = threading.local()


def _slots():
    """The calling thread's two slots on the current GPU (made on first use)."""
    by_device = getattr(_kept, "slots", None)
    if by_device is None:
        by_device = _kept.slots = {}
    device = dev.current_device_id()
    found = by_device.get(device)
    if found is None:
        found = by_device[device] = [_Slot(dev.stream()), _Slot(dev.stream())]
    return found


def release_slots():
    """Free the calling thread's page-locked and device buffers of host
    streaming (two chunks' worth per GPU); the next streamed evaluation makes
    new ones."""
    for slots in getattr(_kept, "slots", {}).values():
        for slot in slots:
            slot.stream.synchronize()
            release(slot.stream)  # the slot's stream is dropped: so is its workspace
    _kept.slots = {}


def stream_host_chunks(evaluator, chunks, progress):
    """Score host ``chunks`` (``nbce._chunks.Chunk``) on the GPU into ``evaluator``;
    returns ``PipelineTimings``.  The slots' buffers are kept for the next
    call (``release_slots`` frees them)."""
    from ..evaluation import row_weights

    slots = _slots()
    for slot in slots:  # a call cut short during its clean-up may have left a chunk in flight
        slot.pending = None
        slot.stream.synchronize()
    timings = PipelineTimings()
    start = time.perf_counter()
    try:
        for i, chunk in enumerate(chunks):
            slot = slots[i % 2]
            slot.drain(evaluator, timings)
            target_shape = np.shape(chunk.target)
            slot.submit(evaluator, chunk, row_weights(cpu, chunk.weight, target_shape, chunk.origin),
                        timings)
            timings.bytes += chunk.logits.nbytes
            progress.update(chunk.rows, chunk.logits.nbytes)
        for slot in slots:
            slot.drain(evaluator, timings)
        cuda_backend.settle_sums(evaluator)  # one copy back per stream
    finally:
        cuda_backend.settle_sums(evaluator, keep=False)  # after an error, drop the chunks' sums
        for slot in slots:  # after an error, leave no copy running into the buffers the next call fills
            slot.pending = None
            slot.stream.synchronize()
    timings.wall_s = time.perf_counter() - start
    return timings
