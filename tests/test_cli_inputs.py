"""The command line describes its inputs: whole-shape checks, --version, --json inputs, help texts."""

import json
import re

import numpy as np
import pytest

import nbce
from nbce import cli


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def save(folder, **arrays):
    """Arrays saved as NAME.npy in ``folder``; their names relative to it (the tests run there)."""
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array)
    return [f"{name}.npy" for name in arrays]


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("logits_shape, targets_shape, axis, message", [
    ((3000, 10), (100, 30), -1, r"targets\.npy \(100 x 30 int64\) does not fit logits\.npy \(3000 x 10 float32\): "
                                r"expected targets of shape \(3000,\)"),
    ((40, 10), (40,), 0, r"expected targets of shape \(10,\) .*without the class axis 0"),
    ((1000,), (1000,), -1, r"logits\.npy \(1000 float32\) is 1-D: nbce score expects logits of \(rows, classes\)"),
    ((4, 5), (4,), 2, r"--axis 2 is out of range for logits\.npy \(4 x 5 float32\)"),
])
def test_shapes_are_checked_whole_and_describe_the_files(tmp_path, capsys, monkeypatch, logits_shape, targets_shape,
                                                         axis, message):
    warmed = []
    monkeypatch.setattr(nbce, "evaluate", lambda *a, **k: warmed.append(a))
    logits, targets = save(tmp_path, logits=np.zeros(logits_shape, np.float32),
                           targets=np.zeros(targets_shape, np.int64))
    code, _, err = run(capsys, "score", logits, targets, "--axis", axis)
    assert code == 2 and err.count("\n") == 1
    assert re.search(message, err), err
    assert not warmed  # refused before the warm-up


def test_shift_shapes_describe_the_files(tmp_path, capsys):
    logits, targets = save(tmp_path, logits=np.zeros((2, 5, 7), np.float32), targets=np.zeros((2, 4), np.int64))
    code, _, err = run(capsys, "score", logits, targets, "--shift")
    assert code == 2 and "targets.npy (2 x 4 int64) does not fit logits.npy (2 x 5 x 7 float32)" in err
    assert "(batch, seq) token ids" in err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["--version"])
    assert exit.value.code == 0 and capsys.readouterr().out.strip() == f"nbce {nbce.__version__}"


def test_json_carries_the_inputs(tmp_path, capsys, rng):
    logits, targets = save(tmp_path, logits=rng.standard_normal((50, 6)).astype(np.float16),
                           targets=rng.integers(0, 6, 50))
    code, out, _ = run(capsys, "score", logits, targets, "--json", "--top-k", "1,2", "--calibration-bins", "7",
                       "--device", "cpu")
    assert code == 0
    assert json.loads(out)["inputs"] == {
        "logits": {"file": logits, "shape": [50, 6], "dtype": "float16"},
        "targets": {"file": targets, "shape": [50], "dtype": "int64"},
        "axis": -1, "ignore_index": -100, "top_k": [1, 2], "calibration_bins": 7, "shift": False,
        "device": "cpu", "nbce_version": nbce.__version__}


def test_score_help_lists_the_metrics_with_an_example(capsys):
    with pytest.raises(SystemExit):
        cli.main(["score", "--help"])
    out = capsys.readouterr().out
    for metric in ("loss (nats)", "perplexity", "bits per token", "top-k accuracy", "mean entropy", "ECE",
                   "standard error"):
        assert metric in out
    assert "examples:" in out and "nbce score logits.npy targets.npy" in out


@pytest.mark.parametrize("command", ["score", "demo", "bench"])
def test_every_option_has_a_help_line(command):
    subparsers = next(a for a in cli._parser()._actions if a.dest == "command")
    for action in subparsers.choices[command]._actions:
        assert action.help, f"nbce {command} {action.option_strings or action.dest} has no help"
