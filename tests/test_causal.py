"""Causal language models: shift=True, per-sequence results and per-token losses, against float64 NumPy."""

import json
import subprocess
import sys

import numpy as np
import pytest

import nbce
import reference as ref
from conftest import TOLERANCES, make_logits
from test_evaluation import assert_matches

PAD = -100


def causal_batch(rng, batch=5, seq=9, vocab=37, dtype="float32"):
    """(batch, seq, vocab) logits and (batch, seq) tokens, each sequence right-padded with PAD."""
    logits = make_logits(rng, (batch, seq, vocab), dtype)
    tokens = rng.integers(0, vocab, (batch, seq))
    for b, length in enumerate(rng.integers(2, seq + 1, batch)):
        tokens[b, length:] = PAD
    tokens[-1, 1:] = PAD  # a sequence with no token scored
    return logits, tokens


def reference_per_token(logits, tokens, weight=None):
    """Losses of logits[:, :-1] against tokens[:, 1:] (0 at padding) and per-sequence (loss, tokens)."""
    x, t = ref.f64(logits[:, :-1]), tokens[:, 1:]
    lp = ref.log_softmax(x)
    keep = t != PAD
    loss = np.where(keep, -np.take_along_axis(lp, np.where(keep, t, 0)[..., None], -1)[..., 0], 0.0)
    w = np.ones(t.shape) if weight is None else ref.f64(weight[:, 1:])
    with np.errstate(invalid="ignore", divide="ignore"):
        per_sequence = np.sum(np.where(keep, w * loss, 0), axis=1) / np.sum(np.where(keep, w, 0), axis=1)
    return loss, per_sequence, keep.sum(axis=1)


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
@pytest.mark.parametrize("chunk_rows", [None, 1, 2])
def test_shift_matches_reference(rng, dtype, chunk_rows):
    logits, tokens = causal_batch(rng, dtype=dtype)
    result = nbce.evaluate(logits, tokens, shift=True, chunk_rows=chunk_rows, per_sequence=True, device="cpu")
    assert_matches(result, ref.evaluation(logits[:, :-1], tokens[:, 1:]), dtype)
    assert result.count + result.ignored == tokens[:, 1:].size
    _, per_sequence, counts = reference_per_token(logits, tokens)
    rtol, atol = TOLERANCES[dtype]
    np.testing.assert_allclose(result.per_sequence["loss"], per_sequence, rtol=rtol, atol=atol)
    np.testing.assert_allclose(result.per_sequence["perplexity"], np.exp(per_sequence), rtol=10 * rtol)
    np.testing.assert_array_equal(result.per_sequence["tokens"], counts)
    assert np.isnan(result.per_sequence["loss"][-1])  # no token scored: NaN, as a mean over nothing


def test_without_shift_the_figures_differ(rng):
    """The reason for shift=True: scoring position i against token i is a different (wrong) number."""
    logits, tokens = causal_batch(rng)
    shifted = nbce.evaluate(logits, tokens, shift=True, device="cpu")
    unshifted = nbce.evaluate(logits, tokens, device="cpu")
    assert shifted.loss != unshifted.loss
    assert shifted.count == np.sum(tokens[:, 1:] != PAD)


def test_shift_reads_views_of_a_memory_map(rng, tmp_path):
    logits, tokens = causal_batch(rng, batch=6, seq=7, vocab=300)
    np.save(tmp_path / "logits.npy", logits)
    np.save(tmp_path / "tokens.npy", tokens)
    mapped = np.load(tmp_path / "logits.npy", mmap_mode="r")
    mapped_tokens = np.load(tmp_path / "tokens.npy", mmap_mode="r")
    per_token = np.lib.format.open_memmap(tmp_path / "per_token.npy", "w+", np.float32, (6, 6))
    result = nbce.evaluate(mapped, mapped_tokens, shift=True, chunk_rows=4, per_token=per_token, device="cpu")
    per_token.flush()
    del per_token
    expected, _, _ = reference_per_token(logits, tokens)
    np.testing.assert_allclose(np.load(tmp_path / "per_token.npy"), expected, rtol=1e-5, atol=1e-5)
    assert result == nbce.evaluate(logits, tokens, shift=True, device="cpu")


def test_weights_shift_with_the_tokens(rng):
    logits, tokens = causal_batch(rng)
    weight = rng.uniform(0.1, 2.0, tokens.shape)
    result = nbce.evaluate(logits, tokens, weight=weight, shift=True, per_sequence=True, device="cpu")
    assert_matches(result, ref.evaluation(logits[:, :-1], tokens[:, 1:], weight=weight[:, 1:]), "float32")
    _, per_sequence, _ = reference_per_token(logits, tokens, weight)
    np.testing.assert_allclose(result.per_sequence["loss"], per_sequence, rtol=1e-5, atol=1e-5)


