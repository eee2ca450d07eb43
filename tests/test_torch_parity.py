"""The same calls through torch.nn.functional (CPU): semantics, not just formulas."""

import numpy as np
import pytest

import nbce
from conftest import make_logits

torch = pytest.importorskip("torch", reason="the PyTorch cross-checks need torch (a CPU build: pip install torch --index-url https://download.pytorch.org/whl/cpu)")
F = torch.nn.functional

TOL = {np.float64: dict(rtol=1e-10, atol=1e-10), np.float32: dict(rtol=2e-5, atol=2e-5)}


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def close(ours, theirs, dtype):
    np.testing.assert_allclose(np.asarray(ours, np.float64), theirs.double().numpy(), **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.15])
@pytest.mark.parametrize("ignore", [False, True])
def test_class_index_targets(dtype, reduction, weighted, smoothing, ignore, rng):
    x = make_logits(rng, (50, 9), np.dtype(dtype).name)
    target = rng.integers(0, 9, 50)
    if ignore:
        target[rng.random(50) < 0.3] = 4 if weighted else -100
    ignore_index = 4 if (ignore and weighted) else -100
    weight = (rng.random(9) + 0.2).astype(dtype) if weighted else None
    ours = nbce.cross_entropy(x, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
                              label_smoothing=smoothing)
    theirs = F.cross_entropy(t(x), t(target), weight=None if weight is None else t(weight),
                             ignore_index=ignore_index, reduction=reduction, label_smoothing=smoothing)
    close(ours, theirs, dtype)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_soft_targets_with_class_axis_1(reduction, weighted, smoothing, rng):
    x = make_logits(rng, (4, 7, 3, 2), "float64")
    y = rng.random((4, 7, 3, 2))
    y /= y.sum(axis=1, keepdims=True)
    weight = rng.random(7) + 0.1 if weighted else None
    ours = nbce.cross_entropy(x, y, axis=1, weight=weight, reduction=reduction, label_smoothing=smoothing)
    theirs = F.cross_entropy(t(x), t(y), weight=None if weight is None else t(weight), reduction=reduction,
                             label_smoothing=smoothing)
    close(ours, theirs, np.float64)


def test_spatial_class_index_targets(rng):
    x = make_logits(rng, (2, 5, 4, 3), "float32")
    target = rng.integers(0, 5, (2, 4, 3))
    target[0, 1, 1] = -100
    for reduction in ["none", "mean"]:
        close(nbce.cross_entropy(x, target, axis=1, reduction=reduction, label_smoothing=0.1),
              F.cross_entropy(t(x), t(target), reduction=reduction, label_smoothing=0.1), np.float32)


def test_nll_of_log_probs(rng):
    x = make_logits(rng, (20, 6), "float64")
    logp = F.log_softmax(t(x), dim=1)
    target = rng.integers(0, 6, 20)
    weight = rng.random(6) + 0.5
    close(nbce.cross_entropy(logp.numpy(), target, input_type="log_probs", weight=weight),
          F.nll_loss(logp, t(target), weight=t(weight)), np.float64)


