"""Batch evaluation: every metric of a scored data set in one pass, in bounded memory.

For each row of logits :math:`x` with target class :math:`t` (rows whose
target is ``ignore_index`` are skipped) and weight :math:`w` (1 by default),
one read of the row gives

* the cross-entropy :math:`\\ell = \\operatorname{logsumexp}(x) - x_t` (nats),
* the rank :math:`\\rho = \\#\\{c : x_c > x_t\\}` of the target; a tie with the
  target counts in its favour, so the target is a top-k prediction iff
  :math:`\\rho < k`,
* the entropy :math:`H = -\\sum_c p_c \\log p_c` of :math:`p = \\operatorname{softmax}(x)`,
* the confidence :math:`\\max_c p_c`.

``Evaluator`` adds these to exact sums (see ``nbce._exact``): the figures do
not depend on how the data were chunked, nor on the order of ``merge``.
"""

import dataclasses
import itertools
import math
import threading
from dataclasses import dataclass, field
from math import prod

import numpy as np

from . import _checks, _routing
from ._arrays import host_array, normalize_axis, reinterpret
from ._chunks import Chunk, default_chunk_rows, release_written, row_chunks
from ._dispatch import is_cuda_array
from ._exact import accumulators, add_digits, export, merge_into, ratio, restore, standard_error, totals
from ._progress import Progress
from ._tally import (
    BIN_CONFIDENCE,
    BIN_CORRECT,
    ENTROPY,
    IGNORED,
    IGNORED_ROW,
    LOSS,
    N_COUNTS,
    ROWS,
    UNCALIBRATED,
    UNDEFINED,
    WEIGHT,
    Layout,
    calibration_edges,
    tally,
)
from .api import _scores

__all__ = ["EvalResult", "Evaluator", "evaluate"]

DEVICES = ("auto", "cpu", "cuda")

# Each calibration bin holds three exact sums of ~35 kB each: 10,000 bins would
# ask for 1 GB.  ECE is read at 10 to 100 bins.
MAX_CALIBRATION_BINS = 1000
# Ranks, top-k values and class indices are int64 in the kernels.
_INT64 = np.iinfo(np.int64)


@dataclass(frozen=True)
class EvalResult:
    """Metrics of an evaluation (all float64 figures, computed from exact sums).

    With :math:`W = \\sum w` over the rows scored:

    * ``loss``: :math:`\\sum w \\ell / W`, the weighted mean cross-entropy in nats;
    * ``perplexity``: :math:`e^{\\text{loss}}`; ``bits_per_token``: loss / ln 2;
    * ``accuracy``: {k: :math:`\\sum_{\\rho < k} w / W`} (top-k accuracy);
    * ``entropy``: :math:`\\sum w H / W`, the mean predictive entropy (nats);
    * ``ece``: expected calibration error over equal-width confidence bins
      :math:`B_b = (b/n, (b+1)/n]`:
      :math:`\\sum_b |\\sum_{B_b} w [\\rho = 0] - \\sum_{B_b} w \\max p| / W`;
    * ``count``: rows scored; ``ignored``: rows whose target was ``ignore_index``;
    * ``loss_stderr``, ``accuracy_stderr`` ({k: ...}): standard errors of the
      loss and of each accuracy, as lm-eval-harness reports them (sample
      standard deviation over the n rows scored / :math:`\\sqrt{n}`; with
      weights, :math:`\\sqrt{(\\sum w x^2 / W - \\bar x^2) / (n - 1)}`), from
      exact sums; NaN below two rows;
    * ``per_sequence``: with ``evaluate(..., per_sequence=True)``, one record
      per entry of the targets' first axis (a sequence), fields ``loss``
      (:math:`\\sum w \\ell / \\sum w` over its scored tokens, float64 sums),
      ``perplexity`` (:math:`e^{\\text{loss}}`) and ``tokens`` (scored tokens);
      else ``None``;
    * ``pipeline``: when host arrays were streamed through the GPU
      (``device="cuda"``), the pipeline's stages (``nbce.cuda.pipeline.PipelineTimings.to_dict``:
      host read seconds, copy and kernel milliseconds and GB/s, wall time,
      overlap); else ``None``.

    With no row scored (or :math:`W = 0`) the means are NaN, as PyTorch's
    mean over no element.  A row holding a NaN makes every figure NaN.
    """

    loss: float
    perplexity: float
    bits_per_token: float
    accuracy: dict = field(hash=False)
    entropy: float
    ece: float
    count: int
    ignored: int
    loss_stderr: float = math.nan
    accuracy_stderr: dict = field(default_factory=dict, hash=False)
    per_sequence: np.ndarray = field(default=None, hash=False, compare=False, repr=False)
    pipeline: dict = field(default=None, hash=False, compare=False, repr=False)

    def to_dict(self):
        """A JSON-ready dict: NaN and infinities become ``None`` (JSON has neither)."""
        def clean(x):
            return x if math.isfinite(x) else None

        return {
            "loss": clean(self.loss),
            "perplexity": clean(self.perplexity),
            "bits_per_token": clean(self.bits_per_token),
            "accuracy": {str(k): clean(v) for k, v in self.accuracy.items()},
            "entropy": clean(self.entropy),
            "ece": clean(self.ece),
            "count": self.count,
            "ignored": self.ignored,
            "loss_stderr": clean(self.loss_stderr),
            "accuracy_stderr": {str(k): clean(v) for k, v in self.accuracy_stderr.items()},
        }


