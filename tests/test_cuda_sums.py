"""An evaluation's exact sums kept on the GPU (``nbce.cuda.tally``), on Numba's CUDA simulator.

The device adds per-row metrics as integers; the figures must be the host's
to the bit, whatever the chunking, the block count or the magnitudes, and an
evaluation over many chunks must come back from the device once.
"""

import math

import numpy as np
import pytest

import nbce
from conftest import make_logits
from test_evaluation import targets_for

cuda_backend = pytest.importorskip("nbce.cuda")
from numba import cuda  # noqa: E402  (after the simulator switch in conftest)
from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray  # noqa: E402

from nbce import _exact  # noqa: E402
from nbce._tally import IGNORED_ROW, UNDEFINED_ROW  # noqa: E402
from nbce.cuda import _device, tally  # noqa: E402

pytestmark = pytest.mark.skipif(not _device.SIMULATOR, reason="counts copies and launches on the simulator")
# The simulator computes with NumPy scalars, which warn where the GPU overflows
# silently (a loss of 1e300 squared is inf on both backends).
huge_values = pytest.mark.filterwarnings("ignore:.*(overflow|invalid value) encountered:RuntimeWarning")


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(cuda_backend, "THREADS", 8)
    monkeypatch.setattr(cuda_backend, "MIN_ELEMENTS_PER_THREAD", 4)
    monkeypatch.setattr(tally, "THREADS", 8)
    monkeypatch.setattr(tally, "BLOCKS_PER_SM", 3)  # 3 blocks striding over the rows


def _per_row_metrics(rng, n):
    """Per-row figures over float64's whole range: tiny, subnormal, huge (products
    past float64's overflow), negative, non-finite, ignored and undefined rows."""
    magnitudes = rng.choice([1e-320, 1e-300, 1e-30, 1.0, 3.0, 1e30, 1e300, 1.7e308], n)
    loss = rng.uniform(0, 1, n) * np.where(rng.random(n) < 0.3, magnitudes, 1.0)
    loss[rng.random(n) < 0.05] = np.inf
    entropy = rng.uniform(-1, 9, n)
    entropy[rng.random(n) < 0.03] = np.nan
    confidence = rng.uniform(0, 1, n)
    confidence[::7] = rng.choice([0.0, 1.0, 0.5, 1 / 15, 2 / 15], confidence[::7].size)  # on bin edges
    confidence[rng.random(n) < 0.03] = np.nan
    rank = rng.integers(0, 9, n)
    rank[rng.random(n) < 0.15] = IGNORED_ROW
    rank[rng.random(n) < 0.05] = UNDEFINED_ROW
    weight = rng.choice([0.0, 1.0, 0.25, 1e-310, 3e-200, 7.5, 1e150, 1.7e308], n) * rng.uniform(0.5, 1, n)
    return (loss, rank, entropy, confidence), weight


def _split(rng, n):
    cuts = np.sort(rng.choice(np.arange(1, n), size=rng.integers(1, 6), replace=False))
    return np.split(np.arange(n), cuts)


def _totals(evaluator):
    sums, counts = evaluator._snapshot()
    return [_exact.total(*sums, i) for i in range(evaluator._layout.size)], counts.tolist()


def _same(a, b):
    (sums_a, counts_a), (sums_b, counts_b) = a, b
    assert counts_a == counts_b
    for i, ((n, s), (m, t)) in enumerate(zip(sums_a, sums_b)):
        assert n == m, f"sum {i}"
        assert s == t or (math.isnan(s) and math.isnan(t)), f"sum {i}: {s} vs {t}"


@huge_values
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("bins", [15, 200])  # the window in shared memory; every sum in global memory
def test_device_sums_equal_the_host_sums_bit_for_bit(weighted, bins, rng):
    options = dict(top_k=(1, 2, 5), calibration_bins=bins)
    per_row, weight = _per_row_metrics(rng, 120)
    if not weighted:
        weight = np.empty(0)
    host = nbce.Evaluator(**options)
    host._tally(per_row, weight)
    for _ in range(2):  # two random chunkings
        device = nbce.Evaluator(**options)
        for rows in _split(rng, 120):
            on_device = [cuda.to_device(np.ascontiguousarray(a[rows])) for a in per_row]
            device._add(cuda_backend, on_device, weight[rows] if weighted else weight, 0)
        cuda_backend.settle_sums(device)
        _same(_totals(device), _totals(host))
        assert device.compute() == host.compute() or str(device.compute()) == str(host.compute())


