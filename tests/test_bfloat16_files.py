"""bfloat16 logits saved by np.save (dtype |V2) or as 16-bit words: dtype="bfloat16" and --dtype bfloat16."""

import numpy as np
import pytest

import nbce
from nbce import cli
from conftest import save_evaluation_set

ml_dtypes = pytest.importorskip("ml_dtypes")


@pytest.fixture
def saved(tmp_path, rng):
    return save_evaluation_set(tmp_path, rng, (200, 33), "bfloat16", 7)


def test_np_save_of_bfloat16_stores_void(saved):
    folder, _, _ = saved
    assert np.load(folder / "logits.npy", mmap_mode="r").dtype == np.dtype("V2")


@pytest.mark.parametrize("words", ["V2", "uint16", "int16"])
def test_evaluate_reads_two_byte_words_as_bfloat16(saved, words):
    folder, x, t = saved
    raw = np.load(folder / "logits.npy", mmap_mode="r").view(words)
    result = nbce.evaluate(raw, t, dtype="bfloat16", chunk_rows=64, device="cpu")
    assert result == nbce.evaluate(x, t, device="cpu")


@pytest.mark.parametrize("words", [">u2", ">i2"])
def test_big_endian_words_are_read_in_their_order(saved, words):
    folder, x, t = saved
    raw = np.load(folder / "logits.npy").view(words[1:]).astype(words)  # the same values, bytes swapped
    assert nbce.evaluate(raw, t, dtype="bfloat16", device="cpu") == nbce.evaluate(x, t, device="cpu")


def test_the_view_is_zero_copy_and_stays_a_memory_map(saved):
    from nbce._arrays import reinterpret

    folder, _, _ = saved
    raw = np.load(folder / "logits.npy", mmap_mode="r")
    view = reinterpret(raw, "bfloat16")
    assert view.dtype == ml_dtypes.bfloat16 and np.shares_memory(view, raw) and isinstance(view, np.memmap)


def test_without_dtype_the_error_suggests_it(saved):
    folder, _, t = saved
    raw = np.load(folder / "logits.npy", mmap_mode="r")
    with pytest.raises(TypeError, match=r"dtype \|V2.*dtype='bfloat16'.*--dtype bfloat16"):
        nbce.evaluate(raw, t)


@pytest.mark.parametrize("dtype", ["float32", "float16", "uint8", "int32"])
def test_other_item_sizes_are_refused(dtype):
    with pytest.raises(TypeError, match=f"raw 2-byte values.*dtype {dtype}"):
        nbce.evaluate(np.zeros((3, 4), dtype), np.zeros(3, np.int64), dtype="bfloat16")


def test_only_bfloat16_is_a_dtype():
    with pytest.raises(ValueError, match="dtype must be None or 'bfloat16'"):
        nbce.evaluate(np.zeros((3, 4), np.uint16), np.zeros(3, np.int64), dtype="float16")


def test_cli_dtype_bfloat16(saved, capsys):
    folder, x, t = saved
    code = cli.main(["score", str(folder / "logits.npy"), str(folder / "targets.npy"), "--dtype", "bfloat16"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"{nbce.evaluate(x, t).loss:.6f}" in out and "bfloat16" in out


def test_cli_without_dtype_suggests_it(saved, capsys):
    folder, _, _ = saved
    code = cli.main(["score", str(folder / "logits.npy"), str(folder / "targets.npy")])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "--dtype bfloat16" in err


def test_cli_dtype_refuses_float32_files(tmp_path, capsys):
    np.save(tmp_path / "logits.npy", np.zeros((3, 4), np.float32))
    np.save(tmp_path / "targets.npy", np.zeros(3, np.int64))
    code = cli.main(["score", str(tmp_path / "logits.npy"), str(tmp_path / "targets.npy"), "--dtype", "bfloat16"])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "float32 (4 bytes an item)" in err
