"""``device="auto"`` for host arrays: the CPU, or the GPU pipeline where it was measured faster."""

import json

import numpy as np
import pytest

import nbce
from nbce import _routing
from conftest import make_logits
from test_evaluation import targets_for


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """A GPU called "Fake GPU", a fresh user cache, and measurements that are counted."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("NBCE_AUTO_HOST_DEVICE", raising=False)
    monkeypatch.setattr(_routing, "_decided", {})
    monkeypatch.setattr(_routing, "gpu_name", lambda: "Fake GPU")
    state = {"measured": 0, "rates": {"cpu_gb_per_second": 10.0, "cuda_gb_per_second": 20.0}}

    def measure(score, shape=None):
        state["measured"] += 1
        return dict(state["rates"])

    monkeypatch.setattr(_routing, "measure", measure)
    return state


def never_called(*args):
    raise AssertionError("scored a sample")


def test_small_inputs_stay_on_the_cpu_without_measuring(machine):
    assert not _routing.host_arrays_to_gpu(_routing.MEASURE_FROM_BYTES - 1, never_called)
    assert not _routing.host_arrays_to_gpu(None, never_called)  # an iterable of chunks: size unknown
    assert machine["measured"] == 0


def test_large_inputs_go_where_it_was_measured_faster_once_per_machine(machine):
    big = 2 * _routing.MEASURE_FROM_BYTES
    assert _routing.host_arrays_to_gpu(big, never_called)
    assert _routing.host_arrays_to_gpu(big, never_called)
    assert machine["measured"] == 1
    with open(_routing.routing_file()) as file:
        saved = json.load(file)
    (key, rates), = saved.items()
    assert key.startswith("Fake GPU |") and rates == machine["rates"]
    _routing._decided.clear()  # a new process reads the file
    assert _routing.host_arrays_to_gpu(big, never_called) and machine["measured"] == 1


def test_a_faster_cpu_keeps_large_inputs(machine):
    machine["rates"] = {"cpu_gb_per_second": 30.0, "cuda_gb_per_second": 20.0}
    assert not _routing.host_arrays_to_gpu(2 * _routing.MEASURE_FROM_BYTES, never_called)


def test_no_gpu_no_measurement(machine, monkeypatch):
    monkeypatch.setattr(_routing, "gpu_name", lambda: None)
    assert not _routing.host_arrays_to_gpu(2 * _routing.MEASURE_FROM_BYTES, never_called)
    monkeypatch.setenv("NBCE_AUTO_HOST_DEVICE", "cuda")
    assert not _routing.host_arrays_to_gpu(10, never_called)
    assert machine["measured"] == 0


@pytest.mark.parametrize("choice", ["cpu", "cuda"])
def test_the_environment_decides_without_measuring(machine, monkeypatch, choice):
    monkeypatch.setenv("NBCE_AUTO_HOST_DEVICE", choice)
    assert _routing.host_arrays_to_gpu(10, never_called) == (choice == "cuda")
    assert machine["measured"] == 0


def test_an_unreadable_or_unwritable_cache_costs_only_a_measurement(machine, tmp_path):
    path = _routing.routing_file()
    import os

    os.makedirs(os.path.dirname(path))
    with open(path, "w") as file:
        file.write("not json")
    assert _routing.host_arrays_to_gpu(2 * _routing.MEASURE_FROM_BYTES, never_called)
    assert machine["measured"] == 1


@pytest.mark.parametrize("cuda_faster", [False, True])
def test_evaluate_auto_follows_the_measurement(machine, monkeypatch, cuda_faster, rng):
    pytest.importorskip("nbce.cuda")
    monkeypatch.setattr(_routing, "MEASURE_FROM_BYTES", 0)
    machine["rates"] = {"cpu_gb_per_second": 10.0, "cuda_gb_per_second": 20.0 if cuda_faster else 5.0}
    x = make_logits(rng, (24, 5), "float32")
    t = targets_for(rng, (24, 5), -1)
    result = nbce.evaluate(x, t, device="auto", chunk_rows=8)
    assert (result.pipeline is not None) == cuda_faster
    assert result.count == nbce.evaluate(x, t, device="cpu").count


def test_the_measurement_times_both_paths_on_a_host_sample():
    pytest.importorskip("nbce.cuda")
    calls = []

    def score(logits, target, device):
        calls.append(device)
        assert logits.dtype == np.float16 and target.shape == logits.shape[:-1]
        nbce.evaluate(logits, target, device=device)

    rates = _routing.measure(score, shape=(16, 8))
    assert calls == ["cpu"] * (1 + _routing._REPEATS) + ["cuda"] * (1 + _routing._REPEATS)
    assert rates["cpu_gb_per_second"] > 0 and rates["cuda_gb_per_second"] > 0
