"""Device scratch memory kept between calls, one workspace per (thread, GPU, stream).

A call asks for what it needs (chunk states and per-row counters of split
rows, per-row values of a batch reduction, the last-block counter, the
bad-target flag) and gets
views of buffers that only grow: after the first call of a shape nothing is
allocated but the returned result.  Kernels on one stream run in order, so
the next call's kernels cannot overwrite what an earlier one still reads.
"""

import threading

import numpy as np

from . import _device as dev

# Page-locked staging buffers per uploaded name, used in turn.
STAGING_RING = 4
# The bad-target flag's resting value: no bad row.
NO_BAD_ROW = np.iinfo(np.int64).max


class Workspace:
    def __init__(self, stream):
        self._stream = stream
        self._buffers = {}
        # Rearmed by the kernels themselves: the last block resets the counter,
        # the host resets the flag after reporting a bad target.
        self.counter = dev.to_device(np.zeros(1, dtype=np.int32), stream=stream)
        self.bad = dev.to_device(np.array([NO_BAD_ROW], dtype=np.int64), stream=stream)
        self.unused = dev.device_empty(1, np.float64, stream)
        self.unused_rows = dev.device_empty((1, 1), np.float64, stream)
        self.unused_indices = dev.device_empty(1, np.int64, stream)
        self.ones = dev.to_device(np.ones((1, 1)), stream=stream)  # an absent binary weight
        self._views = {}
        self._read_back = {}  # page-locked host buffers of ``read``, per dtype
        self._staging = {}  # page-locked host buffers of ``upload``: per name, a ring of (buffer, event)
        self._turns = {}
        self._constants = {}
        self.evaluation = None  # whose evaluation sums the "evaluation_sums" buffer holds (nbce.cuda.tally)
        # Counts the buffers made anew (and the workspace's release): a
        # replayed launch (nbce.cuda._replay) holds their addresses.
        self.generation = 0

    def buffer(self, name, shape, dtype=np.float64):
        """A C-contiguous ``shape`` view of the growing buffer ``name``."""
        return self._view(name, shape, dtype, False)

    def zeroed_buffer(self, name, shape, dtype):
        """``buffer`` whose memory starts zeroed (counters that the kernels rearm
        to zero after use): one host-to-device copy when it grows."""
        return self._view(name, shape, dtype, True)

    def _view(self, name, shape, dtype, zeroed):
        # The view of the last shape asked for is kept: building a device-array
        # view costs more host time than the launch of a small call.
        key = (tuple(shape), np.dtype(dtype))
        view = self._views.get(name)
        if view is not None and view[0] == key:
            return view[1]
        size = int(np.prod(shape))
        current = self._buffers.get(name)
        if current is None or current.size < size or current.dtype != np.dtype(dtype):
            if zeroed:
                current = dev.to_device(np.zeros(max(size, 1), dtype=dtype), stream=self._stream)
            else:
                current = dev.device_empty(max(size, 1), dtype, self._stream)
            self._buffers[name] = current
            self.generation += 1
        found = current[:size].reshape(*shape)
        self._views[name] = (key, found)
        return found

    def upload(self, name, host):
        """A device copy of the 1-D host array ``host`` in the buffer ``name``: one
        host-to-device copy on the workspace's stream, after the kernels that
        still read the buffer's last contents (same stream, so in order).

        The copy starts from page-locked memory (``host`` is copied there
        first): from pageable memory the driver may wait for the stream's
        earlier work, which would hold up the host.  ``STAGING_RING`` staging
        buffers per name take turns, each reused once its copy has run (an
        event each), so that many calls may be queued ahead of the GPU."""
        view = self._view(name, host.shape, host.dtype, False)
        if host.size:
            staged, done = self._staging_for(name, host.size, host.dtype)
            staged = staged[: host.size]
            np.copyto(staged, host)
            dev.copy_to_device(view, staged, self._stream)
            done.record(self._stream)
        return view

    def _staging_for(self, name, size, dtype):
        """The next (page-locked buffer, event) of ``name``'s ring, free to be overwritten."""
        ring = self._staging.setdefault(name, [])
        if not ring:  # the whole ring at once: later calls, whichever turn they start at, allocate nothing
            ring.extend((dev.pinned_empty(max(size, 1), dtype), dev.event()) for _ in range(STAGING_RING))
        turn = self._turns.get(name, 0)
        self._turns[name] = (turn + 1) % STAGING_RING
        if turn < len(ring) and ring[turn][0].size >= size and ring[turn][0].dtype == np.dtype(dtype):
            ring[turn][1].synchronize()  # the copy from it, STAGING_RING uploads ago, has run
            return ring[turn]
        found = (dev.pinned_empty(max(size, 1), dtype), dev.event())
        if turn < len(ring):
            ring[turn][1].synchronize()  # its last copy must run before the buffer is freed
            ring[turn] = found
        else:
            ring.append(found)
        return found

    def constant(self, name, host):
        """A device copy of the small host array ``host`` that is uploaded again
        only when its contents change (top-k values, calibration edges)."""
        key = (host.dtype.str, host.shape, host.tobytes())
        found = self._constants.get(name)
        if found is None or found[0] != key:
            found = self._constants[name] = (key, dev.to_device(np.ascontiguousarray(host), stream=self._stream))
        return found[1]

    def read_bad(self, stream):
        """The bad-target flag's value: one 8-byte copy into page-locked memory, waited for.

        The copy runs on ``stream``, else on the workspace's own stream (which
        numba-cuda would pick for stream 0 and copy asynchronously when it is a
        stream object), and that stream is waited for."""
        return int(self.read(self.bad, stream)[0])

    def read(self, view, stream):
        """A host copy of the contiguous device array ``view``: one copy into a
        page-locked buffer kept for the next read (valid until then), waited for."""
        host = self._read_back_for(np.dtype(view.dtype), view.size)
        found = host[: view.size].reshape(view.shape)
        on = stream or self._stream
        dev.copy_to_host(found, view, on)
        if on:
            on.synchronize()
        return found

    def _read_back_for(self, dtype, size):
        """The page-locked host buffer that ``read`` copies ``dtype`` values into, of ``size`` or more."""
        host = self._read_back.get(dtype)
        if host is None or host.size < size:
            host = self._read_back[dtype] = dev.pinned_empty(max(size, 1), dtype)
        return host

    def bad_flag_addresses(self):
        """(device address of the bad-target flag, page-locked host word that ``read_bad`` reads it into)."""
        return dev.address(self.bad), self._read_back_for(np.dtype(np.int64), 1)

    def rearm_bad(self):
        self.bad.copy_to_device(np.array([NO_BAD_ROW], dtype=np.int64), stream=self._stream)


# Per thread: a call uploads host targets into its workspace and reads the
# bad-target flag back through it between its own launches, so two threads
# launching on one stream must not share one (kernels on one stream still run
# in order, whichever thread launched them).
_local = threading.local()


def workspace(stream):
    """The current thread's workspace of the current GPU and ``stream``."""
    found_all = getattr(_local, "workspaces", None)
    if found_all is None:
        found_all = _local.workspaces = {}
    key = (dev.current_device_id(), dev.stream_key(stream))
    found = found_all.get(key)
    if found is None:
        found = found_all[key] = Workspace(stream)
    return found


def thread_workspaces():
    """(workspace, stream, GPU number) of every workspace of the current thread."""
    return [(ws, ws._stream, device_id) for (device_id, _), ws in getattr(_local, "workspaces", {}).items()]


def release(stream):
    """Drop the current thread's workspaces of ``stream``, a stream about to be
    dropped itself (its kernels must have finished)."""
    key = dev.stream_key(stream)
    found_all = getattr(_local, "workspaces", {})
    for k in [k for k in found_all if k[1] == key]:
        found_all.pop(k).generation += 1
