"""The ``nbce`` command line: score, demo, bench, and its handling of bad input."""

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

import nbce
from nbce import _files, cli
from nbce._files import open_array
from conftest import save_evaluation_set


@pytest.fixture
def files(tmp_path, rng):
    return save_evaluation_set(tmp_path, rng, (300, 20), "float16", 10)


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
    assert data.pop("inputs")["logits"]["shape"] == [300, 20]
    assert data == json.loads(json.dumps(nbce.evaluate(x, t).to_dict()))


@pytest.mark.parametrize("option", ["--per-token", "--per-sequence"])
@pytest.mark.parametrize("which", ["logits.npy", "targets.npy"])
def test_an_output_over_an_input_is_refused_before_anything_is_written(files, capsys, option, which):
    folder, _, t = files
    before = (folder / which).read_bytes()
    code, out, err = run(capsys, "score", folder / "logits.npy", folder / "targets.npy", option, folder / which)
    assert code == 2 and out == "" and "that is an input file" in err and err.count("\n") == 1
    assert (folder / which).read_bytes() == before


def test_outputs_go_to_the_names_given(files, tmp_path, capsys):
    # A bare name once became NAME.npy (np.save's suffix): "--per-sequence targets" replaced targets.npy.
    folder, _, _ = files
    before = (folder / "targets.npy").read_bytes()
    code, _, err = run(capsys, "score", folder / "logits.npy", folder / "targets.npy",
                       "--per-sequence", folder / "targets", "--per-token", tmp_path / "losses")
    assert code == 0, err
    assert (folder / "targets.npy").read_bytes() == before
    assert np.load(folder / "targets").dtype.names == ("loss", "perplexity", "tokens")
    assert np.load(tmp_path / "losses").shape == (300,)
    assert not [p for p in [*folder.iterdir(), *tmp_path.iterdir()] if p.name.endswith(".partial")]


def test_one_name_for_both_outputs_is_refused(files, tmp_path, capsys):
    folder, _, _ = files
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    code, out, err = run(capsys, "score", folder / "logits.npy", folder / "targets.npy",
                         "--per-token", outputs / "same.npy", "--per-sequence", outputs / "same.npy")
    assert code == 2 and out == "" and "give each its own file" in err and err.count("\n") == 1
    assert list(outputs.iterdir()) == []


@pytest.mark.parametrize("option", ["--per-token", "--per-sequence"])
def test_a_refused_run_leaves_its_outputs_as_they_were(files, tmp_path, capsys, option):
    folder, _, _ = files
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    np.save(tmp_path / "bad_targets.npy", np.full(300, 99, np.int64))
    (outputs / "old.npy").write_bytes(b"earlier results")
    for output in (outputs / "old.npy", outputs / "new.npy"):
        code, _, err = run(capsys, "score", folder / "logits.npy", tmp_path / "bad_targets.npy", option, output)
        assert code == 2 and "is not a class index" in err and err.count("\n") == 1
    assert (outputs / "old.npy").read_bytes() == b"earlier results"
    assert [p.name for p in outputs.iterdir()] == ["old.npy"]


@pytest.mark.parametrize("option", ["--per-token", "--per-sequence"])
def test_an_output_that_cannot_be_written_is_refused_before_scoring(files, tmp_path, capsys, option, monkeypatch):
    folder, _, _ = files
    scored = []
    monkeypatch.setattr(nbce, "evaluate", lambda *args, **kwargs: scored.append(args))
    os.mkfifo(tmp_path / "fifo")
    os.symlink(tmp_path / "loop_a", tmp_path / "loop_b")
    os.symlink(tmp_path / "loop_b", tmp_path / "loop_a")
    logits = str(folder / "logits.npy")
    for output, words in [(tmp_path / "missing" / "out.npy", "no folder"), (tmp_path, "not a file name"),
                          ("", "not a file name"), (f"{tmp_path}/new/", "not a file name"),
                          (f"{tmp_path}/missing/..", "not a file name"), (f"{tmp_path}/missing/../out.npy", "no folder"),
                          (f"{logits}/.", "not a file name"), (f"{logits}/../logits.npy", "no folder"),
                          (tmp_path / "loop_a", "Too many levels of symbolic links"),
                          ("/dev/null", "not a regular file"), (tmp_path / "fifo", "not a regular file")]:
        code, out, err = run(capsys, "score", folder / "logits.npy", folder / "targets.npy", option, output)
        assert code == 2 and out == "" and words in err and err.count("\n") == 1, (output, err)
    assert scored == []


