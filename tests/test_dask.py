"""nbce.dask.evaluate on a real distributed.LocalCluster of worker processes."""

import pickle

import numpy as np
import pytest

import nbce
from conftest import make_logits

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
nbce_dask = pytest.importorskip("nbce.dask")


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        yield client


def test_two_worker_processes_give_the_single_machine_result(client):
    rng = np.random.default_rng(3)
    x = make_logits(rng, (1000, 50), "float32")
    t = rng.integers(0, 50, 1000)
    t[::13] = -100
    w = rng.uniform(0, 2, 1000)
    single = nbce.evaluate(x, t, weight=w, top_k=(1, 3))
    result = nbce_dask.evaluate(da.from_array(x, chunks=(97, 25)), da.from_array(t, chunks=300),
                                weight=w, top_k=(1, 3), split_every=2)
    assert result == single  # exact merge: bit-identical
    workers = client.run(lambda: __import__("os").getpid())
    assert len(set(workers.values())) == 2


def test_class_axis_first_and_several_batch_axes(client):
    rng = np.random.default_rng(4)
    x = make_logits(rng, (6, 4, 40), "float64")
    t = rng.integers(0, 6, (4, 40))
    single = nbce.evaluate(x, t, axis=0)
    assert nbce_dask.evaluate(da.from_array(x, chunks=(3, 2, 15)), t, axis=0) == single


def test_errors_are_raised_before_any_work(client):
    x = da.zeros((10, 4), chunks=5)
    with pytest.raises(ValueError, match="target has shape"):
        nbce_dask.evaluate(x, np.zeros(9, np.int64))
    with pytest.raises(ValueError, match="top_k"):
        nbce_dask.evaluate(x, np.zeros(10, np.int64), top_k=0)
    with pytest.raises(ValueError, match="target\\[7\\] = 4"):
        nbce_dask.evaluate(x, da.from_array(np.r_[np.zeros(7, np.int64), 4, 0, 0], chunks=10))


def test_states_pickle_small():
    rng = np.random.default_rng(5)
    evaluator = nbce.Evaluator().update(make_logits(rng, (500, 30), "float32"), rng.integers(0, 30, 500))
    assert len(pickle.dumps(evaluator)) < 64_000
