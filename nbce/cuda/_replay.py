"""Replayed launches: a repeated small call on PyTorch CUDA tensors at the driver's cost.

A public call on CUDA arrays spends about 200-350 µs of host time on an H200
machine (measured 2026-11-28: checks, Numba device arrays for each operand,
the context block, the launch's hundred-odd argument words), where PyTorch's
own ``cross_entropy`` spends 19 µs.  Yet when ``logsumexp``, ``entropy`` or
``cross_entropy`` with device class-index targets is called again with
tensors of the same shapes, strides, dtypes, device and stream and the same
options, everything the ordinary path works out is the same except three
addresses: the logits', the targets' and the new result's.  So the ordinary
path's one launch is recorded (``_device.recording_launches``), and later
calls allocate the result with PyTorch, write the three addresses into the
recorded argument words and hand them to the driver's ``cuLaunchKernel``;
``cross_entropy`` then reads the bad-target flag (8 bytes, waited for), as
the ordinary path does.

A call is replayed only where that gives the ordinary path's result bit for
bit: the recording must hold exactly one launch by the direct path, each of
the three addresses exactly once among its words (a copied operand, as for
non-contiguous targets, does not qualify), and the scratch buffers of the
stream's workspace that the words point at must not have been made anew
since (``Workspace.generation``).  The key includes each address modulo 16,
on which the wide loads' alignment depends.  Another current CUDA context
than the recording's (one driver query per call), the driver's refusal and
a bad target send the call down the ordinary path, which raises the error.
Not replayed: logits that require grad (the ordinary path refuses most of
them), sparse or nested tensors, a stream being captured into a CUDA graph
(the flag's wait would end the capture); options are keyed with their types,
since ``1 == True == 1.0`` but only some of these pass the checks, and the
launch settings (``nbce.cuda.THREADS`` and the others) are keyed too.
``NBCE_CUDA_REPLAY=0`` turns replay off.
"""

import os
import sys
import threading

from . import _device as dev
from ._workspace import NO_BAD_ROW, workspace

ENABLED = dev.RAW_LAUNCH_AVAILABLE and os.environ.get("NBCE_CUDA_REPLAY", "1") != "0"
_KEPT = 64  # recorded calls per thread
_OPTIONS = {
    "logsumexp": frozenset({"axis"}),
    "entropy": frozenset({"axis"}),
    "cross_entropy": frozenset({"axis", "reduction", "ignore_index", "label_smoothing", "input_type"}),
}
_local = threading.local()


class _Recorded:
    """One recorded launch with the positions of the three addresses in its words."""

    __slots__ = ("function", "blocks", "threads", "words", "pointers", "words_address", "slots", "result_shape",
                 "result_dtype", "workspace", "generation", "flag", "context")

    def __init__(self, launch, slots, result, workspace, flag):
        self.function, self.blocks, self.threads, _, words = launch
        # The pointer array stays referenced here: the driver reads it at each launch.
        self.words, self.pointers, self.words_address = dev.packed_words(words)
        self.slots = slots
        self.result_shape, self.result_dtype = tuple(result.shape), result.dtype
        self.workspace, self.generation = workspace, workspace.generation
        self.flag = flag  # (device address, host word) of the bad-target flag, for device targets
        self.context = dev.current_context_handle()  # the function handle and stream belong to it


def _torch_cuda(obj):
    return type(obj).__module__ == "torch" and obj.is_cuda


def _plain_torch_cuda(obj):
    """A strided (not sparse, not nested) PyTorch CUDA tensor."""
    return _torch_cuda(obj) and obj.layout == sys.modules["torch"].strided and not obj.is_nested


def _first(pair):
    return pair[0]