def test_an_output_through_a_symbolic_link_replaces_its_target(files, tmp_path, capsys):
    folder, _, _ = files
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "real.npy").write_bytes(b"earlier results")
    os.symlink(outputs / "real.npy", outputs / "link.npy")
    os.symlink(outputs / "created.npy", outputs / "dangling.npy")
    long_name = "a" * 250  # legal; a temporary name built from it would not be
    code, _, err = run(capsys, "score", folder / "logits.npy", folder / "targets.npy",
                       "--per-token", outputs / "link.npy", "--per-sequence", outputs / "dangling.npy")
    assert code == 0, err
    assert os.path.islink(outputs / "link.npy") and np.load(outputs / "real.npy").shape == (300,)
    assert os.path.islink(outputs / "dangling.npy") and np.load(outputs / "created.npy").dtype.names
    code, _, err = run(capsys, "score", folder / "logits.npy", folder / "targets.npy", "--per-token", outputs / long_name)
    assert code == 0, err
    assert np.load(outputs / long_name).shape == (300,)


def test_outputs_are_put_in_place_only_after_the_inputs_checksums_pass(files, tmp_path, capsys):
    folder, x, t = files
    np.savez(tmp_path / "stored.npz", logits=x, targets=t)
    stored = bytearray((tmp_path / "stored.npz").read_bytes())
    stored[stored.index(b"PK\x01\x02") - 8] ^= 0x01  # a byte of the last member's data: scored, then its CRC fails
    (tmp_path / "flipped.npz").write_bytes(bytes(stored))
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "old.npy").write_bytes(b"earlier results")
    code, out, err = run(capsys, "score", f"{tmp_path / 'stored.npz'}:logits", f"{tmp_path / 'flipped.npz'}:targets",
                         "--per-token", outputs / "old.npy", "--per-sequence", outputs / "new.npy")
    assert code == 2 and "CRC-32" in err, err
    assert [p.name for p in outputs.iterdir()] == ["old.npy"]
    assert (outputs / "old.npy").read_bytes() == b"earlier results"


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
        ((logits, tmp_path / "short_targets.npy"), "(299 int64) does not fit"),
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


@pytest.mark.parametrize("sent, status, words", [(signal.SIGINT, 130, "interrupted"),
                                                  (signal.SIGTERM, 128 + signal.SIGTERM, "terminated")])
def test_a_signal_while_scoring_is_one_line_and_leaves_the_outputs_as_they_were(tmp_path, sent, status, words):
    # 300,000 one-row chunks: many seconds of scoring, so the signal lands mid-run
    np.save(tmp_path / "x.npy", np.zeros((300_000, 4), np.float16))
    np.save(tmp_path / "t.npy", np.zeros(300_000, np.int64))
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "old.npy").write_bytes(b"earlier results")
    child = subprocess.Popen([sys.executable, "-m", "nbce", "score", str(tmp_path / "x.npy"), str(tmp_path / "t.npy"),
                              "--chunk-rows", "1", "--no-progress", "--per-token", str(outputs / "old.npy"),
                              "--per-sequence", str(outputs / "new.npy")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_default)
    time.sleep(3.0)
    child.send_signal(sent)
    out, err = child.communicate(timeout=60)
    assert child.returncode == status, err
    assert err == f"nbce score: {words}\n" and out == ""
    assert [p.name for p in outputs.iterdir()] == ["old.npy"]  # no temporary file left
    assert (outputs / "old.npy").read_bytes() == b"earlier results"


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="needs SIGHUP")
def test_an_ignored_hangup_stays_ignored_and_handlers_are_put_back(files, capsys, monkeypatch):
    folder = files[0]
    real, seen = nbce.evaluate, []

    def watched(*args, **kwargs):
        seen.append((signal.getsignal(signal.SIGHUP), signal.getsignal(signal.SIGTERM)))
        return real(*args, **kwargs)

    monkeypatch.setattr(nbce, "evaluate", watched)
    hangup, terminate = signal.signal(signal.SIGHUP, signal.SIG_IGN), signal.getsignal(signal.SIGTERM)
    try:
        code, _, err = run(capsys, "score", folder / "logits.npy", folder / "targets.npy")
        assert code == 0, err
        assert seen and all(h is signal.SIG_IGN and t is cli._terminate for h, t in seen)  # nohup keeps working
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is terminate
    finally:
        signal.signal(signal.SIGHUP, hangup)


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