# One record per sequence: EvalResult.per_sequence, and `nbce score --per-sequence`'s file.
SEQUENCE_RECORD = np.dtype([("loss", np.float64), ("perplexity", np.float64), ("tokens", np.int64)])


def _top_k_values(top_k):
    try:
        values = (top_k,) if isinstance(top_k, (int, np.integer)) else tuple(top_k)
    except TypeError:  # not iterable
        raise TypeError(f"top_k must be a positive integer or a sequence of them, got {top_k!r}") from None
    for k in values:
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"top_k must be positive integers, got {top_k!r}")
        if not 1 <= k <= _INT64.max:
            raise ValueError(f"top_k must be positive integers below 2**63, got {top_k!r}")
    if not values:
        raise ValueError("top_k must name at least one k")
    return tuple(sorted({int(k) for k in values}))


def _positive_int(value, name, at_most=_INT64.max):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive integer, got {value!r}")
    if not 1 <= value <= at_most:
        raise ValueError(f"{name} must be a positive integer up to {at_most}, got {value!r}")
    return int(value)


def _ignore_index(value):
    value = _checks.check_ignore_index(value)
    if not _INT64.min <= value <= _INT64.max:
        raise ValueError(f"ignore_index must fit in int64 (class indices are compared as int64), got {value!r}")
    return value


