"""Forked workers and concurrent threads on each Numba threading layer.

Every case runs in its own interpreter (the layer is chosen once per process)
under a timeout, so a hang or a killed process fails the test instead of
stalling the suite.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from nbce import _threads

SCRIPT = textwrap.dedent(
    """
    import multiprocessing, threading
    import numpy as np
    import nbce
    from nbce import _threads

    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 1000)).astype(np.float32)
    t = rng.integers(0, 1000, 256)

    def score(_=None):
        return float(nbce.cross_entropy(x, t)), float(nbce.evaluate(x, t).loss)

    expected = score()  # a parallel kernel runs before the fork
    print("layer", _threads.layer(), flush=True)

    results, errors = [], []
    def work():
        try:
            results.extend(score() for _ in range(40))
        except BaseException as error:
            errors.append(repr(error))
    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert results == [expected] * 160
    print("threads ok", flush=True)

    with multiprocessing.get_context("fork").Pool(2) as pool:
        try:
            forked = pool.map(score, range(4))
        except RuntimeError as error:
            assert str(error) == _threads.FORK_MESSAGE, error
            print("fork refused", flush=True)
        else:
            assert forked == [expected] * 4, forked
            print("fork ok", flush=True)
    """
)


def run(layer=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_THREADING_LAYER")}
    if layer is not None:
        env["NUMBA_THREADING_LAYER"] = layer
    try:
        done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"hung (layer {layer}): {expired.stdout!r} {expired.stderr!r}")
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    # Numba's TBB layer may print that it could not stop its workers before the
    # fork (threads that just finished are still detaching): benign, ignored.
    return [line for line in done.stdout.split("\n") if line.startswith(("layer ", "threads ", "fork "))]


def omp_available():
    try:
        from numba.np.ufunc import omppool  # noqa: F401
    except ImportError:
        return False
    return True


def test_default_layer_is_fork_and_thread_safe():
    lines = run()
    assert lines[0] == "layer " + ("tbb" if _threads.load_tbb() else "workqueue")
    assert lines[1:3] == ["threads ok", "fork ok"]


@pytest.mark.skipif(not _threads.load_tbb(), reason="needs TBB (pip install tbb)")
def test_tbb_layer():
    assert run("tbb")[:3] == ["layer tbb", "threads ok", "fork ok"]


def test_workqueue_layer_serialises_threads():
    # Numba's workqueue aborts the process on concurrent launches; nbce's take turns.
    assert run("workqueue")[:3] == ["layer workqueue", "threads ok", "fork ok"]


@pytest.mark.skipif(not omp_available(), reason="Numba's OpenMP layer is not available")
def test_gnu_openmp_layer_refuses_a_forked_child_clearly():
    # A user's explicit choice is kept; a child forked after GNU OpenMP started
    # gets a RuntimeError (returned to the parent by the Pool) instead of SIGTERM.
    lines = run("omp")
    assert lines[:2] == ["layer omp", "threads ok"]
    assert lines[2] == ("fork refused" if _threads._gnu_openmp() else "fork ok")


def test_reduced_losses_reuse_per_thread_scratch_safely(rng):
    """A "mean"/"sum" cross_entropy keeps its per-row losses in arrays of the
    calling thread, reused from call to call: a result returned with
    reduction="none" must not be one of them, batches of other sizes must
    not read stale rows, and threads must not share them."""
    from concurrent.futures import ThreadPoolExecutor

    import nbce
    import reference as ref

    from nbce import cpu

    # float64: the "none" result is then the per-row array itself, no cast copy
    batches = [(rng.standard_normal((n, 100)), rng.integers(0, 100, n)) for n in (700, 300, 5000)]
    kept = nbce.cross_entropy(*batches[0], reduction="none")
    kept_copy = kept.copy()
    nbce.cross_entropy(*batches[0])
    assert not any(np.shares_memory(kept, scratch) for scratch in cpu._scratch.arrays if scratch is not None)
    expected = [float(ref.cross_entropy(x, t)) for x, t in batches]
    for (x, t), mean in zip(batches * 2, expected * 2):
        assert nbce.cross_entropy(x, t) == pytest.approx(mean, rel=1e-12)
        assert nbce.cross_entropy(x, t, reduction="sum") == pytest.approx(mean * t.size, rel=1e-12)
    np.testing.assert_array_equal(kept, kept_copy)

    def run(i):
        x, t = batches[i % 3]
        return [float(nbce.cross_entropy(x, t)) for _ in range(20)]

    with ThreadPoolExecutor(4) as pool:
        for i, means in enumerate(pool.map(run, range(8))):
            assert means == [means[0]] * 20 and means[0] == pytest.approx(expected[i % 3], rel=1e-12)


def test_evaluation_per_row_scratch_is_not_handed_out_or_shared(rng):
    """``Evaluator.update`` scores a chunk into this thread's per-row scratch
    (``row_metrics(keep=False)``) and consumes it at once: chunks of other
    sizes, per-token losses written chunk by chunk and evaluators in other
    threads must see no stale or foreign rows, and ``row_metrics`` called as
    by default (``keep=True``) must not return the scratch."""
    from concurrent.futures import ThreadPoolExecutor

    import nbce
    from nbce import cpu
    from nbce._arrays import as_rows

    n, v = 5000, 100
    x = rng.standard_normal((n, v)).astype(np.float32)
    t = rng.integers(0, v, n)
    expected = nbce.evaluate(x, t)
    per_token = np.empty(n)
    kept = cpu.row_metrics(as_rows(x, -1), t, -100)
    kept_copy = [a.copy() for a in kept]
    assert nbce.evaluate(x, t, chunk_rows=700, per_token=per_token) == expected
    np.testing.assert_array_equal(per_token, kept[0])
    nbce.evaluate(x[:50], t[:50])
    assert not any(np.shares_memory(a, scratch) for a in kept for scratch in cpu._scratch.arrays
                   if scratch is not None)
    for a, b in zip(kept, kept_copy):
        np.testing.assert_array_equal(a, b)
    batches = [(x[:k], t[:k]) for k in (n, 3000, 1200)]
    alone = [nbce.evaluate(*b) for b in batches]

    def run(i):
        return [nbce.evaluate(*batches[i % 3]) for _ in range(5)]

    with ThreadPoolExecutor(4) as pool:
        for i, results in enumerate(pool.map(run, range(8))):
            assert results == [alone[i % 3]] * 5


def test_small_kernels_run_on_the_calling_thread_and_restore_its_thread_count(rng):
    """``launch`` runs a kernel reading fewer than SERIAL_WORK elements with one
    thread (waking the others costs more), restores the caller's count even
    when the kernel raises, and leaves larger kernels alone; a small call's
    results are the bits of the same rows scored with every thread."""
    import numba

    import nbce

    seen = []

    def kernel(tag):
        seen.append((tag, numba.get_num_threads()))
        if tag == "raises":
            raise ZeroDivisionError(tag)
        return tag

    threads = numba.get_num_threads()
    assert _threads.launch(kernel, _threads.SERIAL_WORK - 1, "small") == "small"
    assert _threads.launch(kernel, _threads.SERIAL_WORK, "large") == "large"
    with pytest.raises(ZeroDivisionError):
        _threads.launch(kernel, 0, "raises")
    assert seen == [("small", 1), ("large", threads), ("raises", 1)]
    assert numba.get_num_threads() == threads

    x = rng.standard_normal((4096, 100)).astype(np.float32)
    t = rng.integers(0, 100, 4096)
    assert 32 * 100 < _threads.SERIAL_WORK <= x.size
    whole = nbce.cross_entropy(x, t, reduction="none")
    np.testing.assert_array_equal(nbce.cross_entropy(x[:32], t[:32], reduction="none"), whole[:32])
    np.testing.assert_array_equal(nbce.log_softmax(x[:32]), nbce.log_softmax(x)[:32])
    assert numba.get_num_threads() == threads