@pytest.mark.parametrize("rows, classes, message", [(1, 10**13, "bytes in"), (10**9, 10**6, "bytes in")])
def test_a_demo_too_large_for_the_disk_is_refused(capsys, rows, classes, message):
    code, out, err = run(capsys, "demo", "--rows", rows, "--classes", classes, "--device", "cpu")
    assert code == 2 and out == "" and message in err and err.count("\n") == 1


def test_sample_check_treats_nan_on_both_sides_as_agreement():
    assert cli._difference(float("nan"), float("nan")) == 0.0
    assert math.isnan(cli._difference(float("nan"), 1.0)) and cli._difference(1.0, 0.25) == 0.75


def test_bench_prints_a_table(capsys):
    code, out, _ = run(capsys, "bench", "--rows", "64", "--classes", "100")
    assert code == 0 and "nbce.evaluate (all metrics)" in out and "numpy" in out


def _score_in_a_process(*argv, timeout=120, **kwargs):
    """``nbce score ARGV`` in a fresh process: (status, stdout, stderr)."""
    done = subprocess.run([sys.executable, "-m", "nbce", "score", *map(str, argv), "--no-progress"],
                          capture_output=True, text=True, timeout=timeout, **kwargs)
    return done.returncode, done.stdout, done.stderr


def test_a_reader_gone_before_the_output_is_no_traceback(files):
    folder, _, _ = files
    with subprocess.Popen([sys.executable, "-m", "nbce", "score", str(folder / "logits.npy"),
                           str(folder / "targets.npy"), "--json", "--no-progress"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as done:
        done.stdout.close()  # long before the interpreter has started: the output meets a closed pipe
        err = done.stderr.read()
        assert done.wait(timeout=120) == 1 and "Traceback" not in err, err


def _assert_one_line_status_2(status, out, err, message):
    assert status == 2, (status, err)
    assert message in err and err.count("\n") == 1 and err.startswith("nbce score: error: "), err
    assert out == ""


def _npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _patch_sizes(path, uncompressed_size):
    """Overwrite a one-member zip's uncompressed size (local header and central directory)."""
    data = bytearray(path.read_bytes())
    local, central = data.index(b"PK\x03\x04"), data.index(b"PK\x01\x02")
    data[local + 22:local + 26] = data[central + 24:central + 28] = uncompressed_size.to_bytes(4, "little")
    path.write_bytes(bytes(data))


def _damaged_archives(tmp_path, x):
    """(file argument, expected words) for .npz archives that cannot be read."""
    cases = []
    np.savez(tmp_path / "stored.npz", x=x)
    np.savez_compressed(tmp_path / "packed.npz", x=x)
    stored, packed = (tmp_path / "stored.npz").read_bytes(), (tmp_path / "packed.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(stored[:len(stored) // 2])
    cases.append(("truncated.npz:x", "not a readable .npz file"))
    corrupt = bytearray(packed)
    corrupt[len(corrupt) // 2:len(corrupt) // 2 + 10] = b"\xff" * 10  # inside the compressed data
    (tmp_path / "corrupt.npz").write_bytes(bytes(corrupt))
    cases.append(("corrupt.npz:x", "a damaged .npz member"))
    bad_crc = bytearray(packed)
    central = bad_crc.index(b"PK\x01\x02")
    bad_crc[central + 16] ^= 0xFF  # the CRC-32 that the central directory records
    (tmp_path / "crc.npz").write_bytes(bytes(bad_crc))
    cases.append(("crc.npz:x", "CRC"))
    flipped = bytearray(stored)  # a stored member is mapped, not inflated: its CRC is summed beside the scoring
    flipped[stored.index(b"PK\x01\x02") - 8] ^= 0x01  # a logit's low bit: still a finite number, scored fine
    (tmp_path / "flipped.npz").write_bytes(bytes(flipped))
    cases.append(("flipped.npz:x", "a damaged .npz member (CRC-32"))
    for name, compression in (("foreign.npz", zipfile.ZIP_STORED), ("foreign_packed.npz", zipfile.ZIP_DEFLATED)):
        with zipfile.ZipFile(tmp_path / name, "w", compression) as archive:
            archive.writestr("x.npy", b"not a NumPy array at all")
        cases.append((f"{name}:x", "not a readable .npy array"))
    with zipfile.ZipFile(tmp_path / "bzip2.npz", "w", zipfile.ZIP_BZIP2) as archive:
        archive.writestr("x.npy", _npy_bytes(x))
    cases.append(("bzip2.npz:x", "uses zip compression method 12"))
    np.savez_compressed(tmp_path / "objects.npz", x=np.array([1, "a"], dtype=object))
    cases.append(("objects.npz:x", "holds Python objects"))
    with zipfile.ZipFile(tmp_path / "short.npz", "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("x.npy", _npy_bytes(x)[:-40])
    cases.append(("short.npz:x", "bytes follow the header"))
    with zipfile.ZipFile(tmp_path / "short_packed.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", _npy_bytes(x)[:-40])
    cases.append(("short_packed.npz:x", "bytes follow the header"))
    return cases


def test_a_damaged_stored_target_member_is_named_rather_than_its_symptom(files, tmp_path):
    """Damaged target bytes make a target out of range; the error names the damage."""
    folder, x, t = files
    np.savez(tmp_path / "targets.npz", t=t)
    data = bytearray((tmp_path / "targets.npz").read_bytes())
    data[data.index(b"PK\x01\x02") - 1] = 0x7F  # the last target's high byte: far out of range
    (tmp_path / "targets.npz").write_bytes(bytes(data))
    _assert_one_line_status_2(*_score_in_a_process(folder / "logits.npy", f"{tmp_path / 'targets.npz'}:t"),
                              "a damaged .npz member (CRC-32")


def test_damaged_archives_are_one_line_and_status_2(files, tmp_path):
    folder, x, _ = files
    for argument, message in _damaged_archives(tmp_path, x):
        _assert_one_line_status_2(*_score_in_a_process(tmp_path / argument, folder / "targets.npy"), message)


def _absurd_header(path, shape):
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}".ljust(117) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + bytes(64))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs and symlinks")
def test_odd_paths_are_one_line_and_status_2(files, tmp_path):
    folder = files[0]
    targets = folder / "targets.npy"
    os.mkfifo(tmp_path / "fifo.npy")  # opening it for reading would wait for a writer forever
    os.symlink(tmp_path / "loop.npy", tmp_path / "loop.npy")
    _absurd_header(tmp_path / "absurd.npy", (2**62, 2**62))
    _absurd_header(tmp_path / "negative.npy", (-3, 5))
    _absurd_header(tmp_path / "empty_but_huge.npy", (0, 10**30))  # no bytes, but no array NumPy can make
    _absurd_header(tmp_path / "empty_but_wide.npy", (2**40, 2**40, 0))  # lengths that fit, a span that does not
    for argument, message in [(tmp_path / "fifo.npy", "not a regular file"),
                              (tmp_path / "loop.npy", "cannot open (Too many levels of symbolic links)"),
                              (f"{folder / 'logits.npy'}:logits", "a .npy file holds one array; drop ':logits'"),
                              (tmp_path / "absurd.npy", "the shape (4611686018427387904, 4611686018427387904), beyond NumPy"),
                              (tmp_path / "negative.npy", "its header declares the shape (-3, 5), with a negative"),
                              (tmp_path / "empty_but_huge.npy", "beyond NumPy's limits"),
                              (tmp_path / "empty_but_wide.npy", "beyond NumPy's limits"),
                              (folder, "is a directory")]:
        _assert_one_line_status_2(*_score_in_a_process(argument, targets, timeout=60), message)


def test_options_beyond_their_bounds_are_one_line_and_status_2(files):
    folder = files[0]
    logits, targets = folder / "logits.npy", folder / "targets.npy"
    for option, value, message in [("--top-k", 2**63, "top_k must be positive integers below 2**63"),
                                   ("--top-k", f"1,{2**64}", "top_k"),
                                   ("--calibration-bins", 10**7, "calibration_bins must be a positive integer up to"),
                                   ("--ignore-index", 2**64 + 5, "ignore_index must fit in int64"),
                                   ("--ignore-index", -2**70, "ignore_index must fit in int64")]:
        _assert_one_line_status_2(*_score_in_a_process(logits, targets, option, value), message)


def test_one_row_of_logits_with_a_scalar_target(tmp_path, capsys):
    np.save(tmp_path / "row.npy", np.array([0.5, 2.0, -1.0], np.float32))
    np.save(tmp_path / "target.npy", np.array(1))
    code, out, err = run(capsys, "score", tmp_path / "row.npy", tmp_path / "target.npy", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["count"] == 1 and data["accuracy"]["1"] == 1.0


def test_a_decompression_bomb_is_refused_before_inflating(files, tmp_path):
    # A member whose header and zip entry both say 3 GB, though 1 MB of zeros
    # is all it holds: refused from the sizes alone, nothing inflated.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (3 * 2**30,)})
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", header.getvalue() + bytes(2**20))
    _patch_sizes(tmp_path / "bomb.npz", len(header.getvalue()) + 3 * 2**30)
    status, out, err = _score_in_a_process(tmp_path / "bomb.npz", files[0] / "targets.npy")
    _assert_one_line_status_2(status, out, err, "inflates to 3,221,225,472 bytes, over nbce's limit")


def test_compressed_members_inflate_within_their_size(tmp_path, monkeypatch):
    zeros = np.zeros(2**23, np.uint8)  # 8 MiB of zeros: 8 kB compressed
    np.savez_compressed(tmp_path / "zeros.npz", x=zeros)
    tracemalloc.start()
    try:
        array = open_array(f"{tmp_path / 'zeros.npz'}:x")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(array, zeros) and peak < zeros.nbytes + 4 * _files._INFLATE_STEP
    monkeypatch.setattr(_files, "MAX_INFLATED_BYTES", 2**22)
    with pytest.raises(_files.InputError, match="inflates to 8,388,608 bytes, over nbce's limit of 4,194,304"):
        open_array(f"{tmp_path / 'zeros.npz'}:x")


def _wait_until_mapped(child, path):
    maps = Path(f"/proc/{child.pid}/maps")
    while str(path) not in maps.read_text():
        assert child.poll() is None, child.communicate()
        time.sleep(0.05)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="watches /proc/PID/maps")
@pytest.mark.parametrize("victim", ["logits.npy", "targets.npy", "stored.npz"])
def test_a_file_truncated_while_scored_is_one_line_and_status_2(tmp_path, victim):
    # 300,000 one-row chunks: many seconds of scoring, so the truncation lands mid-run
    x, t = np.zeros((300_000, 4), np.float16), np.zeros(300_000, np.int64)
    np.save(tmp_path / "logits.npy", x)
    np.save(tmp_path / "targets.npy", t)
    np.savez(tmp_path / "stored.npz", x=x)
    logits = f"{tmp_path / 'stored.npz'}:x" if victim == "stored.npz" else tmp_path / "logits.npy"
    child = subprocess.Popen([sys.executable, "-m", "nbce", "score", str(logits), str(tmp_path / "targets.npy"),
                              "--chunk-rows", "1", "--no-progress"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    _wait_until_mapped(child, tmp_path / victim)
    os.truncate(tmp_path / victim, 4096)  # before the map's end, wherever the scoring has got to
    out, err = child.communicate(timeout=120)
    _assert_one_line_status_2(child.returncode, out, err, "before the array's end (truncated while being read?)")


def test_ctrl_c_during_start_up_exits_130_without_a_traceback(files, tmp_path):
    # Ctrl-C while Numba loads: a stand-in numba module raises it as it is imported
    (tmp_path / "stand_in").mkdir()
    (tmp_path / "stand_in" / "numba.py").write_text("raise KeyboardInterrupt\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "stand_in"), os.environ.get("PYTHONPATH", ""),
                                                         os.path.dirname(os.path.dirname(nbce.__file__))])}
    folder = files[0]
    status, out, err = _score_in_a_process(folder / "logits.npy", folder / "targets.npy", env=env)
    assert status == 130 and err == "nbce score: interrupted\n" and out == ""


def test_the_package_loads_numba_on_first_use_and_each_module_imports_first():
    # ``import nbce`` stays light, so that the command handles Ctrl-C while Numba loads
    modules = sorted(p.stem for p in Path(nbce.__file__).parent.glob("*.py") if p.stem not in ("__init__", "__main__"))
    code = ("import sys, nbce, nbce.cli; assert 'numba' not in sys.modules; "
            "assert nbce.evaluate is nbce.evaluation.evaluate and 'numba' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    for module in modules:  # no import circle shows, whichever module comes first
        subprocess.run([sys.executable, "-c", f"import nbce.{module}"], check=True, capture_output=True)
