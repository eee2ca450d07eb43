"""Evaluation spread over a Dask cluster (the ``dask`` extra).

Each block of rows is scored where it lives — NumPy blocks by the CPU
kernels, CuPy blocks by the GPU kernels — into an ``Evaluator`` state, and
the states are merged in a tree.  ``Evaluator.merge`` is exact, so the
result equals the single-machine evaluation bit for bit, whatever the
chunking and the order in which workers finish.
"""

import numpy as np

from ._arrays import normalize_axis
from .evaluation import Evaluator

__all__ = ["evaluate"]


def _score_block(options, origin, logits, target, weight=None):
    evaluator = Evaluator(**options)
    evaluator._update(logits, target, weight, None, origin)
    return evaluator


def _merge_states(*states):
    merged = Evaluator(**states[0].options())
    for state in states:
        merged.merge(state)
    return merged


def evaluate(logits, target, *, weight=None, split_every=8, **options):
    """``nbce.evaluate`` for ``dask.array`` inputs; returns an ``EvalResult``.

    ``logits``: a dask array chunked along its batch axes (the class axis is
    brought into one chunk if it is split); ``target`` (and ``weight``): dask
    or NumPy arrays of the logits' shape without the class axis, rechunked to
    match.  States are merged ``split_every`` at a time.  Runs on the current
    Dask scheduler (a ``distributed.Client`` if one is active).  Other keywords
    go to ``Evaluator`` (``top_k``, ``ignore_index``, ``axis``,
    ``calibration_bins``).
    """
    import dask
    import dask.array as da

    if split_every < 2:
        raise ValueError(f"split_every must be at least 2, got {split_every!r}")
    Evaluator(**options)  # check the options here, not on a worker
    logits = da.asarray(logits)
    if logits.ndim == 0:
        raise ValueError("logits must have at least one dimension (the class axis), got a scalar")
    axis = normalize_axis(options.get("axis", -1), logits.ndim)
    logits = logits.rechunk({axis: -1})
    batch_chunks = logits.chunks[:axis] + logits.chunks[axis + 1:]
    expected = logits.shape[:axis] + logits.shape[axis + 1:]
    operands = [target] if weight is None else [target, weight]
    blocks = [np.squeeze(logits.to_delayed(), axis=axis).reshape(-1)]
    for name, operand in zip(("target", "weight"), operands):
        operand = da.asarray(operand)
        if operand.shape != expected:
            raise ValueError(f"{name} has shape {operand.shape}, expected {expected} "
                             "(the logits' shape without the class axis)")
        blocks.append(operand.rechunk(batch_chunks).to_delayed().reshape(-1))
    starts = [np.cumsum((0,) + c[:-1]) for c in batch_chunks]
    origins = [tuple(int(s[i]) for s, i in zip(starts, index)) for index in np.ndindex(*map(len, batch_chunks))]
    score = dask.delayed(_score_block, pure=True)
    states = [score(options, origin, *parts) for origin, *parts in zip(origins, *blocks)]
    merge = dask.delayed(_merge_states, pure=True)
    while len(states) > 1:
        states = [merge(*states[i:i + split_every]) for i in range(0, len(states), split_every)]
    (state,) = dask.compute(states[0])
    return state.compute()