def test_all_ignored_matches_torch_nan(rng):
    x = make_logits(rng, (3, 4), "float32")
    target = np.full(3, -100)
    assert np.isnan(nbce.cross_entropy(x, target)) and torch.isnan(F.cross_entropy(t(x), t(target)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_softmax_family(dtype, rng):
    x = make_logits(rng, (6, 40, 3), np.dtype(dtype).name)
    close(nbce.logsumexp(x, axis=1), torch.logsumexp(t(x), dim=1), dtype)
    close(nbce.log_softmax(x, axis=1), F.log_softmax(t(x), dim=1), dtype)
    close(nbce.softmax(x, axis=1), F.softmax(t(x), dim=1), dtype)
    entropy = torch.distributions.Categorical(logits=t(np.moveaxis(x, 1, -1))).entropy()
    close(nbce.entropy(x, axis=1), entropy, dtype)


def test_logsumexp_infinities_match_torch():
    x = np.array([[-np.inf, -np.inf], [np.inf, 1.0], [np.nan, 1.0], [-np.inf, 2.0]])
    np.testing.assert_array_equal(nbce.logsumexp(x), torch.logsumexp(t(x), dim=1).numpy())


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_binary(reduction, rng):
    x = make_logits(rng, (10, 4), "float64", scale=6.0)
    y = rng.random((10, 4))
    w = rng.random((10, 1))
    pw = rng.random(4) * 2
    close(nbce.binary_cross_entropy_with_logits(x, y, weight=w, pos_weight=pw, reduction=reduction),
          F.binary_cross_entropy_with_logits(t(x), t(y), weight=t(w), pos_weight=t(pw), reduction=reduction),
          np.float64)
    p = 1 / (1 + np.exp(-x))
    p[0, 0], p[1, 1] = 0.0, 1.0
    close(nbce.binary_cross_entropy(p, y, weight=w, reduction=reduction),
          F.binary_cross_entropy(t(p), t(y), weight=t(w), reduction=reduction), np.float64)


def test_bfloat16_logits(rng):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x32 = make_logits(rng, (16, 300), "float32")
    xb = x32.astype(ml_dtypes.bfloat16)
    target = rng.integers(0, 300, 16)
    theirs = F.cross_entropy(torch.from_numpy(xb.astype(np.float32)).to(torch.bfloat16).double(), t(target))
    close(nbce.cross_entropy(xb, target), theirs, np.float32)


INF_ROWS = np.array([
    [0.0, np.inf, 1.0],       # +inf at a class that is not the target
    [np.inf, 0.0, 1.0],       # +inf at the target
    [np.inf, np.inf, np.inf],
    [-np.inf, np.inf, 0.0],
    [-np.inf, -np.inf, -np.inf],
    [-np.inf, 2.0, 1.0],
])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_infinite_logits_match_torch(dtype):
    # A row holding +inf: every log-probability, probability and loss is NaN
    # (its logsumexp +inf); an all -inf row: NaN too (logsumexp -inf).
    x = INF_ROWS.astype(dtype)
    for target in (np.zeros(6, np.int64), np.full(6, 2)):
        close(nbce.cross_entropy(x, target, reduction="none"), F.cross_entropy(t(x), t(target), reduction="none"),
              dtype)
        close(nbce.cross_entropy(x, target, reduction="none", label_smoothing=0.1),
              F.cross_entropy(t(x), t(target), reduction="none", label_smoothing=0.1), dtype)
    close(nbce.log_softmax(x), F.log_softmax(t(x), dim=1), dtype)
    close(nbce.softmax(x), F.softmax(t(x), dim=1), dtype)
    close(nbce.logsumexp(x), torch.logsumexp(t(x), dim=1), dtype)
    y = np.full(x.shape, 1 / 3, dtype)
    close(nbce.cross_entropy(x[:4], y[:4], reduction="none"), F.cross_entropy(t(x[:4]), t(y[:4]), reduction="none"),
          dtype)


@pytest.mark.parametrize("magnitude", [1e12, 1e16, 1e20, 1e300])
def test_huge_logits_match_torch(magnitude):
    x = np.array([[magnitude] * 3, [-magnitude] * 3, [magnitude, magnitude - magnitude * 1e-15, 0.0]])
    target = np.array([0, 1, 1])
    close(nbce.cross_entropy(x, target, reduction="none"), F.cross_entropy(t(x), t(target), reduction="none"),
          np.float64)
    close(nbce.log_softmax(x), F.log_softmax(t(x), dim=1), np.float64)
    close(nbce.softmax(x), F.softmax(t(x), dim=1), np.float64)


def test_binary_cross_entropy_refuses_what_torch_refuses():
    p = np.array([0.25, 0.5, 0.75])
    for y in ([0.0, 1.5, 1.0], [0.0, 1.0, -0.5]):
        with pytest.raises(RuntimeError, match="target should be between 0 and 1"):
            F.binary_cross_entropy(t(p), t(np.array(y)))
        with pytest.raises(ValueError, match=r"target\[\d\] = .* is not a probability"):
            nbce.binary_cross_entropy(p, np.array(y))
    for bad in ([0.0, 1.5, 1.0], [-0.5, 1.0, 1.0]):
        with pytest.raises(RuntimeError, match="input should be between 0 and 1"):
            F.binary_cross_entropy(t(np.array(bad)), t(p))
        with pytest.raises(ValueError, match=r"probs\[\d\] = .* is not a probability"):
            nbce.binary_cross_entropy(np.array(bad), p)
    y = np.array([0.0, 0.3, 1.0])
    close(nbce.binary_cross_entropy(p, y), F.binary_cross_entropy(t(p), t(y)), np.float64)


def test_label_smoothing_string_is_a_type_error_in_both():
    x, target = np.zeros((2, 3)), np.array([0, 1])
    with pytest.raises(TypeError):
        F.cross_entropy(t(x), t(target), label_smoothing="0.1")
    with pytest.raises(TypeError, match="label_smoothing must be a float"):
        nbce.cross_entropy(x, target, label_smoothing="0.1")


def test_bfloat16_class_weights(rng):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    xb = make_logits(rng, (16, 30), "float32").astype(ml_dtypes.bfloat16)
    wb = (rng.random(30) + 0.5).astype(ml_dtypes.bfloat16)
    target = rng.integers(0, 30, 16)
    as_torch = lambda a: torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16).double()  # noqa: E731
    for reduction in ["none", "mean"]:
        close(nbce.cross_entropy(xb, target, weight=wb, reduction=reduction),
              F.cross_entropy(as_torch(xb), t(target), weight=as_torch(wb), reduction=reduction), np.float32)
