"""A realistic evaluation set on disk for ``nbce demo``, and a NumPy check of its scores.

Targets follow a Zipf law over the vocabulary (as tokens do); logits are a
log-frequency prior plus noise, with the target raised by a random margin so
that the model is right often but not always; every 50th row is padding
(target -100), starting with row 49 so that even a one-row set has a row to
score.  Logits are stored as float16, as models' saved outputs often
are.
"""

import numpy as np

PADDING = -100


def write_dataset(folder, rows, classes, seed=0, block_rows=512):
    """Write ``logits.npy`` (rows x classes, float16) and ``targets.npy`` (int64) into ``folder``."""
    rng = np.random.default_rng(seed)
    targets = np.minimum(rng.zipf(1.3, rows) - 1, classes - 1).astype(np.int64)
    targets[49::50] = PADDING
    prior = (-1.1 * np.log1p(np.arange(classes))).astype(np.float32)
    logits = np.lib.format.open_memmap(folder / "logits.npy", mode="w+", dtype=np.float16, shape=(rows, classes))
    for start in range(0, rows, block_rows):
        stop = min(rows, start + block_rows)
        block = rng.standard_normal((stop - start, classes), dtype=np.float32) * 1.5 + prior
        picked = np.flatnonzero(targets[start:stop] != PADDING)
        block[picked, targets[start:stop][picked]] += rng.gamma(2.0, 2.0, picked.size).astype(np.float32)
        logits[start:stop] = block
    logits.flush()
    del logits
    np.save(folder / "targets.npy", targets)
    return folder / "logits.npy", folder / "targets.npy"


def numpy_reference(logits, targets, top_k):
    """Loss, top-k accuracies and mean entropy of a sample, in float64 NumPy with full temporaries."""
    keep = targets != PADDING
    x = np.asarray(logits, dtype=np.float64)[keep]
    t = targets[keep]
    shifted = x - x.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    picked = x[np.arange(t.size), t]
    rank = (x > picked[:, None]).sum(axis=1)
    return {
        "loss": float(-log_p[np.arange(t.size), t].mean()),
        "accuracy": {k: float((rank < k).mean()) for k in top_k},
        "entropy": float(-(p * log_p).sum(axis=1).mean()),
    }