def _key(name, args, kwargs, settings):
    """The call's replay key, or None when it is not a call that replay serves."""
    allowed = _OPTIONS.get(name)
    if allowed is None or not kwargs.keys() <= allowed:
        return None
    wanted = 2 if name == "cross_entropy" else 1
    if len(args) != wanted or not all(_plain_torch_cuda(a) for a in args):
        return None
    x = args[0]
    if x.requires_grad:  # refused by the ordinary path (torch's array interface) for most dtypes
        return None
    key = [name, settings, x.device.index, x.dtype, tuple(x.shape), x.stride(), x.data_ptr() % dev.VECTOR_BYTES]
    if wanted == 2:
        t = args[1]
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == sys.modules["torch"].bool:
            return None
        key += [t.device.index, t.dtype, tuple(t.shape), t.stride(), t.data_ptr() % dev.VECTOR_BYTES]
    try:
        # With each option's type: 1 == True == 1.0, yet only some of them pass the checks.
        key.append(tuple((option, type(value), value) for option, value in sorted(kwargs.items(), key=_first)))
        key = tuple(key)
        hash(key)
    except TypeError:  # an option of an unhashable type: the ordinary path checks it
        return None
    return key


def _recorded():
    found = getattr(_local, "recorded", None)
    if found is None:
        found = _local.recorded = {}
    return found


def _stream_handle(x):
    return sys.modules["torch"].cuda.current_stream(x.device).cuda_stream


def call(function, args, kwargs, context, settings, resolve_stream):
    """``function(*args, **kwargs)`` (a public function on CUDA arrays), replayed where it can be.

    ``context``: the backend's context block; ``settings``: the launch
    settings that shape its kernels and grids (tests change them);
    ``resolve_stream(None, array)``: the stream the ordinary path launches on."""
    key = _key(function.__name__, args, kwargs, settings) if ENABLED else None
    if key is not None and sys.modules["torch"].cuda.is_current_stream_capturing():
        key = None  # a graph captures the ordinary path's launch; the flag's wait would end the capture
    if key is None:
        with context():
            return function(*args, **kwargs)
    stream = _stream_handle(args[0])
    key = (*key, stream)
    found = _recorded().get(key)
    if found is not None:
        result = _replay(found, args, stream)
        if result is not None:
            return result
        _recorded().pop(key, None)
    with context():
        with dev.recording_launches() as launches:
            result = function(*args, **kwargs)
        _record(key, launches, args, result, stream, resolve_stream(None, args[0]))
    return result


def _addresses(args, result):
    """The addresses a recorded launch takes anew: the logits', the result's and the targets' (if any)."""
    return [args[0].data_ptr(), result.data_ptr()] + ([args[1].data_ptr()] if len(args) == 2 else [])


def _replay(found, args, stream):
    """``found``'s launch on ``args`` on the stream of handle ``stream``; None where the ordinary path must run."""
    torch = sys.modules["torch"]
    if found.workspace.generation != found.generation or dev.current_context_handle() != found.context:
        return None
    x = args[0]
    result = torch.empty(found.result_shape, dtype=found.result_dtype, device=x.device)
    words = found.words
    for slot, address in zip(found.slots, _addresses(args, result)):
        words[slot] = address
    if dev.launch_words(found.function, found.blocks, found.threads, stream, found.words_address) is not None:
        return None
    if found.flag is not None:
        device_address, host = found.flag
        if not dev.read_word_and_wait(host.ctypes.data, device_address, stream) or int(host[0]) != NO_BAD_ROW:
            return None  # the ordinary path runs the call again and raises the error
    return result


def _record(key, launches, args, result, stream, launch_stream):
    if len(launches) != 1 or launches[0] is None or not _torch_cuda(result) or not result.is_contiguous():
        return  # a replay allocates a contiguous result
    launch = launches[0]
    if launch[3] != dev.stream_key(launch_stream) or launch[3] != stream:
        return
    if args[0].device.index != sys.modules["torch"].cuda.current_device():
        return  # the kernel ran in another GPU's context than the current one, which replays check
    words = launch[4]
    slots = []
    for address in _addresses(args, result):
        where = [i for i, word in enumerate(words) if word == address]
        if len(where) != 1:
            return
        slots.append(where[0])
    ws = workspace(launch_stream)
    flag = ws.bad_flag_addresses() if len(args) == 2 else None
    recorded = _recorded()
    if len(recorded) >= _KEPT:
        recorded.pop(next(iter(recorded)))
    recorded[key] = _Recorded(launch, slots, result, ws, flag)