class Evaluator:
    """Streaming evaluation state: ``update`` with chunks, ``merge`` states, ``compute`` the metrics.

    Parameters
    ----------
    top_k : int or tuple of int, the k of the top-k accuracies
    ignore_index : int, targets equal to it are skipped (counted in ``ignored``)
    axis : int, the class axis of the logits
    calibration_bins : int, equal-width confidence bins of the ECE

    The state is a few hundred exact sums (see ``nbce._exact``) and four
    integer counts: it pickles, and ``merge`` is exact, so evaluations of parts
    of a data set (other processes, other machines) combine into exactly the
    evaluation of the whole.  ``calibration_bins`` is at most
    ``MAX_CALIBRATION_BINS`` (each bin holds ~100 kB of sums).

    Threads may share an Evaluator: ``update`` scores its chunk outside the
    lock (the kernels run in parallel) and adds the per-row figures to the
    sums under it; ``merge``, ``compute``, ``reset`` and pickling take it too.
    """

    def __init__(self, *, top_k=(1, 5), ignore_index=-100, axis=-1, calibration_bins=15):
        self.top_k = _top_k_values(top_k)
        self.ignore_index = _ignore_index(ignore_index)
        if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
            raise TypeError(f"axis must be an integer, got {axis!r}")
        self.axis = int(axis)
        self.calibration_bins = _positive_int(calibration_bins, "calibration_bins", MAX_CALIBRATION_BINS)
        self._layout = Layout(len(self.top_k), self.calibration_bins)
        self._top_k_array = np.array(self.top_k, dtype=np.int64)
        self._edges = calibration_edges(self.calibration_bins)
        self._lock = threading.Lock()
        self._sink = None  # evaluate's per-token / per-sequence recorder, fed each chunk's rows in order
        self.reset()

    def reset(self):
        """Forget every update."""
        sums, counts = accumulators(self._layout.size), np.zeros(N_COUNTS, dtype=np.int64)
        with self._lock:
            self._sums, self._counts = sums, counts
        return self

    def _snapshot(self):
        """A copy of (sums, counts), taken under the lock: consistent while other threads update."""
        with self._lock:
            return tuple(array.copy() for array in self._sums), self._counts.copy()

    def __getstate__(self):
        sums, counts = self._snapshot()
        return {"options": self.options(), **export(*sums), "counts": counts}

    def __setstate__(self, state):
        self.__init__(**state["options"])  # checks the options, bounds included
        if np.shape(state["pending"]) == (self._layout.size - 1,):
            # pickled before the sum of squared losses existed: that sum is
            # unknown, so NaN, and so is the loss's standard error (merges too)
            state = {**state, "pending": np.append(state["pending"], 0),
                     "special": np.append(state["special"], math.nan)}
        restore(*self._sums, state)
        self._counts[:] = state["counts"]

    def options(self):
        """The constructor's keywords."""
        return dict(top_k=self.top_k, ignore_index=self.ignore_index, axis=self.axis,
                    calibration_bins=self.calibration_bins)

    def __repr__(self):
        options = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"Evaluator({options}; {int(self._counts[ROWS])} rows)"

    def update(self, logits, target, *, weight=None, shift=False, stream=None):
        """Add one chunk: ``logits`` (host or CUDA array, class axis ``axis``) and
        integer class indices ``target`` (the logits' shape without the class
        axis); ``weight``, optional, non-negative, has ``target``'s shape.

        ``shift=True`` is for causal language models: (batch, seq, vocab)
        logits and (batch, seq) token ids, position i's logits scored against
        token i + 1 (``logits[:, :-1]`` against ``target[:, 1:]``, views, no
        copy; ``weight`` is the tokens' shape and shifts with them).

        A class index outside [0, C) that is not ``ignore_index`` raises
        ``ValueError`` naming its position.  Returns ``self``.
        """
        origin = ()
        if shift:
            logits, target, weight = next_token_views(_as_array(logits), _as_array(target),
                                                      None if weight is None else _as_array(weight), self.axis)
            origin = (0, 1)
        self._update(logits, target, weight, stream, origin)
        return self

    def _update(self, logits, target, weight, stream, origin=(), settle=True):
        """``update``; ``origin`` locates the chunk in a larger array for error
        messages.  ``settle=False`` leaves sums kept on a device there, for the
        caller to collect (``backend.settle_sums``) after its last chunk.
        Returns the backend that scored the chunk."""
        backend, _, _, rows, stream = _scores(logits, self.axis, stream)
        check_targets(backend, target, rows.batch_shape)
        weights = row_weights(backend, weight, rows.batch_shape, origin)
        # Consumed before this thread's next call: the backend's scratch will do.
        per_row = backend.row_metrics(rows, target, self.ignore_index, origin, stream, keep=False)
        self._add(backend, per_row, weights, stream)
        if settle and backend.SUMS_ON_DEVICE:
            backend.settle_sums(self)
        return backend

    def _add(self, backend, per_row, weights, stream):
        """Add a chunk's per-row metrics to the sums: where they are when the
        backend keeps sums on its device and no per-row figure is wanted on the
        host, else on the host."""
        if backend.SUMS_ON_DEVICE and self._sink is None:
            backend.add_sums(per_row, weights, self._layout, self._top_k_array, self._edges, stream, self)
        else:
            self._tally(backend.to_host(per_row, stream), weights)

    def _absorb(self, digits, added, counts):
        """Add sums handed back by a device (``nbce._exact.add_digits``'s form) and their row counts."""
        with self._lock:
            add_digits(*self._sums, digits, added)
            self._counts += counts

    def _tally(self, per_row, weights):
        loss, rank, entropy, confidence = per_row
        with self._lock:  # the kernel runs without the GIL: one writer at a time
            tally(loss, rank, entropy, confidence, weights, self._top_k_array, self._edges, *self._sums,
                  self._counts)
            if self._sink is not None:
                self._sink(loss, rank, weights)

    def merge(self, other):
        """Add ``other``'s evaluation to this one, exactly; returns ``self``.

        Both must have the same options (``top_k``, ``calibration_bins``,
        ``ignore_index``, ``axis``): ValueError naming the difference otherwise.
        """
        if not isinstance(other, Evaluator):
            raise TypeError(f"can only merge another Evaluator, got {type(other).__name__}")
        differences = [f"{name} {theirs!r} vs {mine!r}" for (name, mine), theirs
                       in zip(self.options().items(), other.options().values()) if mine != theirs]
        if differences:
            raise ValueError(f"cannot merge evaluators with different metrics: {', '.join(differences)}")
        # A copy of the other's state, then added under our lock: never two
        # locks at once (no deadlock when two threads merge a into b and b
        # into a, nor for a.merge(a)); merge_into may carry the copy's bins.
        sums, counts = other._snapshot()
        with self._lock:
            merge_into(*self._sums, *sums)
            self._counts += counts
        return self

    def compute(self):
        """The metrics so far, as an ``EvalResult``; each figure a ratio of exact
        sums rounded once, also when a sum exceeds float64's range."""
        with self._lock:  # the totals read the sums without changing them: no copy of the 1.8 MB of bins
            exact, counts = totals(*self._sums), self._counts.copy()
        layout = self._layout
        total_weight = exact[WEIGHT]
        loss = ratio(exact[LOSS], total_weight)
        undefined = counts[UNDEFINED] > 0
        accuracy = {
            k: math.nan if undefined else ratio(exact[layout.top_k(i)], total_weight)
            for i, k in enumerate(self.top_k)
        }
        if undefined or counts[UNCALIBRATED] > 0:
            ece = math.nan
        else:
            gaps = [(exact[layout.bin(b, BIN_CORRECT)], exact[layout.bin(b, BIN_CONFIDENCE)])
                    for b in range(self.calibration_bins)]
            # sum_b |correct_b - confidence_b|, exactly: integers on one scale
            gap_sum = (sum(abs(c[0] - p[0]) for c, p in gaps), sum(abs(c[1] - p[1]) for c, p in gaps))
            ece = ratio(gap_sum, total_weight)
        n = int(counts[ROWS])
        accuracy_stderr = {
            k: math.nan if undefined else standard_error(exact[layout.top_k(i)], exact[layout.top_k(i)],
                                                         total_weight, n)
            for i, k in enumerate(self.top_k)
        }
        with np.errstate(over="ignore"):
            perplexity = float(np.exp(loss))
        return EvalResult(
            loss=loss,
            perplexity=perplexity,
            bits_per_token=loss / math.log(2),
            accuracy=accuracy,
            entropy=ratio(exact[ENTROPY], total_weight),
            ece=ece,
            count=n,
            ignored=int(counts[IGNORED]),
            loss_stderr=standard_error(exact[layout.loss_squares], exact[LOSS], total_weight, n),
            accuracy_stderr=accuracy_stderr,
        )


