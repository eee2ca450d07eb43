"""Standard errors of the loss and the accuracies, as lm-eval-harness reports them, from exact sums."""

import json
import math
import pickle

import numpy as np
import pytest

import nbce
import reference as ref
from conftest import make_logits


def lm_eval_stderr(values):
    """lm-eval-harness's mean_stderr: sample standard deviation (n - 1) / sqrt(n)."""
    values = np.asarray(values, dtype=np.float64)
    return np.std(values, ddof=1) / math.sqrt(values.size)


def per_row(x, t):
    lp = ref.log_softmax(ref.f64(x))
    keep = t != -100
    rows = np.flatnonzero(keep)
    loss = -lp[rows, t[keep]]
    rank = np.sum(ref.f64(x)[rows] > ref.f64(x)[rows, t[keep]][:, None], axis=1)
    return loss, rank


@pytest.fixture
def data(rng):
    x = make_logits(rng, (500, 12), "float64")
    t = rng.integers(0, 12, 500)
    t[::11] = -100
    return x, t


def test_matches_lm_eval_harness(data):
    x, t = data
    result = nbce.evaluate(x, t, top_k=(1, 3), device="cpu")
    loss, rank = per_row(x, t)
    assert result.loss_stderr == pytest.approx(lm_eval_stderr(loss), rel=1e-12)
    for k in (1, 3):
        assert result.accuracy_stderr[k] == pytest.approx(lm_eval_stderr(rank < k), rel=1e-12)


def test_weighted_moments(data, rng):
    x, t = data
    w = rng.uniform(0.0, 3.0, t.shape)
    result = nbce.evaluate(x, t, weight=w, device="cpu")
    loss, rank = per_row(x, t)
    w = w[t != -100]
    n, total = loss.size, w.sum()

    def expected(v):
        mean = np.sum(w * v) / total
        return math.sqrt((np.sum(w * v * v) / total - mean**2) / (n - 1))

    assert result.loss_stderr == pytest.approx(expected(loss), rel=1e-10)
    assert result.accuracy_stderr[1] == pytest.approx(expected((rank < 1).astype(float)), rel=1e-10)


def test_unit_weights_equal_no_weights(data):
    x, t = data
    assert nbce.evaluate(x, t, weight=np.ones(t.shape)) == nbce.evaluate(x, t)


def test_mergeable_and_independent_of_chunking(data):
    x, t = data
    whole = nbce.evaluate(x, t, device="cpu")
    parts = [nbce.Evaluator().update(x[i:i + 37], t[i:i + 37]) for i in range(0, 500, 37)]
    merged = parts[0]
    for part in parts[:0:-1]:
        merged.merge(part)
    result = merged.compute()
    assert result.loss_stderr == whole.loss_stderr and result.accuracy_stderr == whole.accuracy_stderr


def test_fewer_than_two_rows_give_nan(data):
    x, t = data
    one = nbce.evaluate(x[:1], np.array([3]))
    assert math.isnan(one.loss_stderr) and math.isnan(one.accuracy_stderr[1])
    assert one.to_dict()["loss_stderr"] is None


def test_constant_loss_has_zero_stderr():
    x = np.zeros((10, 4))
    result = nbce.evaluate(x, np.zeros(10, np.int64))
    assert result.loss_stderr == 0.0 and result.accuracy_stderr[1] == 0.0


def test_a_pickle_of_the_previous_layout_loads_with_an_unknown_loss_stderr(data):
    x, t = data
    evaluator = nbce.Evaluator().update(x, t)
    state = evaluator.__getstate__()
    layout = evaluator._layout
    # the previous layout: the same sums without the last one (sum w*loss**2)
    keep = state["occupied"] < layout.loss_squares * state["width"]
    old = {**state, "occupied": state["occupied"][keep], "values": state["values"][keep],
           "pending": state["pending"][:-1], "special": state["special"][:-1]}
    clone = nbce.Evaluator.__new__(nbce.Evaluator)
    clone.__setstate__(old)
    result, expected = clone.compute(), evaluator.compute()
    assert result.loss == expected.loss and result.accuracy_stderr == expected.accuracy_stderr
    assert math.isnan(result.loss_stderr)
    assert math.isnan(pickle.loads(pickle.dumps(clone)).merge(evaluator).compute().loss_stderr)


def test_cli_table_and_json(data, tmp_path, capsys):
    from nbce import cli

    x, t = data
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "t.npy", t)
    expected = nbce.evaluate(x, t)
    assert cli.main(["score", str(tmp_path / "x.npy"), str(tmp_path / "t.npy"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["loss_stderr"] == expected.loss_stderr
    assert data["accuracy_stderr"] == {"1": expected.accuracy_stderr[1], "5": expected.accuracy_stderr[5]}
    assert cli.main(["score", str(tmp_path / "x.npy"), str(tmp_path / "t.npy")]) == 0
    out = capsys.readouterr().out
    assert f"± {expected.loss_stderr:.6f}" in out and f"± {100 * expected.accuracy_stderr[5]:.3f}" in out