def test_evaluator_update_and_iterables_shift_each_chunk(rng):
    logits, tokens = causal_batch(rng)
    whole = nbce.evaluate(logits, tokens, shift=True, device="cpu")
    evaluator = nbce.Evaluator()
    for b in range(0, 5, 2):
        evaluator.update(logits[b:b + 2], tokens[b:b + 2], shift=True)
    assert evaluator.compute() == whole
    pairs = [(logits[b:b + 3], tokens[b:b + 3]) for b in (0, 3)]
    assert nbce.evaluate(pairs, shift=True, device="cpu") == whole


def test_shift_names_the_token_position(rng):
    logits, tokens = causal_batch(rng)
    tokens[3, 4] = 10_000
    with pytest.raises(ValueError, match=r"target\[3, 4\] = 10000"):
        nbce.evaluate(logits, tokens, shift=True, chunk_rows=2, device="cpu")
    with pytest.raises(ValueError, match=r"target\[3, 4\] = 10000"):
        nbce.Evaluator().update(logits, tokens, shift=True)


@pytest.mark.parametrize("logits_shape, tokens_shape, axis, message", [
    ((9, 37), (9,), -1, r"\(batch, seq, vocab\).*add a batch axis"),
    ((5, 9, 37), (5, 8), -1, r"target has shape \(5, 8\), expected \(5, 9\)"),
    ((5, 9, 37), (5, 9), 1, r"class axis last"),
])
def test_shift_refuses_other_shapes(logits_shape, tokens_shape, axis, message):
    with pytest.raises(ValueError, match=message):
        nbce.evaluate(np.zeros(logits_shape, np.float32), np.zeros(tokens_shape, np.int64), shift=True, axis=axis)


def test_per_token_output_is_checked(rng):
    logits, tokens = causal_batch(rng)
    with pytest.raises(ValueError, match=r"per_token has shape \(5, 9\), expected \(5, 8\)"):
        nbce.evaluate(logits, tokens, shift=True, per_token=np.empty((5, 9)))
    with pytest.raises(TypeError, match="float32 or float64"):
        nbce.evaluate(logits, tokens, shift=True, per_token=np.empty((5, 8), np.int64))
    with pytest.raises(TypeError, match="as arrays"):
        nbce.evaluate([(logits, tokens)], per_sequence=True)