@huge_values
def test_sums_are_read_back_before_they_could_overflow(monkeypatch, rng):
    monkeypatch.setattr(tally, "ROWS_BETWEEN_READS", 16)
    per_row, weight = _per_row_metrics(rng, 60)
    host, device = nbce.Evaluator(), nbce.Evaluator()
    host._tally(per_row, weight)
    for rows in np.array_split(np.arange(60), 6):  # 10 rows a chunk: a read every second chunk
        device._add(cuda_backend, [cuda.to_device(np.ascontiguousarray(a[rows])) for a in per_row], weight[rows], 0)
    cuda_backend.settle_sums(device)
    _same(_totals(device), _totals(host))


@pytest.fixture
def copies(monkeypatch):
    """Counts device-to-host copies and kernel launches."""
    counts = {"to_host": 0, "launches": 0}
    copy_to_host, launch = FakeCUDAArray.copy_to_host, _device.launch

    def counting_copy_to_host(self, *args, **kwargs):
        counts["to_host"] += 1
        return copy_to_host(self, *args, **kwargs)

    def counting_launch(*args):
        counts["launches"] += 1
        return launch(*args)

    monkeypatch.setattr(FakeCUDAArray, "copy_to_host", counting_copy_to_host)
    monkeypatch.setattr(_device, "launch", counting_launch)
    return counts


def test_evaluate_over_many_chunks_copies_back_once(monkeypatch, copies, rng):
    """Device logits in k chunks: 2k launches (metrics, sums) and one clear, one copy back."""
    import nbce._chunks

    monkeypatch.setattr(nbce._chunks, "CUDA_CHUNK_ROWS", 12)
    x = make_logits(rng, (60, 6), "float32")
    t = targets_for(rng, (60, 6), -1, ignored_every=4)
    expected = nbce.evaluate(x, t, device="cpu")
    x_device, t_device = cuda.to_device(x), cuda.to_device(t)
    copies.update(to_host=0, launches=0)
    result = nbce.evaluate(x_device, t_device)
    assert copies["launches"] == 2 * 5 + 1
    assert copies["to_host"] == 1 + 5  # the sums, and each chunk's bad-target flag
    assert result.count == expected.count and result.accuracy == expected.accuracy


def test_host_chunks_through_the_pipeline_copy_back_once(copies, rng):
    x = make_logits(rng, (64, 5), "float32")
    t = targets_for(rng, (64, 5), -1, ignored_every=5)
    w = rng.uniform(0, 2, 64)
    expected = nbce.evaluate(x, t, weight=w, device="cpu")
    copies.update(to_host=0)
    result = nbce.evaluate(x, t, weight=w, device="cuda", chunk_rows=8)  # 8 chunks over 2 streams
    assert copies["to_host"] == 1  # one per stream's workspace: the simulator's streams share one
    assert result.count == expected.count and result.accuracy == expected.accuracy
    assert result.loss == pytest.approx(expected.loss, rel=1e-5)


def test_per_token_results_still_come_back_per_chunk(rng):
    x = make_logits(rng, (4, 10, 5), "float32")
    t = targets_for(rng, (4, 10, 5), -1)
    expected, per_token = np.empty((4, 10)), np.empty((4, 10))
    nbce.evaluate(x, t, per_token=expected, device="cpu")
    result = nbce.evaluate(cuda.to_device(x), cuda.to_device(t), per_token=per_token)
    np.testing.assert_allclose(per_token, expected, rtol=1e-5)
    assert result.count == nbce.evaluate(x, t).count


def test_another_evaluators_sums_on_the_stream_are_handed_to_it_first(rng):
    """An evaluation left pending on a stream (a chunk iterator running another
    evaluation between chunks, say) is settled into its own Evaluator."""
    x = make_logits(rng, (20, 4), "float32")
    t = targets_for(rng, (20, 4), -1)
    first, second = nbce.Evaluator(), nbce.Evaluator()
    first._update(cuda.to_device(x[:10]), cuda.to_device(t[:10]), None, None, settle=False)  # left on the device
    second.update(cuda.to_device(x), cuda.to_device(t))
    first._update(cuda.to_device(x[10:]), cuda.to_device(t[10:]), None, None, settle=False)
    cuda_backend.settle_sums(first)
    assert first.compute().count == second.compute().count > 10
    assert first.compute().ignored == second.compute().ignored
    assert first.compute().accuracy == second.compute().accuracy


