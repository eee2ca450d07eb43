"""The ``nbce`` command line: score, demo, bench, and its handling of bad input."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import nbce
from nbce import cli
from nbce._files import open_array
from conftest import make_logits


@pytest.fixture
def files(tmp_path, rng):
    x = make_logits(rng, (300, 20), "float16")
    t = rng.integers(0, 20, 300)
    t[::10] = -100
    np.save(tmp_path / "logits.npy", x)
    np.save(tmp_path / "targets.npy", t)
    return tmp_path, x, t


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_score_prints_a_table(files, capsys):
    folder, x, t = files
    code, out, err = run(capsys, "score", folder / "logits.npy", folder / "targets.npy", "--top-k", "1,3")
    assert code == 0 and "Traceback" not in err
    expected = nbce.evaluate(x, t, top_k=(1, 3))
    assert f"{expected.loss:.6f}" in out
    assert "top-3 accuracy" in out and f"{100 * expected.accuracy[3]:.3f} %" in out
    assert "rows ignored         30" in out


def test_score_json_equals_evaluate(files, capsys):
    folder, x, t = files
    code, out, _ = run(capsys, "score", folder / "logits.npy", folder / "targets.npy", "--json", "--chunk-rows", "7",
                       "--device", "cpu")
    assert code == 0
    data = json.loads(out)
    assert data.pop("throughput")["seconds"] > 0
    assert data == json.loads(json.dumps(nbce.evaluate(x, t).to_dict()))


def test_npz_members(tmp_path, files, capsys):
    folder, x, t = files
    np.savez(tmp_path / "stored.npz", logits=x, targets=t)
    np.savez_compressed(tmp_path / "packed.npz", logits=x, targets=t)
    mapped = open_array(f"{tmp_path / 'stored.npz'}:logits")
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, x)
    assert np.array_equal(open_array(f"{tmp_path / 'packed.npz'}:targets"), t)
    code, out, _ = run(capsys, "score", f"{tmp_path / 'stored.npz'}:logits", f"{tmp_path / 'packed.npz'}:targets",
                       "--json")
    assert code == 0 and json.loads(out)["count"] == 270


def _bad_inputs(folder, tmp_path):
    (tmp_path / "notes.txt").write_text("not an array")
    np.save(tmp_path / "int_logits.npy", np.zeros((300, 20), np.int32))
    np.save(tmp_path / "float_targets.npy", np.zeros(300))
    np.save(tmp_path / "short_targets.npy", np.zeros(299, np.int64))
    np.save(tmp_path / "bad_targets.npy", np.full(300, 20))
    np.savez(tmp_path / "two.npz", a=np.zeros(3), b=np.zeros(3))
    logits, targets = folder / "logits.npy", folder / "targets.npy"
    return [
        ((tmp_path / "missing.npy", targets), "no such file"),
        ((tmp_path / "notes.txt", targets), "not a .npy or .npz file"),
        ((tmp_path / "two.npz", targets), "name one as"),
        ((f"{tmp_path / 'two.npz'}:c", targets), "has no array 'c'"),
        ((tmp_path / "int_logits.npy", targets), "floating-point"),
        ((logits, tmp_path / "float_targets.npy"), "integer class indices"),
        ((logits, tmp_path / "short_targets.npy"), "target has shape"),
        ((logits, tmp_path / "bad_targets.npy"), r"target[0] = 20 is not a class index"),
    ]


def test_bad_input_is_one_line_and_status_2(files, tmp_path, capsys):
    folder = files[0]
    for (logits, targets), message in _bad_inputs(folder, tmp_path):
        code, out, err = run(capsys, "score", logits, targets)
        assert code == 2, message
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
        assert out == ""


def test_bad_options_exit_2(files, capsys):
    folder = files[0]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["score", str(folder / "logits.npy"), str(folder / "targets.npy"), "--top-k", "0"])
    assert exit_info.value.code == 2
    assert "positive integers" in capsys.readouterr().err


def test_ctrl_c_stops_cleanly(files, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(nbce, "evaluate", interrupted)
    folder = files[0]
    code, _, err = run(capsys, "score", folder / "logits.npy", folder / "targets.npy")
    assert code == 130 and err == "nbce score: interrupted\n"


def _sigint_default():
    # A test run started in the background of a non-interactive shell ignores
    # SIGINT, and children inherit that: give the child the default handling,
    # as a terminal's foreground process has.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigint_while_scoring_exits_130_without_a_traceback(tmp_path):
    # 300,000 one-row chunks: many seconds of scoring, so the signal lands mid-run
    np.save(tmp_path / "x.npy", np.zeros((300_000, 4), np.float16))
    np.save(tmp_path / "t.npy", np.zeros(300_000, np.int64))
    child = subprocess.Popen([sys.executable, "-m", "nbce", "score", str(tmp_path / "x.npy"), str(tmp_path / "t.npy"),
                              "--chunk-rows", "1", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, preexec_fn=_sigint_default)
    time.sleep(3.0)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert err == "nbce score: interrupted\n" and out == ""


def test_python_dash_m_in_a_fresh_process(files):
    folder = files[0]
    done = subprocess.run([sys.executable, "-m", "nbce", "score", str(folder / "logits.npy"),
                           str(folder / "missing.npy")], capture_output=True, text=True)
    assert done.returncode == 2 and "no such file" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run([sys.executable, "-m", "nbce", "score", str(folder / "logits.npy"),
                           str(folder / "targets.npy"), "--json"], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout)["count"] == 270


def test_cuda_without_a_gpu_is_one_line(files):
    folder = files[0]
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}  # the real CUDA target
    done = subprocess.run([sys.executable, "-m", "nbce", "score", str(folder / "logits.npy"),
                           str(folder / "targets.npy"), "--device", "cuda"], capture_output=True, text=True, env=env)
    if done.returncode == 0:
        pytest.skip("a GPU is present")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "device='cuda' was asked for, but no CUDA device is usable" in done.stderr


def test_demo_builds_scores_and_checks(capsys):
    code, out, err = run(capsys, "demo", "--rows", "300", "--classes", "500", "--device", "cpu")
    assert code == 0, err
    assert "check: nbce agrees with a float64 NumPy reference" in out and "top-5 accuracy" in out


@pytest.mark.parametrize("rows", [1, 2])
def test_demo_of_one_or_two_rows_checks(capsys, rows):
    # A one-row set once held only padding: NaN against NaN reported "check failed".
    code, out, err = run(capsys, "demo", "--rows", rows, "--classes", "50", "--device", "cpu")
    assert code == 0, err
    assert "check: nbce agrees with a float64 NumPy reference" in out


def test_sample_check_treats_nan_on_both_sides_as_agreement():
    assert cli._difference(float("nan"), float("nan")) == 0.0
    assert math.isnan(cli._difference(float("nan"), 1.0)) and cli._difference(1.0, 0.25) == 0.75


def test_bench_prints_a_table(capsys):
    code, out, _ = run(capsys, "bench", "--rows", "64", "--classes", "100")
    assert code == 0 and "nbce.evaluate (all metrics)" in out and "numpy" in out