def check_targets(backend, target, batch_shape):
    """TypeError unless ``target`` holds integers; ValueError unless it has ``batch_shape``."""
    kind = backend.target_dtype(target)
    if kind.kind not in "iu":
        raise TypeError(f"target must hold integer class indices, got dtype {kind}")
    shape = getattr(target, "shape", None)
    _checks.check_shape("target", np.shape(target) if shape is None else tuple(shape), batch_shape,
                        "class indices have the logits' shape without the class axis")


def row_weights(backend, weight, batch_shape, origin=()):
    """Row weights as a flat float64 host array (empty when unweighted); a
    negative or non-finite weight raises, its position shifted by ``origin``.
    C-contiguous float64 host weights are returned as a view, not copied
    (``_Recorder`` finds a chunk's place by their address)."""
    if weight is None:
        return np.empty(0)
    array = backend.host_array(weight)
    if array.dtype.kind not in "fiub" and array.dtype.name != "bfloat16":
        raise TypeError(f"weight must be a real array, got dtype {array.dtype}")
    _checks.check_shape("weight", array.shape, batch_shape, "one weight per target")
    flat = np.ascontiguousarray(array, dtype=np.float64).reshape(-1)
    bad = ~((flat >= 0.0) & np.isfinite(flat))
    if bad.any():
        position = _checks.shift_position(np.unravel_index(int(np.argmax(bad)), array.shape), origin)
        raise ValueError(f"weight{list(position)} = {flat[np.argmax(bad)]}: "
                         "row weights must be finite and non-negative")
    return flat


