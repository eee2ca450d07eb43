"""Evaluation on the GPU backend: the fused metric kernels and the host-to-GPU pipeline.

On Numba's CUDA simulator in CI (8 threads per block, so rows span several
blocks, partial ones, and rows split over blocks); on a real GPU with
NBCE_TEST_REAL_GPU=1.
"""

import numpy as np
import pytest

import nbce
import reference as ref
from conftest import TOLERANCES, make_logits
from test_evaluation import assert_matches, targets_for

cuda_backend = pytest.importorskip("nbce.cuda")
from numba import cuda  # noqa: E402  (after the simulator switch in conftest)

from nbce._chunks import row_chunks  # noqa: E402
from nbce._progress import Progress  # noqa: E402
from nbce.cuda.pipeline import stream_host_chunks  # noqa: E402


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(cuda_backend, "THREADS", 8)
    monkeypatch.setattr(cuda_backend, "MIN_ELEMENTS_PER_THREAD", 4)


# many short rows per block, a block per row, rows split over several blocks
SHAPES = [(40, 3), (6, 50), (2, 300), (5, 1), (0, 4)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_device_arrays_match_reference(shape, dtype, rng):
    x = make_logits(rng, shape, dtype)
    t = targets_for(rng, shape, -1, ignored_every=4)
    evaluator = nbce.Evaluator(top_k=(1, 2)).update(cuda.to_device(x), cuda.to_device(t))
    assert_matches(evaluator.compute(), ref.evaluation(x, t, top_k=(1, 2)), dtype)


def test_gpu_and_cpu_agree_on_counts_and_closely_on_sums(rng):
    x = make_logits(rng, (30, 70), "float32", scale=6.0)
    t = targets_for(rng, x.shape, -1)
    gpu = nbce.evaluate(cuda.to_device(x), cuda.to_device(t), chunk_rows=7)
    cpu = nbce.evaluate(x, t)
    assert (gpu.count, gpu.ignored, gpu.accuracy) == (cpu.count, cpu.ignored, cpu.accuracy)
    rtol, atol = TOLERANCES["float32"]
    np.testing.assert_allclose([gpu.loss, gpu.entropy, gpu.ece], [cpu.loss, cpu.entropy, cpu.ece],
                               rtol=rtol, atol=atol)


def test_nan_and_masked_rows_on_the_gpu():
    x = np.array([[0.0, -np.inf, 1.0], [-np.inf, 2.0, -np.inf], [0.0, np.nan, 1.0]])
    kept = nbce.evaluate(cuda.to_device(x[:2]), cuda.to_device(np.array([2, 1])))
    assert_matches(kept, ref.evaluation(x[:2], np.array([2, 1])), "float64")
    with_nan = nbce.evaluate(cuda.to_device(x), np.array([2, 1, 0]))
    assert np.isnan(with_nan.loss) and np.isnan(with_nan.accuracy[1])


def test_bad_device_target_raises_with_its_position(rng):
    x = cuda.to_device(make_logits(rng, (12, 5), "float32"))
    t = np.zeros(12, np.int64)
    t[9] = 7
    with pytest.raises(ValueError, match=r"target\[9\] = 7 is not a class index"):
        nbce.Evaluator().update(x, cuda.to_device(t))
    with pytest.raises(ValueError, match=r"target\[9\] = 7"):  # host targets are checked on the host
        nbce.Evaluator().update(x, t)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_host_chunks_stream_through_the_gpu(dtype, rng, tmp_path):
    from conftest import np_dtype

    x = make_logits(rng, (45, 20), dtype)
    t = targets_for(rng, x.shape, -1)
    w = rng.uniform(0, 2, t.shape)
    np.save(tmp_path / "x.npy", x.view(np.uint16) if dtype == "bfloat16" else x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    if dtype == "bfloat16":
        mapped = mapped.view(np_dtype("bfloat16"))
    result = nbce.evaluate(mapped, t, weight=w, device="cuda", chunk_rows=8)  # 6 chunks, a short last one
    assert_matches(result, ref.evaluation(x, t, weight=w), dtype)


def test_pipeline_class_axis_first_and_timings(rng):
    x = make_logits(rng, (6, 25), "float32")
    t = rng.integers(0, 6, 25)
    evaluator = nbce.Evaluator(axis=0)
    timings = stream_host_chunks(evaluator, row_chunks(x, t, None, 0, 10), Progress(enabled=False))
    assert_matches(evaluator.compute(), ref.evaluation(x, t, axis=0), "float32")
    assert timings.bytes == x.nbytes and timings.wall_s > 0
    assert (timings.overlap is None) == (not timings.timed)


def test_pipeline_reports_bad_targets_with_global_position(rng):
    x = make_logits(rng, (30, 4), "float32")
    t = np.zeros(30, np.int64)
    t[17] = 4
    with pytest.raises(ValueError, match=r"target\[17\] = 4"):
        nbce.evaluate(x, t, device="cuda", chunk_rows=8)


def test_device_logits_refuse_the_cpu(rng):
    x = cuda.to_device(make_logits(rng, (4, 3), "float32"))
    with pytest.raises(ValueError, match="device='cpu' needs host logits"):
        nbce.evaluate(x, np.zeros(4, np.int64), device="cpu")


def test_device_logits_are_scored_in_one_chunk(monkeypatch, rng):
    """evaluate on CUDA arrays: one metric launch and one read-back of the
    per-row metrics, however many host-sized chunks the logits would make."""
    import nbce._chunks

    monkeypatch.setattr(nbce._chunks, "CHUNK_BYTES", 64)  # host logits of this size would be 40 chunks
    x = make_logits(rng, (40, 12), "float32")
    t = targets_for(rng, (40, 12), -1, ignored_every=4)
    calls = []
    real = cuda_backend.row_metrics
    monkeypatch.setattr(cuda_backend, "row_metrics", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    on_gpu = nbce.evaluate(cuda.to_device(x), cuda.to_device(t), top_k=(1, 2))
    assert len(calls) == 1
    assert_matches(on_gpu, ref.evaluation(x, t, top_k=(1, 2)), "float32")


def test_auto_scores_host_arrays_on_the_cpu_even_with_a_gpu(monkeypatch, rng):
    import nbce.cuda.pipeline

    def refuse(*args):
        raise AssertionError("host arrays went to the GPU pipeline")

    monkeypatch.setattr(nbce.cuda.pipeline, "stream_host_chunks", refuse)
    x = make_logits(rng, (12, 5), "float32")
    t = targets_for(rng, (12, 5), -1)
    assert nbce.evaluate(x, t, device="auto") == nbce.evaluate(x, t, device="cpu")


def test_device_logits_of_many_short_rows_are_chunked_by_rows(monkeypatch, rng):
    """The per-row scratch of a CUDA evaluate is bounded: chunks of at most CUDA_CHUNK_ROWS rows."""
    import nbce._chunks

    monkeypatch.setattr(nbce._chunks, "CUDA_CHUNK_ROWS", 16)
    x = make_logits(rng, (40, 3, 2), "float32")  # 40 x 3 rows of 2 classes: 5 indices (15 rows) a chunk
    t = targets_for(rng, (40, 3, 2), -1, ignored_every=4)
    calls = []
    real = cuda_backend.row_metrics
    monkeypatch.setattr(cuda_backend, "row_metrics", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    assert_matches(nbce.evaluate(cuda.to_device(x), cuda.to_device(t), top_k=(1, 2)),
                   ref.evaluation(x, t, top_k=(1, 2)), "float32")
    assert len(calls) == 8


def test_chunking_of_device_logits_reads_no_size_attribute(monkeypatch):
    """A torch tensor's ``size`` is a method: the default chunking of CUDA
    logits goes by their shape (it once computed ``size // ...`` and failed
    on every torch tensor)."""
    import nbce._chunks

    class TensorLike:  # the torch attributes default_chunk_rows may read
        __cuda_array_interface__ = {}
        shape = (40, 3, 7)
        ndim = 3

        def size(self, dim=None):
            return self.shape if dim is None else self.shape[dim]

    monkeypatch.setattr(nbce._chunks, "CUDA_CHUNK_ROWS", 16)
    assert nbce._chunks.default_chunk_rows(TensorLike(), -1) == 5  # 3 rows an index


def test_threads_sharing_a_stream_have_workspaces_of_their_own():
    """Host targets are uploaded into the workspace between a call's launches:
    two threads on one stream must not share it."""
    import threading

    from nbce.cuda._workspace import workspace

    found = []
    thread = threading.Thread(target=lambda: found.append(workspace(0)))
    thread.start()
    thread.join()
    assert found[0] is not workspace(0)
    assert workspace(0) is workspace(0)


def test_pipeline_reads_the_next_chunk_before_waiting_for_the_last(monkeypatch, rng):
    """The overlap logic, with a reader that logs: chunk i + 1 is read on the
    host before the GPU's work on chunk i is waited for, and a slot's stream
    is waited for only when the slot comes round again (two chunks later)."""
    import nbce.cuda.pipeline as pipeline

    log = []
    real_stream = pipeline.dev.stream

    def logged_stream():
        stream = real_stream()
        name = "AB"[sum(entry == "new stream" for entry in log)]
        log.append("new stream")
        synchronize = stream.synchronize
        stream.synchronize = lambda: (log.append(f"wait {name}"), synchronize())[1]
        return stream

    def slow_reader(chunks):
        for chunk in chunks:
            log.append(f"read {chunk.first_row}")
            yield chunk

    monkeypatch.setattr(pipeline.dev, "stream", logged_stream)
    pipeline.release_slots()  # this thread's slots, kept from earlier tests: made anew, on the logged streams
    x = make_logits(rng, (40, 5), "float32")
    t = targets_for(rng, (40, 5), -1)
    evaluator = nbce.Evaluator()
    stream_host_chunks(evaluator, slow_reader(row_chunks(x, t, None, -1, 10)), Progress(enabled=False))
    waits = [i for i, entry in enumerate(log) if entry.startswith("wait")]
    # The two waits first: a call makes sure no earlier call left its slots busy (idle new streams here).
    assert log[:waits[4] + 1] == ["new stream", "new stream", "wait A", "wait B", "read 0", "read 10", "read 20",
                                  "wait A", "read 30", "wait B", "wait A"]  # chunk 0 waited for after chunk 2 was read, 1 after 3
    assert_matches(evaluator.compute(), ref.evaluation(x, t), "float32")


def test_upload_staging_ring_is_allocated_whole_by_the_first_upload(monkeypatch):
    """A workspace's ring of page-locked staging buffers is made in full by its
    first upload, so later uploads allocate nothing whichever turn they start
    at (the pipeline's two streams upload twice each in a call of four chunks:
    on a GPU, where each stream has its own workspace, the second call used to
    fill the other half of each ring)."""
    from nbce.cuda import _workspace

    made = []
    real = _workspace.dev.pinned_empty
    monkeypatch.setattr(_workspace.dev, "pinned_empty", lambda *a, **k: (made.append(a), real(*a, **k))[1])
    ws = _workspace.Workspace(0)
    host = np.arange(6, dtype=np.int64)
    for call in range(3):
        for _ in range(2):
            view = ws.upload("target", host)
            np.testing.assert_array_equal(view.copy_to_host(), host)
        assert len(made) == _workspace.STAGING_RING, call
    ws.upload("target", np.arange(60, dtype=np.int64))  # a larger upload replaces its turn's buffer only
    assert len(made) == _workspace.STAGING_RING + 1


def test_host_streaming_allocates_its_buffers_once(rng, monkeypatch):
    """The pipeline's page-locked and device buffers (and streams) are made by
    the first streamed evaluation and reused by the next ones."""
    from nbce.cuda import pipeline

    made = []
    for name in ("pinned_empty", "device_empty", "stream"):
        real = getattr(pipeline.dev, name)
        monkeypatch.setattr(pipeline.dev, name, lambda *a, _real=real, _name=name, **k: (made.append(_name), _real(*a, **k))[1])
    pipeline.release_slots()
    x = make_logits(rng, (40, 5), "float32")
    t = targets_for(rng, (40, 5), -1)
    first = nbce.evaluate(x, t, device="cuda", chunk_rows=10)
    assert sorted(set(made)) == ["device_empty", "pinned_empty", "stream"]
    made.clear()
    assert nbce.evaluate(x, t, device="cuda", chunk_rows=10) == first
    assert made == []
    pipeline.release_slots()
    nbce.evaluate(x, t, device="cuda", chunk_rows=10)
    assert made.count("stream") == 2


def test_pipeline_overlap_is_the_share_of_the_possible_overlap_reached():
    from nbce.cuda.pipeline import PipelineTimings

    def overlap(read_s, copy_s, compute_s, wall_s):
        return PipelineTimings(read_s=read_s, copy_ms=1e3 * copy_s, compute_ms=1e3 * compute_s, wall_s=wall_s).overlap

    assert overlap(0.2, 0.1, 0.1, 0.4) == pytest.approx(0.0)  # one stage after another
    assert overlap(0.2, 0.1, 0.1, 0.2) == pytest.approx(1.0)  # all hidden behind the host's reads
    assert overlap(0.2, 0.1, 0.1, 0.3) == pytest.approx(0.5)
    assert overlap(0.2, 0.0, 0.0, 0.2) is None  # nothing to overlap
    assert PipelineTimings(timed=False).overlap is None


def test_results_streamed_through_the_gpu_carry_the_pipeline_stages(rng):
    x = make_logits(rng, (30, 4), "float32")
    t = targets_for(rng, (30, 4), -1)
    stages = nbce.evaluate(x, t, device="cuda", chunk_rows=8).pipeline
    assert stages["bytes"] == x.nbytes and stages["read_s"] >= 0 and stages["wall_s"] > 0
    assert set(stages) >= {"copy_gb_per_second", "compute_gb_per_second", "overlap"}
    assert nbce.evaluate(x, t, device="cpu").pipeline is None
    assert nbce.evaluate(cuda.to_device(x), cuda.to_device(t)).pipeline is None
