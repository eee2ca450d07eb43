"""Float64 NumPy references: the straightforward formulas, full-size temporaries allowed.

These are the oracle of the test suite (and of the benchmarks' result checks);
they share no code with nbce.  ``exact_log_softmax`` is the decimal oracle of
the references themselves at extreme magnitudes.
"""

from decimal import Decimal, localcontext

import numpy as np


def f64(x):
    return np.asarray(x).astype(np.float64)


def logsumexp(x, axis=-1):
    x = f64(x)
    m = np.max(x, axis=axis, keepdims=True, initial=-np.inf)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.squeeze(np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m, axis=axis)


def log_softmax(x, axis=-1):
    """(x - m) - log s with m the row maximum and s = sum exp(x - m), never
    x - logsumexp(x) (which loses log s once |m| >> 1).  s = k + r with k the
    count of maxima, so log s = log k + log1p(r / k) keeps r ~ 1e-30.  A row
    holding +inf, or only -inf, is NaN throughout (as in PyTorch)."""
    x = f64(x)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        d = x - np.max(x, axis=axis, keepdims=True, initial=-np.inf)
        k = np.sum(d == 0, axis=axis, keepdims=True)
        r = np.sum(np.where(d == 0, 0.0, np.exp(d)), axis=axis, keepdims=True)
        return d - (np.log(k) + np.log1p(r / k))


def exact_log_softmax(row, digits=60):
    """log_softmax of one row of finite or -inf values in ``digits``-digit
    decimal arithmetic from the exact values of the floats, rounded once."""
    with localcontext() as ctx:
        ctx.prec = digits
        x = [Decimal(float(v)) for v in np.asarray(row, dtype=np.float64)]
        m = max(x)
        log_s = sum((v - m).exp() for v in x).ln()
        return np.array([float((v - m) - log_s) for v in x])


def softmax(x, axis=-1):
    with np.errstate(invalid="ignore"):
        return np.exp(log_softmax(x, axis))


def entropy(x, axis=-1):
    p = softmax(x, axis)
    lp = log_softmax(x, axis)
    with np.errstate(invalid="ignore"):
        return -np.sum(np.where(p > 0, p * lp, 0.0), axis=axis)


def log_probs(x, axis, input_type):
    if input_type == "logits":
        return log_softmax(x, axis)
    if input_type == "log_probs":
        return f64(x)
    with np.errstate(divide="ignore"):
        return np.maximum(np.log(f64(x)), -100.0)


def cross_entropy(x, target, axis=-1, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, input_type="logits"):
    x = f64(x)
    axis = axis % x.ndim
    n_classes = x.shape[axis]
    lp = np.moveaxis(log_probs(x, axis, input_type), axis, -1)  # (..., C)
    w = np.ones(n_classes) if weight is None else f64(weight)
    eps = label_smoothing
    target = np.asarray(target)
    with np.errstate(invalid="ignore", over="ignore"):
        if target.dtype.kind in "iu":
            t = target.astype(np.int64)
            ignored = t == ignore_index
            safe = np.where(ignored, 0, t)
            lp_t = np.take_along_axis(lp, safe[..., None], axis=-1)[..., 0]
            w_t = np.where(ignored, 0.0, w[safe])
            loss = -(1 - eps) * w_t * lp_t
            if eps:  # (without smoothing, a -inf logit must not give 0 * -inf)
                loss = loss - eps / n_classes * np.sum(np.where(w != 0, w * lp, 0.0), axis=-1)
            loss = np.where(ignored, 0.0, loss)
            denominator = w_t.sum()
        else:
            y = np.moveaxis(f64(target), axis, -1)
            a = w * ((1 - eps) * y + eps / n_classes)
            loss = -np.sum(np.where(a != 0, a * lp, 0.0), axis=-1)
            denominator = loss.size
        if reduction == "none":
            return loss
        if reduction == "sum":
            return loss.sum()
        return loss.sum() / denominator if denominator else np.float64(np.nan)


def binary_cross_entropy(p, y, weight=None, reduction="mean"):
    p, y = f64(p), f64(y)
    w = 1.0 if weight is None else f64(weight)
    with np.errstate(divide="ignore"):
        loss = -w * (y * np.maximum(np.log(p), -100) + (1 - y) * np.maximum(np.log(1 - p), -100))
    return _reduce(loss, reduction)


def binary_cross_entropy_with_logits(x, y, weight=None, pos_weight=None, reduction="mean"):
    x, y = f64(x), f64(y)
    w = 1.0 if weight is None else f64(weight)
    pw = 1.0 if pos_weight is None else f64(pos_weight)
    # -[pw y log sigmoid(x) + (1 - y) log sigmoid(-x)], log sigmoid(x) = -logaddexp(0, -x)
    loss = w * (pw * y * np.logaddexp(0.0, -x) + (1 - y) * np.logaddexp(0.0, x))
    return _reduce(loss, reduction)


def _reduce(loss, reduction):
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.mean() if loss.size else np.float64(np.nan)


def evaluation(x, target, axis=-1, top_k=(1, 5), ignore_index=-100, calibration_bins=15, weight=None):
    """Every metric of ``nbce.evaluate`` as a dict, from full (rows, C) float64 matrices."""
    x = f64(x)
    axis = axis % x.ndim
    n_classes = x.shape[axis]
    scores = np.moveaxis(x, axis, -1).reshape(-1, n_classes)
    lp = np.moveaxis(log_softmax(x, axis), axis, -1).reshape(-1, n_classes)
    t = np.asarray(target).astype(np.int64).reshape(-1)
    w = np.ones(t.size) if weight is None else f64(weight).reshape(-1)
    keep = t != ignore_index
    scores, lp, t, w = scores[keep], lp[keep], t[keep], w[keep]
    rows = np.arange(t.size)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        loss_rows = -lp[rows, t]
        rank = np.sum(scores > scores[rows, t][:, None], axis=1)
        p = np.exp(lp)
        entropy_rows = -np.sum(np.where(p > 0, p * lp, 0.0), axis=1)
        confidence = np.max(p, axis=1, initial=0.0)
        total = w.sum()
        # weights normalised first: a mean of finite values near float64's max stays finite
        mean = (lambda v: np.sum((w / total) * v)) if total else (lambda v: np.nan)
        edges = np.linspace(0.0, 1.0, calibration_bins + 1)
        gaps = 0.0
        for b in range(calibration_bins):
            inside = (confidence > edges[b]) & (confidence <= edges[b + 1])
            if b == 0:
                inside |= confidence <= edges[0]
            gaps += abs(np.sum(w[inside] * (rank[inside] == 0)) - np.sum(w[inside] * confidence[inside]))
        loss = mean(loss_rows)
        return {
            "loss": loss,
            "perplexity": np.exp(loss),
            "bits_per_token": loss / np.log(2),
            "accuracy": {k: mean(rank < k) for k in top_k},
            "entropy": mean(entropy_rows),
            "ece": gaps / total if total else np.nan,
            "count": int(t.size),
            "ignored": int(np.sum(~keep)),
        }