def _as_array(values):
    if is_cuda_array(values) or isinstance(values, np.ndarray):
        return values
    return host_array(values)


def next_token_views(logits, target, weight, axis):
    """``(logits[:, :-1], target[:, 1:], weight[:, 1:])``: views that score each
    position's logits against the next token; ValueError naming the shapes
    unless the logits are (batch, seq, vocab), class axis last, and the
    token ids (and weights) (batch, seq)."""
    shape = tuple(logits.shape)
    if len(shape) != 3 or normalize_axis(axis, len(shape)) != 2:
        raise ValueError(f"shift=True scores (batch, seq, vocab) logits, class axis last, against (batch, seq) "
                         f"token ids; got logits of shape {shape} with class axis {axis}"
                         + (" (one sequence? add a batch axis: logits[None], tokens[None])" if len(shape) == 2 else ""))
    _checks.check_shape("target", tuple(target.shape), shape[:2], "shift=True: (batch, seq) token ids")
    if weight is not None:
        _checks.check_shape("weight", tuple(weight.shape), shape[:2], "shift=True: one weight per token")
        weight = weight[:, 1:]
    return logits[:, :-1], target[:, 1:], weight


def _shifted(chunks, axis):
    """Chunks of whole sequences -> their next-token views (see ``next_token_views``)."""
    for chunk in chunks:
        logits, target, weight = next_token_views(chunk.logits, chunk.target, chunk.weight, axis)
        yield Chunk(chunk.first_row, logits, target, weight, prod(target.shape))


class _Recorder:
    """Per-token losses and per-sequence sums of ``evaluate``: memory O(sequences)
    plus the caller's output.

    Results reach ``_tally`` chunk by chunk, but not necessarily in the chunks'
    order (the GPU pipeline finishes its two slots in slot order).  So each
    chunk gets its own float64 row weights (ones when unweighted: the sums
    are the same bits), which ``row_weights`` passes on without a copy, and
    the address of those weights tells which sequences a chunk's results are.
    """

    def __init__(self, shape, per_token, per_sequence):
        if not shape:
            raise ValueError("per_token and per_sequence need targets with at least one axis (the sequences)")
        self.shape = tuple(shape)
        self.per_entry = prod(shape[1:])
        self.per_token = per_token
        self.sums = np.zeros((2, shape[0])) if per_sequence else None  # sum w * loss, sum w
        self.tokens = np.zeros(shape[0], dtype=np.int64) if per_sequence else None
        self.pending = {}  # address of a chunk's weights -> (its first sequence, the weights)

    def tagged(self, chunks):
        """``chunks`` with weights of their own, each remembered by its address."""
        for chunk in chunks:
            shape = tuple(chunk.target.shape)
            weight = np.ones(shape) if chunk.weight is None else host_array(chunk.weight)
            weight = np.array(weight, dtype=np.float64, order="C")  # a fresh array: a fresh address
            if weight.size:
                self.pending[weight.ctypes.data] = (chunk.first_row, weight)
            yield dataclasses.replace(chunk, weight=weight)

    def __call__(self, loss, rank, weights):
        if self.per_entry == 0 or not weights.size:
            return
        at, _ = self.pending.pop(weights.ctypes.data)
        n = loss.size // self.per_entry
        if self.per_token is not None:
            part = self.per_token[at:at + n]
            with np.errstate(over="ignore"):
                part[...] = loss.reshape((n, *self.shape[1:]))
            release_written(part)
        if self.sums is not None:
            rows = (n, self.per_entry)
            scored = (rank != IGNORED_ROW).reshape(rows)
            w = weights.reshape(rows)
            with np.errstate(invalid="ignore"):
                self.sums[0, at:at + n] = np.where(scored, w * loss.reshape(rows), 0.0).sum(axis=1)
            self.sums[1, at:at + n] = np.where(scored, w, 0.0).sum(axis=1)
            self.tokens[at:at + n] = scored.sum(axis=1)

    def per_sequence(self):
        if self.sums is None:
            return None
        records = np.empty(self.tokens.size, dtype=SEQUENCE_RECORD)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            records["loss"] = self.sums[0] / self.sums[1]
            records["perplexity"] = np.exp(records["loss"])
        records["tokens"] = self.tokens
        return records