def test_a_failed_evaluation_leaves_nothing_on_the_device(rng):
    x = make_logits(rng, (30, 4), "float32")
    t = np.zeros(30, np.int64)
    t[25] = 9
    with pytest.raises(ValueError, match=r"target\[25\] = 9"):
        nbce.evaluate(cuda.to_device(x), cuda.to_device(t), chunk_rows=10)
    t[25] = 0
    assert nbce.evaluate(cuda.to_device(x), cuda.to_device(t)).count == 30


def test_digits_of_either_sign_carry_into_the_bins():
    """``add_digits``: any int64 digits, the total exact on the bins' scale."""
    rng = np.random.default_rng(5)
    digits = rng.integers(-(2**40), 2**40, (3, _exact.N_DIGITS))
    added = np.array([0, _exact.ADDED_POS_INF, _exact.ADDED_POS_INF | _exact.ADDED_NEG_INF])
    sums = _exact.accumulators(3)
    for _ in range(3):
        _exact.add_digits(*sums, digits, added)
    for i in range(3):
        n, s = _exact.total(*sums, i)
        assert n == 3 * sum(int(d) << (_exact.DIGIT_BITS * g) for g, d in enumerate(digits[i]))
        assert (s == 0.0, s == math.inf, math.isnan(s))[i]


def test_dask_blocks_on_the_gpu_hand_their_sums_back(rng):
    """Each block's Evaluator gets its sums before it is merged or pickled."""
    from nbce.dask import _score_block

    x = make_logits(rng, (30, 4), "float32")
    t = targets_for(rng, (30, 4), -1)
    blocks = [_score_block({}, (i,), cuda.to_device(x[i:i + 10]), cuda.to_device(t[i:i + 10])) for i in (0, 10, 20)]
    assert sum(b.compute().count for b in blocks) == nbce.evaluate(x, t).count


def test_a_chunk_past_the_read_bound_is_added_in_parts(monkeypatch, copies, rng):
    monkeypatch.setattr(tally, "ROWS_BETWEEN_READS", 16)
    x = make_logits(rng, (60, 4), "float32")
    t = targets_for(rng, (60, 4), -1)
    copies.update(to_host=0, launches=0)
    result = nbce.Evaluator().update(cuda.to_device(x), t).compute()  # host targets: no flag read
    assert copies["to_host"] == 4  # the 4 parts of 16, 16, 16 and 12 rows, each read back
    assert result.count == nbce.evaluate(x, t).count


def test_an_interrupted_read_back_leaves_nothing_behind(monkeypatch, rng):
    x = make_logits(rng, (10, 4), "float32")
    t = targets_for(rng, (10, 4), -1)
    real_read = type(cuda_backend._workspace.workspace(0)).read

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(cuda_backend._workspace.workspace(0)), "read", interrupted)
    with pytest.raises(KeyboardInterrupt):
        nbce.Evaluator().update(cuda.to_device(x), t)
    monkeypatch.setattr(type(cuda_backend._workspace.workspace(0)), "read", real_read)
    assert nbce.Evaluator().update(cuda.to_device(x), t).compute().count == nbce.evaluate(x, t).count


def test_uploads_start_from_page_locked_memory_and_constants_go_once(monkeypatch, rng):
    from nbce.cuda._workspace import Workspace

    sources = []
    real = _device.copy_to_device
    monkeypatch.setattr(_device, "copy_to_device", lambda dst, host, stream=0: (sources.append(host), real(dst, host,
                                                                                                        stream))[1])
    x = make_logits(rng, (12, 4), "float32")
    t = targets_for(rng, (12, 4), -1)
    evaluator = nbce.Evaluator()
    evaluator.update(cuda.to_device(x), t, weight=rng.uniform(0, 1, 12))
    constants = len(cuda_backend._workspace.workspace(0)._constants)
    evaluator.update(cuda.to_device(x), t, weight=rng.uniform(0, 1, 12))
    ws = cuda_backend._workspace.workspace(0)
    assert isinstance(ws, Workspace)
    assert len(sources) == 4  # targets and weights, twice
    staging = [buffer for ring in ws._staging.values() for buffer, _ in ring]
    assert all(any(np.shares_memory(host, buffer) for buffer in staging) for host in sources)
    assert constants == len(ws._constants) == 2
