"""Property tests: invariances and extreme magnitudes."""

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import nbce
import reference as ref

finite64 = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


@st.composite
def logits_and_targets(draw, elements=finite64, dtype=np.float64, max_classes=40):
    n_rows = draw(st.integers(1, 6))
    n_classes = draw(st.integers(1, max_classes))
    x = draw(hnp.arrays(dtype, (n_rows, n_classes), elements=elements))
    target = draw(hnp.arrays(np.int64, (n_rows,), elements=st.integers(0, n_classes - 1)))
    return x, target


@given(logits_and_targets(), st.floats(-1e4, 1e4))
def test_shift_invariance(data, shift):
    x, target = data
    base = nbce.cross_entropy(x, target, reduction="none")
    shifted = nbce.cross_entropy(x + shift, target, reduction="none")
    # x + shift rounds each logit by up to ulp(|x| + |shift|)/2
    atol = 4 * np.spacing(np.abs(x).max() + abs(shift)) + 1e-12
    np.testing.assert_allclose(shifted, base, rtol=1e-9, atol=atol)


@given(logits_and_targets(elements=st.floats(float(np.float32(-3e38)), float(np.float32(3e38)), width=32), dtype=np.float32))
def test_huge_float32_magnitudes_match_reference(data):
    x, target = data
    got = nbce.cross_entropy(x, target, reduction="none")
    expected = ref.cross_entropy(x, target, reduction="none")
    assert np.isfinite(expected).all()
    # Losses beyond float32's range are inf in a float32 result, as in PyTorch.
    with np.errstate(over="ignore"):
        expected = expected.astype(np.float32)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(nbce.logsumexp(x), ref.logsumexp(x), rtol=1e-6)


@given(logits_and_targets(elements=st.floats(-1e4, 1e4, width=32), dtype=np.float32))
def test_1e4_magnitudes(data):
    x, target = data
    np.testing.assert_allclose(nbce.cross_entropy(x, target, reduction="none"),
                               ref.cross_entropy(x, target, reduction="none"), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(nbce.entropy(x), ref.entropy(x), rtol=1e-5, atol=1e-5)


@given(logits_and_targets(), st.data())
def test_masked_columns_behave_like_removed_columns(data, draw):
    x, target = data
    n_classes = x.shape[1]
    masked = draw.draw(hnp.arrays(bool, (n_classes,)))
    masked[target] = False
    x_masked = np.where(masked, -np.inf, x)
    kept = ~masked
    remap = np.cumsum(kept) - 1
    got = nbce.cross_entropy(x_masked, target, reduction="none")
    expected = nbce.cross_entropy(x[:, kept], remap[target], reduction="none")
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(nbce.entropy(x_masked), nbce.entropy(x[:, kept]), rtol=1e-10, atol=1e-12)


@given(logits_and_targets(), st.floats(0, 1), st.data())
def test_random_soft_targets(data, smoothing, draw):
    x, _ = data
    raw = draw.draw(hnp.arrays(np.float64, x.shape, elements=st.floats(0, 1)))
    assume(np.all(raw.sum(axis=1) > 0))
    y = raw / raw.sum(axis=1, keepdims=True)
    got = nbce.cross_entropy(x, y, label_smoothing=smoothing, reduction="none")
    expected = ref.cross_entropy(x, y, label_smoothing=smoothing, reduction="none")
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
    # Cross-entropy is at least the target's entropy (Gibbs), with equality at y = softmax(x).
    y_s = (1 - smoothing) * y + smoothing / x.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        target_entropy = -np.sum(np.where(y_s > 0, y_s * np.log(y_s), 0.0), axis=1)
    assert np.all(got >= target_entropy - 1e-9)


@given(logits_and_targets())
def test_one_hot_soft_targets_equal_class_indices(data):
    x, target = data
    one_hot = np.eye(x.shape[1])[target]
    np.testing.assert_allclose(nbce.cross_entropy(x, one_hot), nbce.cross_entropy(x, target), rtol=1e-12, atol=1e-12)