def _check_per_token(out, shape):
    if out is None:
        return None
    if not isinstance(out, np.ndarray):
        raise TypeError(f"per_token must be a NumPy array to write into (np.lib.format.open_memmap for a file), "
                        f"got {type(out).__name__}")
    if out.dtype.kind != "f" or out.dtype.itemsize < 4:
        raise TypeError(f"per_token must be a float32 or float64 array, got dtype {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("per_token must be writeable")
    _checks.check_shape("per_token", out.shape, shape, "one loss per scored target: the targets' shape, (batch, seq - 1) with shift=True")
    return out


def _pairs(chunks, dtype=None):
    """Chunks from an iterable of (logits, target) or (logits, target, weight), the logits read as ``dtype``."""
    first_row = 0
    for item in chunks:
        try:
            logits, target, *rest = item
        except (TypeError, ValueError):
            raise TypeError("expected an iterable of (logits, target) or (logits, target, weight) chunks") from None
        if len(rest) > 1:
            raise TypeError("expected an iterable of (logits, target) or (logits, target, weight) chunks")
        target = _as_array(target)
        rows = prod(target.shape)
        weight = _as_array(rest[0]) if rest and rest[0] is not None else None
        yield Chunk(first_row, reinterpret(_as_array(logits), dtype), target, weight, rows)
        first_row += target.shape[0] if target.ndim else 1


def evaluate(logits, target=None, *, weight=None, shift=False, per_sequence=False, per_token=None, dtype=None,
             chunk_rows=None, progress=False, device="auto", **evaluator_options):
    """Evaluate a whole data set chunk by chunk; returns an ``EvalResult``.

    ``logits``/``target``: arrays of any size — NumPy arrays, memory maps
    (``np.load(path, mmap_mode="r")``) larger than RAM, or CUDA arrays — read
    ``chunk_rows`` entries of the first batch axis at a time (default: about
    64 MiB of host logits; logits already on a GPU in one chunk).  Alternatively ``target=None`` and ``logits`` an
    iterable of ``(logits, target)`` or ``(logits, target, weight)`` chunks.

    ``shift=True`` (causal language models): (batch, seq, vocab) logits
    against (batch, seq) token ids, each position scored against the next
    token, ``logits[:, :-1]`` against ``target[:, 1:]``: views, no copy,
    chunked over the batch axis (each chunk of an iterable is shifted alike).

    ``per_sequence=True`` fills ``EvalResult.per_sequence`` (loss, perplexity
    and scored tokens per entry of the targets' first axis).  ``per_token``, a
    float array of the (shifted) targets' shape, receives each row's loss
    chunk by chunk (0 where the target is ``ignore_index``, as PyTorch's
    ``reduction="none"``); pass ``np.lib.format.open_memmap(path, "w+", ...)``
    to write a file in bounded memory.  Both need arrays, not an iterable.

    ``dtype="bfloat16"`` reads host logits of raw 2-byte values (``|V2``, what
    ``np.save`` writes for an ``ml_dtypes.bfloat16`` array; uint16; int16) as
    bfloat16, as a view (a memory map stays one); other item sizes raise
    ``TypeError``.  Needs ``ml_dtypes`` (the ``bf16`` extra).

    ``device``: ``"cpu"``, ``"cuda"`` (host chunks are streamed to the GPU) or
    ``"auto"`` (CUDA arrays on the GPU; host arrays on the CPU, unless they
    are 1 GiB or more and streaming them through the GPU was measured
    faster on this machine: see ``nbce._routing``; ``result.pipeline`` says
    when they were).  ``progress=True`` shows rows/s and GB/s on stderr.  Other
    keywords go to ``Evaluator`` (``top_k``, ``ignore_index``, ``axis``,
    ``calibration_bins``).

    Memory: one chunk of a mapped file is resident at a time, plus O(chunk)
    per-row metrics; the result equals ``Evaluator().update(logits, target)``
    bit for bit.
    """
    evaluator = Evaluator(**evaluator_options)
    if chunk_rows is not None:
        chunk_rows = _positive_int(chunk_rows, "chunk_rows")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    recorder = None
    if target is None:
        if weight is not None:
            raise TypeError("with an iterable of chunks, pass weights inside the chunks")
        if per_sequence or per_token is not None:
            raise TypeError("per_sequence and per_token need the logits and targets as arrays, not an iterable")
        chunks, total_rows = _pairs(logits, dtype), None
        if shift:
            chunks = _shifted(chunks, evaluator.axis)
    else:
        logits, target = reinterpret(_as_array(logits), dtype), _as_array(target)
        weight = None if weight is None else _as_array(weight)
        if logits.ndim == 0:
            raise ValueError("logits must have at least one dimension (the class axis), got a scalar")
        axis = normalize_axis(evaluator.axis, logits.ndim)
        if shift:
            scored = next_token_views(logits, target, weight, axis)[1].shape
        else:
            scored = tuple(logits.shape[:axis]) + tuple(logits.shape[axis + 1:])
            _checks.check_shape("target", tuple(target.shape), scored,
                                "class indices have the logits' shape without the class axis")
            if weight is not None:
                _checks.check_shape("weight", tuple(weight.shape), scored, "one weight per target")
        if per_sequence or per_token is not None:
            recorder = _Recorder(scored, _check_per_token(per_token, scored), per_sequence)
        rows = chunk_rows or default_chunk_rows(logits, axis)
        chunks, total_rows = row_chunks(logits, target, weight, axis, rows), prod(scored)
        if shift:
            chunks = _shifted(chunks, axis)
        if recorder is not None:
            chunks = recorder.tagged(chunks)
    origin = (1,) if shift else ()  # token i + 1 is scored at position i: errors name the token
    first, timings = next(chunks, None), None
    if first is not None:  # else an empty iterable, or no row
        timings = _score_chunks(evaluator, itertools.chain([first], chunks), first, recorder, origin, total_rows,
                                None if target is None else logits.nbytes, progress, device)
    result = evaluator.compute()
    if timings is not None:
        result = dataclasses.replace(result, pipeline=timings.to_dict())
    if recorder is not None and per_sequence:
        result = dataclasses.replace(result, per_sequence=recorder.per_sequence())
    return result


def _score_chunks(evaluator, chunks, first, recorder, origin, total_rows, total_bytes, progress, device):
    """Score ``chunks`` into ``evaluator``; the GPU pipeline's timings when it streamed them, else None."""
    bar = Progress(total_rows, enabled=progress)
    evaluator._sink = recorder
    devices = set()  # backends keeping sums on their device: collected once, at the end
    try:
        if _streams_to_gpu(device, first.logits, total_bytes):
            from .cuda.pipeline import stream_host_chunks

            return stream_host_chunks(evaluator, chunks, bar)
        else:
            for chunk in chunks:
                if device == "cpu" and is_cuda_array(chunk.logits):
                    raise ValueError("device='cpu' needs host logits, but these live on a GPU")
                backend = evaluator._update(chunk.logits, chunk.target, chunk.weight, None,
                                            (*chunk.origin, *origin), settle=False)
                if backend.SUMS_ON_DEVICE:
                    devices.add(backend)
                bar.update(chunk.rows, chunk.logits.nbytes)
            for backend in devices:
                backend.settle_sums(evaluator)
    finally:
        for backend in devices:  # after an error: drop what the chunks left on the device
            backend.settle_sums(evaluator, keep=False)
        bar.close()
        evaluator._sink = None


def _streams_to_gpu(device, logits, total_bytes):
    """Whether host chunks go through the GPU pipeline: with device "cuda";
    with "auto", where ``nbce._routing`` measured the pipeline faster than the
    CPU backend on this machine, for inputs of at least its threshold
    (``total_bytes``, None for an iterable of chunks: the CPU)."""
    if is_cuda_array(logits) or device == "cpu":
        return False
    if device == "auto":
        return _routing.host_arrays_to_gpu(total_bytes, _score_sample)
    try:
        from . import cuda
    except ImportError:
        raise RuntimeError("device='cuda' needs numba-cuda: pip install 'nbce[cuda]'") from None
    cuda.require_device("device='cuda' was asked for")
    return True


def _score_sample(logits, target, device):
    evaluate(logits, target, device=device)
