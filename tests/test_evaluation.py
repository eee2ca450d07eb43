"""nbce.Evaluator / nbce.evaluate against the float64 reference and the per-function API."""

import json
import math
import os
import pickle
import subprocess
import sys
import threading
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import nbce
import reference as ref
from conftest import FLOAT_DTYPES, TOLERANCES, make_logits

# (logits shape, class axis): V = 1, N = 0, several batch axes, class axis first
# or in the middle, rows longer than a 2048-element block, a 256k vocabulary.
CASES = [((64, 10), -1), ((5, 1), -1), ((0, 7), -1), ((3, 4, 30), -1), ((6, 9, 5), 1), ((4, 5000), -1),
         ((7, 4), 0), ((2, 262144), -1)]


def targets_for(rng, logits_shape, axis, ignored_every=5):
    n_classes = logits_shape[axis]
    shape = tuple(n for i, n in enumerate(logits_shape) if i != axis % len(logits_shape))
    t = rng.integers(0, n_classes, shape)
    t.reshape(-1)[::ignored_every] = -100
    return t


def assert_matches(result, expected, dtype):
    rtol, atol = TOLERANCES[dtype]
    for name in ("loss", "perplexity", "bits_per_token", "entropy", "ece"):
        np.testing.assert_allclose(getattr(result, name), expected[name], rtol=rtol, atol=atol, err_msg=name)
    assert result.accuracy.keys() == expected["accuracy"].keys()
    for k, value in expected["accuracy"].items():
        np.testing.assert_allclose(result.accuracy[k], value, rtol=1e-15, err_msg=f"top-{k}")
    assert (result.count, result.ignored) == (expected["count"], expected["ignored"])


