"""safetensors files: FILE.safetensors:KEY read from its header, memory-mapped and streamed like .npy."""

import json

import numpy as np
import pytest

import nbce
from nbce import cli
from nbce._files import InputError, open_array
from conftest import make_logits

safetensors_numpy = pytest.importorskip("safetensors.numpy", reason="the safetensors tests write files with it")


def write_by_hand(path, tensors, dtype_names):
    """A safetensors file written from the format's description (BF16 included, no library needed)."""
    header, offset, blobs = {"__metadata__": {"format": "np"}}, 0, []
    for name, array in tensors.items():
        data = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": dtype_names[name], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"".join(blobs))


@pytest.fixture
def data(rng):
    x = make_logits(rng, (120, 2, 19), "float16")
    t = rng.integers(0, 19, (120, 2))
    t[::9] = -100
    return x, t


def test_library_written_file(tmp_path, data):
    x, t = data
    path = tmp_path / "eval.safetensors"
    safetensors_numpy.save_file({"logits": x, "targets": t, "other": np.zeros(3, np.float32)}, str(path))
    logits, targets = open_array(f"{path}:logits"), open_array(f"{path}:targets")
    assert isinstance(logits, np.memmap) and logits.dtype == np.float16 and logits.shape == x.shape
    np.testing.assert_array_equal(logits, x)
    np.testing.assert_array_equal(targets, t)
    assert nbce.evaluate(logits, targets, chunk_rows=16, device="cpu") == nbce.evaluate(x, t, device="cpu")


def test_bfloat16_tensors(tmp_path, data):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x, t = data
    x = x.astype(ml_dtypes.bfloat16)
    path = tmp_path / "bf16.safetensors"
    write_by_hand(path, {"logits": x, "targets": t}, {"logits": "BF16", "targets": "I64"})
    logits = open_array(f"{path}:logits")
    assert logits.dtype == ml_dtypes.bfloat16 and isinstance(logits, np.memmap)
    assert nbce.evaluate(logits, open_array(f"{path}:targets"), device="cpu") == nbce.evaluate(x, t, device="cpu")


def test_bfloat16_written_by_torch(tmp_path, data):
    torch = pytest.importorskip("torch")
    pytest.importorskip("ml_dtypes")
    from safetensors.torch import save_file

    x, t = data
    tensor = torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16)
    path = tmp_path / "model.safetensors"
    save_file({"logits": tensor, "labels": torch.from_numpy(t)}, str(path))
    ours = open_array(f"{path}:logits")
    np.testing.assert_array_equal(ours.astype(np.float32), tensor.float().numpy())


def test_cli_scores_safetensors(tmp_path, data, capsys):
    x, t = data
    safetensors_numpy.save_file({"logits": x}, str(tmp_path / "logits.safetensors"))
    safetensors_numpy.save_file({"targets": t}, str(tmp_path / "targets.safetensors"))
    code = cli.main(["score", f"{tmp_path / 'logits.safetensors'}:logits", str(tmp_path / "targets.safetensors"),
                     "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"{nbce.evaluate(x, t).loss:.6f}" in out


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:4], "no header length"),
    (lambda b: (10**12).to_bytes(8, "little") + b[8:], "no header length"),
    (lambda b: b[:8] + b"{not json" + b[17:], "not a readable safetensors file"),
    (lambda b: b[:-10], "truncated or damaged"),
])
def test_damaged_files_are_refused(tmp_path, data, damage, message):
    path = tmp_path / "x.safetensors"
    safetensors_numpy.save_file({"logits": data[0]}, str(path))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(InputError, match=message):
        open_array(str(path))


def test_an_empty_tensor_of_an_impossible_shape_is_refused(tmp_path):
    path = tmp_path / "x.safetensors"
    text = json.dumps({"logits": {"dtype": "F32", "shape": [0, 10**30], "data_offsets": [0, 0]}}).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text)
    with pytest.raises(InputError, match="beyond NumPy's limits"):
        open_array(f"{path}:logits")


def test_keys_are_named(tmp_path, data):
    path = tmp_path / "x.safetensors"
    safetensors_numpy.save_file({"a": data[0], "b": data[1]}, str(path))
    with pytest.raises(InputError, match=r"holds 2 tensors \(a, b\): name one"):
        open_array(str(path))
    with pytest.raises(InputError, match="has no tensor 'c'; it holds: a, b"):
        open_array(f"{path}:c")


def test_unknown_dtype(tmp_path):
    path = tmp_path / "x.safetensors"
    write_by_hand(path, {"a": np.zeros(2, np.uint8)}, {"a": "F8_E4M3"})
    with pytest.raises(InputError, match="dtype F8_E4M3, which nbce does not read"):
        open_array(str(path))