def test_cli_shift_per_sequence_and_per_token(rng, tmp_path, capsys):
    from nbce import cli

    logits, tokens = causal_batch(rng, dtype="float16")
    np.save(tmp_path / "logits.npy", logits)
    np.save(tmp_path / "tokens.npy", tokens)
    code = cli.main([
        "score", str(tmp_path / "logits.npy"), str(tmp_path / "tokens.npy"), "--shift", "--chunk-rows", "2",
        "--per-sequence", str(tmp_path / "seq.npy"), "--per-token", str(tmp_path / "tok.npy"), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 0, err
    expected = nbce.evaluate(logits, tokens, shift=True, per_sequence=True, device="cpu")
    assert f"{expected.loss:.6f}" in out
    saved = np.load(tmp_path / "seq.npy")
    assert saved.dtype == expected.per_sequence.dtype
    for name in saved.dtype.names:
        np.testing.assert_array_equal(saved[name], expected.per_sequence[name])
    per_token = np.load(tmp_path / "tok.npy")
    assert per_token.shape == (5, 8) and per_token.dtype == np.float32
    np.testing.assert_allclose(per_token, reference_per_token(logits, tokens)[0], rtol=1e-5, atol=1e-5)


def test_cli_shift_refuses_2d_logits(rng, tmp_path, capsys):
    from nbce import cli

    np.save(tmp_path / "logits.npy", np.zeros((9, 4), np.float32))
    np.save(tmp_path / "tokens.npy", np.zeros(9, np.int64))
    code = cli.main(["score", str(tmp_path / "logits.npy"), str(tmp_path / "tokens.npy"), "--shift"])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "(batch, seq, vocab)" in err


def test_next_token_views_do_not_copy(rng):
    from nbce.evaluation import next_token_views

    logits, tokens = causal_batch(rng)
    weight = np.ones(tokens.shape)
    x, t, w = next_token_views(logits, tokens, weight, -1)
    assert np.shares_memory(x, logits) and np.shares_memory(t, tokens) and np.shares_memory(w, weight)
    assert x.shape == (5, 8, 37) and t.shape == w.shape == (5, 8)


def test_shift_through_the_gpu_pipeline_and_on_device_arrays(rng, monkeypatch):
    cuda_backend = pytest.importorskip("nbce.cuda")
    from numba import cuda

    monkeypatch.setattr(cuda_backend, "THREADS", 8)
    monkeypatch.setattr(cuda_backend, "MIN_ELEMENTS_PER_THREAD", 4)
    logits, tokens = causal_batch(rng, batch=5, seq=6, vocab=11)
    cpu = nbce.evaluate(logits, tokens, shift=True, per_sequence=True, device="cpu")
    per_token = np.empty((5, 5))
    gpu = nbce.evaluate(logits, tokens, shift=True, per_sequence=True, per_token=per_token, chunk_rows=2,
                        device="cuda")
    assert (gpu.count, gpu.ignored, gpu.accuracy) == (cpu.count, cpu.ignored, cpu.accuracy)
    np.testing.assert_allclose(gpu.loss, cpu.loss, rtol=1e-5)
    np.testing.assert_allclose(gpu.per_sequence["loss"], cpu.per_sequence["loss"], rtol=1e-5)
    np.testing.assert_allclose(per_token, reference_per_token(logits, tokens)[0], rtol=1e-5, atol=1e-5)
    on_device = nbce.Evaluator().update(cuda.to_device(logits), cuda.to_device(tokens), shift=True).compute()
    assert on_device.count == cpu.count
    np.testing.assert_allclose(on_device.loss, cpu.loss, rtol=1e-5)


PER_TOKEN_SCRIPT = """
import json, sys
import json
import subprocess
import sys

import numpy as np
import nbce

def peak_mb():  # the high-water mark of the resident set, mapped file pages included
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(status["VmHWM"].split()[0]) / 1024

folder = sys.argv[1]
from nbce._tally import PARALLEL_ROWS

seq = PARALLEL_ROWS // 2 + 1  # enough rows for the threaded tally to be compiled (or loaded) too
nbce.evaluate(np.zeros((2, seq, 8), np.float16), np.zeros((2, seq), np.int64), shift=True,
              per_token=np.empty((2, seq - 1), np.float32), device="cpu")            # compile first
logits = np.load(folder + "/logits.npy", mmap_mode="r")
tokens = np.arange(logits.shape[0] * logits.shape[1]).reshape(logits.shape[:2]) % logits.shape[2]
out = np.lib.format.open_memmap(folder + "/per_token.npy", "w+", np.float32, (logits.shape[0], logits.shape[1] - 1))
with open("/proc/self/clear_refs", "w") as f:  # the high-water mark restarts from the resident set now
    f.write("5")
before = peak_mb()
nbce.evaluate(logits, tokens, shift=True, per_token=out, chunk_rows=64, device="cpu")
after = peak_mb()
out.flush()
print(json.dumps({"out_mb": out.nbytes / 2**20, "growth_mb": after - before}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_per_token_file_is_written_in_bounded_memory(tmp_path):
    batch, seq, vocab = 8192, 1024, 8  # 128 MiB of float16 logits, a 32 MiB per-token file
    logits = np.lib.format.open_memmap(tmp_path / "logits.npy", "w+", np.float16, (batch, seq, vocab))
    for start in range(0, batch, 1024):
        logits[start:start + 1024] = 0.0
    logits.flush()
    del logits
    out = subprocess.run([sys.executable, "-c", PER_TOKEN_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["out_mb"] > 31 and result["growth_mb"] < 12, result
    per_token = np.load(tmp_path / "per_token.npy", mmap_mode="r")
    assert per_token.shape == (batch, seq - 1) and np.all(per_token[::97] == np.float32(np.log(vocab)))


def test_readme_route_from_a_torch_causal_lm(tmp_path, capsys):
    """The README's example: bfloat16 logits of a (tiny) causal LM saved with safetensors or np.save, scored with --shift."""
    torch = pytest.importorskip("torch")
    ml_dtypes = pytest.importorskip("ml_dtypes")
    save_file = pytest.importorskip("safetensors.torch").save_file
    from nbce import cli

    torch.manual_seed(0)
    vocab, batch, seq = 50, 4, 12
    model = torch.nn.Sequential(torch.nn.Embedding(vocab, 16), torch.nn.Linear(16, vocab)).to(torch.bfloat16)
    input_ids = torch.randint(0, vocab, (batch, seq))
    attention_mask = torch.ones(batch, seq, dtype=torch.int64)
    attention_mask[1, 8:] = 0
    with torch.no_grad():
        logits = model(input_ids)
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    save_file({"logits": logits.cpu().contiguous(), "labels": labels.cpu()}, str(tmp_path / "batch0.safetensors"))
    np.save(tmp_path / "logits.npy", logits.cpu().view(torch.int16).numpy().view(ml_dtypes.bfloat16))
    np.save(tmp_path / "labels.npy", labels.numpy())

    expected = nbce.evaluate(logits, labels, shift=True, device="cpu")
    x = ref.f64(logits.float().numpy()[:, :-1])
    t = labels.numpy()[:, 1:]
    assert_matches(expected, ref.evaluation(x, t), "bfloat16")
    assert expected.count == batch * (seq - 1) - 4
    for argv in ([f"{tmp_path}/batch0.safetensors:logits", f"{tmp_path}/batch0.safetensors:labels"],
                 [str(tmp_path / "logits.npy"), str(tmp_path / "labels.npy"), "--dtype", "bfloat16"]):
        assert cli.main(["score", *argv, "--shift", "--json", "--device", "cpu"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["loss"] == expected.loss and data["count"] == expected.count
        assert data["inputs"]["logits"]["dtype"] == "bfloat16" and data["inputs"]["shift"] is True