@pytest.mark.parametrize("shape,axis", CASES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_metrics_match_reference(shape, axis, dtype, rng):
    x = make_logits(rng, shape, dtype)
    t = targets_for(rng, shape, axis)
    result = nbce.evaluate(x, t, axis=axis, chunk_rows=2, top_k=(1, 2, 5))
    assert_matches(result, ref.evaluation(x, t, axis=axis, top_k=(1, 2, 5)), dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_weighted_metrics_match_reference(dtype, rng):
    x = make_logits(rng, (200, 12), dtype)
    t = targets_for(rng, x.shape, -1)
    w = rng.uniform(0, 3, t.shape)
    w[::7] = 0.0
    result = nbce.evaluate(x, t, weight=w, chunk_rows=32, calibration_bins=7)
    assert_matches(result, ref.evaluation(x, t, weight=w, calibration_bins=7), dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_equals_the_per_function_api(dtype, rng):
    x = make_logits(rng, (300, 50), dtype)
    t = targets_for(rng, x.shape, -1)
    result = nbce.evaluate(x, t, chunk_rows=64)
    kept = t != -100
    rtol, atol = TOLERANCES[dtype]
    np.testing.assert_allclose(result.loss, nbce.cross_entropy(x, t), rtol=rtol, atol=atol)
    np.testing.assert_allclose(result.entropy, np.mean(nbce.entropy(x)[kept], dtype=np.float64), rtol=rtol, atol=atol)
    assert result.accuracy[1] == np.mean(np.argmax(np.asarray(x, np.float64), axis=1)[kept] == t[kept])
    # ECE from nbce.softmax's confidences and argmax hits, binned by hand
    probs = nbce.softmax(x).astype(np.float64)[kept]
    confidence, hit = probs.max(axis=1), np.argmax(np.asarray(x, np.float64), axis=1)[kept] == t[kept]
    bins = np.clip(np.ceil(confidence * 15).astype(int) - 1, 0, 14)
    gaps = [abs(hit[bins == b].sum() - confidence[bins == b].sum()) for b in range(15)]
    np.testing.assert_allclose(result.ece, np.sum(gaps) / kept.sum(), rtol=rtol, atol=atol)


@given(st.lists(st.integers(0, 97), max_size=6), st.permutations(range(4)))
def test_chunking_and_merge_order_give_bit_identical_results(cuts, order):
    rng = np.random.default_rng(7)
    x = make_logits(rng, (97, 33), "float32", scale=5.0)
    t = targets_for(rng, x.shape, -1, ignored_every=9)
    w = rng.uniform(0, 2, t.shape)
    whole = nbce.Evaluator(top_k=(1, 3)).update(x, t, weight=w).compute()
    bounds = [0, *sorted(cuts), 97]
    chunks = [(x[a:b], t[a:b], w[a:b]) for a, b in zip(bounds, bounds[1:])]
    assert nbce.evaluate(iter(chunks), top_k=(1, 3)) == whole
    quarters = np.array_split(np.arange(97), 4)
    parts = [nbce.Evaluator(top_k=(1, 3)).update(x[q], t[q], weight=w[q]) for q in quarters]
    merged = nbce.Evaluator(top_k=(1, 3))
    for i in order:
        merged.merge(parts[i])
    assert merged.compute() == whole


def test_memory_mapped_file_matches_in_memory(tmp_path, rng):
    x = make_logits(rng, (1000, 40), "float16")
    t = targets_for(rng, x.shape, -1)
    np.save(tmp_path / "logits.npy", x)
    np.save(tmp_path / "targets.npy", t)
    mapped = np.load(tmp_path / "logits.npy", mmap_mode="r")
    result = nbce.evaluate(mapped, np.load(tmp_path / "targets.npy", mmap_mode="r"), chunk_rows=64)
    assert result == nbce.evaluate(x, t)
    assert_matches(result, ref.evaluation(x, t), "float16")


@pytest.mark.parametrize("axis,order", [(-1, "C"), (0, "C"), (-1, "F")])
def test_mapped_files_in_every_layout_match_in_memory(tmp_path, rng, axis, order):
    # C-order rows are read with pread; class axis first and Fortran order go through the mapping
    x = np.asarray(make_logits(rng, (300, 9), "float32"), order=order)
    x = x.T.copy(order=order) if axis == 0 else x
    t = targets_for(rng, x.shape, axis)
    np.save(tmp_path / "logits.npy", x)
    np.save(tmp_path / "targets.npy", t)
    mapped = np.load(tmp_path / "logits.npy", mmap_mode="r"), np.load(tmp_path / "targets.npy", mmap_mode="r")
    assert nbce.evaluate(*mapped, axis=axis, chunk_rows=7) == nbce.evaluate(x, t, axis=axis, chunk_rows=7)


@pytest.mark.parametrize("axis", [-1, 0])
def test_a_mapped_file_truncated_before_scoring_raises(tmp_path, rng, axis):
    # in a child process: should the check fail, touching the lost pages kills the process (SIGBUS)
    np.save(tmp_path / "logits.npy", make_logits(rng, (400, 9) if axis == -1 else (9, 400), "float32"))
    script = f"""
import os, numpy as np, nbce
mapped = np.load("logits.npy", mmap_mode="r")
os.truncate("logits.npy", 2048)
try:
    nbce.evaluate(mapped, np.zeros(400, np.int64), axis={axis}, chunk_rows=50)
except ValueError as error:
    print(error)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "logits.npy: the file ends at byte 2,048, before the array's end" in done.stdout


@pytest.mark.parametrize("change", ["replaced", "removed", "relinked"])
def test_a_mapped_file_whose_name_changed_is_scored_from_the_mapping(tmp_path, rng, monkeypatch, change):
    """The name of a mapped file given to another file (rewritten and renamed
    into place, a link pointed elsewhere) or removed: evaluate scores the
    mapped bytes, as cross_entropy does, not the file now at that name."""
    import nbce._chunks

    x, t = make_logits(rng, (100, 50), "float32"), rng.integers(0, 50, 100)
    np.save(tmp_path / "a.npy", x)
    path = tmp_path / "logits.npy"
    if change == "relinked":
        os.symlink(tmp_path / "a.npy", path)
    else:
        os.replace(tmp_path / "a.npy", path)
    mapped = np.load(str(path), mmap_mode="r")  # a str: the memmap keeps the link's name (from a Path, its target's)
    np.save(tmp_path / "b.npy", np.zeros_like(x))
    if change == "removed":
        os.remove(path)
    else:
        os.replace(tmp_path / "b.npy", path)  # a link replaced by a file: a rename over it
    reads = []
    monkeypatch.setattr(nbce._chunks, "_read", lambda *a, _real=nbce._chunks._read: (reads.append(1), _real(*a))[1])
    assert nbce.evaluate(mapped, t, chunk_rows=30) == nbce.evaluate(x, t, chunk_rows=30)
    assert not reads  # nothing read by name


def test_a_mapped_file_still_at_its_name_is_read_not_mapped(tmp_path, rng, monkeypatch):
    import nbce._chunks

    x, t = make_logits(rng, (100, 50), "float32"), rng.integers(0, 50, 100)
    np.save(tmp_path / "logits.npy", x)
    mapped = np.load(tmp_path / "logits.npy", mmap_mode="r")
    reads = []
    monkeypatch.setattr(nbce._chunks, "_read", lambda *a, _real=nbce._chunks._read: (reads.append(1), _real(*a))[1])
    assert nbce.evaluate(mapped, t, chunk_rows=30) == nbce.evaluate(x, t, chunk_rows=30)
    assert len(reads) == 4  # every chunk, with pread


def test_chunks_read_one_after_another_reuse_their_memory(tmp_path, rng, monkeypatch):
    """A caller that lets go of each chunk before asking for the next gets
    the same two buffers back in turn (no fresh pages per chunk), each
    chunk holding its own rows of the file."""
    from nbce._chunks import row_chunks

    x, t = make_logits(rng, (120, 50), "float32"), rng.integers(0, 50, 120)
    np.save(tmp_path / "logits.npy", x)
    mapped = np.load(tmp_path / "logits.npy", mmap_mode="r")
    allocated = []
    monkeypatch.setattr(np, "empty", lambda *a, _real=np.empty, **k: (allocated.append(a[0]), _real(*a, **k))[1])
    addresses = []
    for chunk in row_chunks(mapped, t, None, 1, 10):
        assert not isinstance(chunk.logits, np.memmap)
        np.testing.assert_array_equal(chunk.logits, x[chunk.first_row:chunk.first_row + 10])
        addresses.append(chunk.logits.ctypes.data)
    assert len(addresses) == 12 and len(set(addresses)) == 2
    assert [n for n in allocated if n] == [10 * 50 * 4] * 2  # two buffers for twelve chunks


def test_chunks_a_caller_keeps_are_not_overwritten(tmp_path, rng):
    """Chunks the caller holds on to (here all of them, in a list, and views
    of one) keep their values while later chunks are read: their memory is
    handed out again only once nothing refers to it."""
    from nbce._chunks import row_chunks

    x, t = make_logits(rng, (95, 40), "float16"), rng.integers(0, 40, 95)
    np.save(tmp_path / "logits.npy", x)
    mapped = np.load(tmp_path / "logits.npy", mmap_mode="r")
    kept = list(row_chunks(mapped, t, None, 1, 10))
    assert len({chunk.logits.ctypes.data for chunk in kept}) == len(kept)
    np.testing.assert_array_equal(np.concatenate([chunk.logits for chunk in kept]), x)
    views = []
    for chunk in row_chunks(mapped, t, None, 1, 10):
        views.append(chunk.logits[::2, 3:])  # a view keeps its chunk's memory
    np.testing.assert_array_equal(np.concatenate(views), np.concatenate([x[i:i + 10][::2, 3:] for i in range(0, 95, 10)]))


@pytest.mark.parametrize("layout", ["class_axis_first", "fortran"])
def test_strided_chunks_of_a_mapped_file_are_read_run_by_run(tmp_path, rng, monkeypatch, layout):
    """Chunks that are not one byte range are read with pread: in memory,
    equal to the mapping's values, and a file truncated meanwhile is a
    ValueError (no SIGBUS: the mapping is not touched)."""
    import nbce._chunks
    from nbce._chunks import _read

    x = make_logits(rng, (5, 6000), "float32")  # runs 24000 bytes apart: a pread each
    if layout == "fortran":
        x = np.asfortranarray(x.T)  # (6000, 5), class axis last, stored column by column
    np.save(tmp_path / "logits.npy", x)
    mapped = np.load(tmp_path / "logits.npy", mmap_mode="r")
    part = mapped[:, 1000:1130] if layout == "class_axis_first" else mapped[1000:1130]  # runs of 520 bytes
    reads = []
    monkeypatch.setattr(nbce._chunks, "_pread_into", lambda *a, _real=nbce._chunks._pread_into: (reads.append(1), _real(*a))[1])
    with open(tmp_path / "logits.npy", "rb") as file:
        read = _read(part, file)
        assert not isinstance(read, np.memmap) and len(reads) == 5  # one a run
        np.testing.assert_array_equal(read, part)
        os.truncate(tmp_path / "logits.npy", 8192)
        with pytest.raises(ValueError, match="before the array's end"):
            _read(part, file)


SHORT_RUN_PARTS = {
    "runs of 40 bytes": lambda m: m[:, 1000:1010],
    "single elements": lambda m: m[::2, 7:3000:3],
    "reversed rows": lambda m: m[::-1, 1000:1010],
    "reversed classes": lambda m: m[:, 1010:1000:-1],
}


@pytest.mark.parametrize("span_bytes", [None, 1024])
@pytest.mark.parametrize("name", SHORT_RUN_PARTS)
def test_chunks_of_short_runs_are_read_not_mapped(tmp_path, rng, monkeypatch, name, span_bytes):
    """Chunks of short runs (any strides) are read with pread too: the
    covering byte range, in windows of CHUNK_BYTES (a small one here splits
    the reads down to single elements), never through the mapping."""
    import nbce._chunks
    from nbce._chunks import _read

    if span_bytes:
        monkeypatch.setattr(nbce._chunks, "CHUNK_BYTES", span_bytes)
    np.save(tmp_path / "logits.npy", make_logits(rng, (5, 3000), "float32"))
    mapped = np.load(tmp_path / "logits.npy", mmap_mode="r")
    part = SHORT_RUN_PARTS[name](mapped)
    with open(tmp_path / "logits.npy", "rb") as file:
        read = _read(part, file)
        assert not isinstance(read, np.memmap) and not np.shares_memory(read, mapped)
        np.testing.assert_array_equal(read, part)
        os.truncate(tmp_path / "logits.npy", 8192)
        with pytest.raises(ValueError, match="before the array's end"):
            _read(part, file)


def test_all_equal_logits_tie_in_the_targets_favour():
    x = np.zeros((6, 4), np.float32)
    result = nbce.evaluate(x, np.array([0, 1, 2, 3, 0, 1]), top_k=(1, 2))
    assert result.accuracy == {1: 1.0, 2: 1.0}
    np.testing.assert_allclose([result.loss, result.entropy], math.log(4), rtol=1e-7)
    np.testing.assert_allclose(result.ece, 1 - 0.25, rtol=1e-7)  # confidence 1/4, always "correct"


def test_masked_classes():
    x = np.array([[0.0, -np.inf, 1.0], [-np.inf, 2.0, -np.inf]])
    result = nbce.evaluate(x, np.array([2, 1]))
    expected = ref.evaluation(x, np.array([2, 1]))
    assert_matches(result, expected, "float64")
    assert result.accuracy[1] == 1.0
    masked_target = nbce.evaluate(x, np.array([1, 1]))
    assert masked_target.loss == np.inf and masked_target.accuracy[1] == 0.5


def test_a_nan_row_makes_every_metric_nan():
    x = np.zeros((3, 4))
    x[1, 2] = np.nan
    result = nbce.evaluate(x, np.array([0, 1, 2]))
    assert all(math.isnan(v) for v in (result.loss, result.entropy, result.ece, *result.accuracy.values()))
    assert result.count == 3


def test_no_rows_scored():
    x = np.zeros((3, 4))
    result = nbce.evaluate(x, np.full(3, -100))
    assert (result.count, result.ignored) == (0, 3)
    assert math.isnan(result.loss) and math.isnan(result.accuracy[1])
    empty = nbce.evaluate(np.zeros((0, 4)), np.zeros(0, np.int64))
    assert empty.count == 0 and math.isnan(empty.loss)


def test_ignore_index_option(rng):
    x = make_logits(rng, (50, 6), "float64")
    t = targets_for(rng, x.shape, -1)
    t[t == -100] = 3
    t[::4] = 0
    result = nbce.evaluate(x, t, ignore_index=0)
    assert_matches(result, ref.evaluation(x, t, ignore_index=0), "float64")


def test_bad_target_names_its_position_in_the_whole_array(rng):
    x = make_logits(rng, (40, 5), "float32")
    t = rng.integers(0, 5, 40)
    t[33] = 5
    with pytest.raises(ValueError, match=r"target\[33\] = 5 is not a class index"):
        nbce.evaluate(x, t, chunk_rows=8)
    t[33] = -3
    with pytest.raises(ValueError, match=r"target\[33\] = -3"):
        nbce.Evaluator().update(x, t)
    t[33] = 0
    w = np.ones(40)
    w[21] = -0.5
    with pytest.raises(ValueError, match=r"weight\[21\] = -0.5: row weights must be finite and non-negative"):
        nbce.evaluate(x, t, weight=w, chunk_rows=8)


def test_bad_target_in_an_iterable_of_single_rows_names_its_row():
    rows = [(np.zeros(5), np.int64(i % 5)) for i in range(4)]
    with pytest.raises(ValueError, match=r"target\[4\] = 7 is not a class index"):
        nbce.evaluate(rows + [(np.zeros(5), np.int64(7))])
    with pytest.raises(ValueError, match=r"weight\[4\] = -1.0"):
        nbce.evaluate([(row, t, np.float64(1.0)) for row, t in rows] + [(np.zeros(5), np.int64(0), np.float64(-1.0))])
    with pytest.raises(ValueError, match=r"target = 7 is not a class index"):  # a whole target of no axis
        nbce.evaluate(np.zeros(5), np.int64(7))


@pytest.mark.parametrize("call,error,match", [
    (lambda x, t: nbce.evaluate(x, t.astype(np.float32)), TypeError, "integer class indices"),
    (lambda x, t: nbce.evaluate(x, t[:-1]), ValueError, "target has shape"),
    (lambda x, t: nbce.evaluate(x, t, weight=-np.ones(t.shape)), ValueError, "non-negative"),
    (lambda x, t: nbce.evaluate(x, t, weight=np.full(t.shape, np.nan)), ValueError, "finite"),
    (lambda x, t: nbce.evaluate(x, t, weight=np.ones(3)), ValueError, "weight has shape"),
    (lambda x, t: nbce.evaluate(x, t, top_k=0), ValueError, "top_k"),
    (lambda x, t: nbce.evaluate(x, t, top_k=(1, 2.5)), TypeError, "top_k"),
    (lambda x, t: nbce.Evaluator(top_k=1.0), TypeError, "top_k must be a positive integer or a sequence"),
    (lambda x, t: nbce.evaluate(x, t, calibration_bins=0), ValueError, "calibration_bins"),
    (lambda x, t: nbce.evaluate(x, t, chunk_rows=0), ValueError, "chunk_rows"),
    (lambda x, t: nbce.evaluate(x, t, device="tpu"), ValueError, "device"),
    (lambda x, t: nbce.evaluate(x, t, axis=2), ValueError, "axis 2 is out of range"),
    (lambda x, t: nbce.evaluate(x.astype(np.int32), t), TypeError, "floating-point"),
    (lambda x, t: nbce.evaluate([(x, t, None, None)]), TypeError, "iterable"),
    (lambda x, t: nbce.Evaluator().merge(nbce.Evaluator(top_k=3)), ValueError, "different metrics"),
    (lambda x, t: nbce.Evaluator().merge(nbce.Evaluator(ignore_index=0)), ValueError, "ignore_index 0 vs -100"),
    (lambda x, t: nbce.Evaluator().merge(nbce.Evaluator(axis=0)), ValueError, "axis 0 vs -1"),
    (lambda x, t: nbce.Evaluator().merge(nbce.Evaluator(calibration_bins=4)), ValueError, "calibration_bins 4"),
    (lambda x, t: nbce.evaluate(x, t, ignore_index=2**63), ValueError, "ignore_index must fit in int64"),
    (lambda x, t: nbce.evaluate(x, t, ignore_index=-2**63 - 1), ValueError, "ignore_index must fit in int64"),
    (lambda x, t: nbce.Evaluator(ignore_index=2**64 - 1), ValueError, "ignore_index must fit in int64"),
    (lambda x, t: nbce.evaluate(x, t, top_k=2**63), ValueError, "top_k"),
    (lambda x, t: nbce.evaluate(x, t, top_k=(1, 2**70)), ValueError, "top_k"),
    (lambda x, t: nbce.evaluate(x, t, calibration_bins=10**7), ValueError, "calibration_bins"),
    (lambda x, t: nbce.evaluate(x, t, chunk_rows=2**64), ValueError, "chunk_rows"),
    (lambda x, t: nbce.Evaluator().merge(object()), TypeError, "Evaluator"),
])
def test_bad_input_raises_clearly(call, error, match, rng):
    x = make_logits(rng, (10, 4), "float32")
    with pytest.raises(error, match=match):
        call(x, rng.integers(0, 4, 10))


def test_to_dict_is_json(rng):
    x = make_logits(rng, (10, 4), "float32")
    result = nbce.evaluate(x, rng.integers(0, 4, 10))
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["accuracy"]["5"] == 1.0 and data["count"] == 10
    nan = nbce.evaluate(x, np.full(10, -100)).to_dict()
    assert nan["loss"] is None and json.dumps(nan, allow_nan=False)


def test_evaluator_pickles_and_keeps_its_state(rng):
    x = make_logits(rng, (30, 8), "float64")
    t = rng.integers(0, 8, 30)
    evaluator = nbce.Evaluator(top_k=(1, 3)).update(x, t)
    clone = pickle.loads(pickle.dumps(evaluator))
    assert clone.compute() == evaluator.compute()
    assert "30 rows" in repr(clone)
    assert evaluator.reset().compute().count == 0


def test_largest_options_work(rng):
    x = make_logits(rng, (10, 4), "float32")
    t = rng.integers(0, 4, 10)
    result = nbce.evaluate(x, t, top_k=(1, 2**63 - 1), calibration_bins=nbce.evaluation.MAX_CALIBRATION_BINS,
                           ignore_index=2**63 - 1)
    assert result.accuracy[2**63 - 1] == 1.0 and result.count == 10


def test_unpickling_checks_the_options(rng):
    state = nbce.Evaluator().__getstate__()
    state["options"]["calibration_bins"] = 10**7
    clone = nbce.Evaluator.__new__(nbce.Evaluator)
    with pytest.raises(ValueError, match="calibration_bins"):
        clone.__setstate__(state)


def test_evaluator_pickled_in_the_older_bin_layout_loads(rng):
    # before the bins reached below float64's exponents: 2112 bins, bin e of weight 2**(e - 1075)
    old = {"options": nbce.Evaluator().options(), "occupied": np.array([1023, 2112 + 1024]),
           "values": np.array([3, 5]), "pending": np.zeros(50, np.int64), "special": np.zeros(50),
           "counts": np.array([2, 0, 0, 0])}
    clone = nbce.Evaluator.__new__(nbce.Evaluator)
    clone.__setstate__(old)
    sums, _ = clone._snapshot()
    assert nbce._exact.value(*sums, 0) == 3 * 2.0**-52 and nbce._exact.value(*sums, 1) == 10 * 2.0**-52


def test_one_dimensional_logits_are_one_row(rng):
    x = make_logits(rng, (7,), "float32")
    assert nbce.evaluate(x, np.array(3)) == nbce.Evaluator().update(x, np.array(3)).compute()
    assert nbce.evaluate(x, np.array(3)).count == 1
    assert nbce.evaluate(x, np.array(-100)).ignored == 1


def _fraction_reference(x, t, w):
    """(loss, top-1 accuracy) as exact fractions of the per-row float64 losses and the weights."""
    losses = nbce.cross_entropy(x, t, reduction="none")
    hits = np.argmax(x, axis=1) == t
    total = sum(map(Fraction, w.tolist()))
    loss = sum(Fraction(a) * Fraction(b) for a, b in zip(w.tolist(), losses.tolist())) / total
    return float(loss), float(sum(Fraction(a) for a, hit in zip(w.tolist(), hits) if hit) / total)


@pytest.mark.parametrize("weights", [
    [1e306, 1e306, 0.0, 1e306],
    [1.7976931348623157e308] * 4,  # float64's largest: sums and products overflow float64
    [5e-324, 5e-324, 1e-320, 2.2e-308],  # subnormal: products fall below float64
    [1.7976931348623157e308, 5e-324, 1.0, 3e200],
])
def test_huge_and_tiny_weights_give_exact_ratios(weights, rng):
    x = np.array([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0], [5.0, -3.0, 0.5], [0.1, 0.2, 0.3]])
    t = np.array([0, 0, 0, 1])
    w = np.array(weights)
    result = nbce.evaluate(x, t, weight=w, top_k=(1, 5), chunk_rows=1)
    loss, top1 = _fraction_reference(x, t, w)
    assert result.loss == loss and result.accuracy == {1: top1, 5: 1.0}
    assert math.isfinite(result.entropy) and 0.0 <= result.ece <= 1.0


@pytest.mark.parametrize("kind", ["bfloat16", "float16", "int32", "bool"])
def test_row_weights_of_any_real_dtype(kind, rng):
    if kind == "bfloat16":
        kind = pytest.importorskip("ml_dtypes").bfloat16
    x = make_logits(rng, (30, 6), "float32")
    t = rng.integers(0, 6, 30)
    w = rng.integers(0, 3, 30).astype(kind)
    assert nbce.evaluate(x, t, weight=w) == nbce.evaluate(x, t, weight=w.astype(np.float64))


def test_a_row_of_weight_zero_is_left_out_whatever_its_figures():
    # Its loss is +inf (the target's logit is -inf): 0 * inf once made the loss NaN.
    x = np.array([[0.0, -np.inf, 1.0], [2.0, 1.0, 0.0], [0.5, 0.25, 3.0]])
    t = np.array([1, 0, 2])
    result = nbce.evaluate(x, t, weight=np.array([0.0, 1.0, 2.0]))
    without = nbce.evaluate(x[1:], t[1:], weight=np.array([1.0, 2.0]))
    assert math.isfinite(result.loss)
    for name in ("loss", "entropy", "accuracy", "ece"):
        assert getattr(result, name) == getattr(without, name), name


def test_weights_of_1e306_from_the_issue():
    x = np.array([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
    result = nbce.evaluate(x, np.array([0, 0]), weight=np.array([1e306, 1e306]))
    assert result.accuracy == {1: 0.5, 5: 1.0}


def _in_threads(work, n_threads=4):
    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_threads_sharing_an_evaluator_lose_nothing(rng):
    x = make_logits(rng, (20_000, 4), "float32")
    t = rng.integers(0, 4, 20_000)
    shared = nbce.Evaluator()
    other = nbce.Evaluator().update(x, t)

    def work(i):
        for _ in range(10):
            shared.update(x, t)
            if i == 0:
                shared.merge(other)

    _in_threads(work)
    expected = nbce.Evaluator()
    for _ in range(50):
        expected.merge(other)
    assert shared.compute() == expected.compute()
    assert shared.compute().count == 50 * 20_000


def test_concurrent_tallies_lose_nothing(rng):
    # The tally runs without the GIL: unlocked, threads adding to the same
    # bins at once lose additions.  Per-row figures straight to the tally,
    # so that the threads spend their time there.
    n = 1_000_000
    per_row = (rng.uniform(0, 5, n), rng.integers(0, 10, n), rng.uniform(0, 3, n), rng.uniform(0, 1, n))
    shared, alone = nbce.Evaluator(), nbce.Evaluator()
    alone._tally(per_row, np.empty(0))

    def work(i):
        for _ in range(5):
            shared._tally(per_row, np.empty(0))

    _in_threads(work)
    expected = nbce.Evaluator()
    for _ in range(20):
        expected.merge(alone)
    assert shared.compute() == expected.compute()


def test_progress_goes_to_stderr(rng, capsys, monkeypatch):
    x = make_logits(rng, (100, 8), "float32")
    t = rng.integers(0, 8, 100)
    nbce.evaluate(x, t, chunk_rows=10, progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and "scoring" in captured.err and "rows" in captured.err
    nbce.evaluate(x, t, chunk_rows=10)
    assert capsys.readouterr().err == ""
    # without tqdm: a plain line, at most twice a second
    from nbce import _progress

    monkeypatch.setitem(__import__("sys").modules, "tqdm", None)
    clock = iter(range(0, 1000, 1))
    monkeypatch.setattr(_progress.time, "perf_counter", lambda: float(next(clock)))
    nbce.evaluate(x, t, chunk_rows=10, progress=True)
    err = capsys.readouterr().err
    assert "scoring: 100/100 rows" in err and "GB/s" in err and err.endswith("\n")


def test_matches_torch(rng):
    torch = pytest.importorskip("torch", reason="the PyTorch cross-check needs torch")
    x = make_logits(rng, (256, 100), "float32")
    t = rng.integers(0, 100, 256)
    result = nbce.evaluate(x, t, top_k=(1, 5))
    xt, tt = torch.from_numpy(x), torch.from_numpy(t)
    np.testing.assert_allclose(result.loss, float(torch.nn.functional.cross_entropy(xt, tt)), rtol=1e-5)
    top5 = torch.topk(xt, 5, dim=1).indices
    assert result.accuracy[5] == float((top5 == tt[:, None]).any(dim=1).double().mean())
    assert result.accuracy[1] == float((top5[:, 0] == tt).double().mean())
