"""Short rows: the row kernels take rows in groups, and rows of at most
``BLOCK`` entries four at a time.

Row lengths from 1 to either side of ``BLOCK``, batches that end in a partial group,
and the inputs the long-row tests cover (huge magnitudes, -inf masks, NaN,
+inf, ignore_index, weights, label smoothing, every input type and dtype,
strided layouts), against the float64 reference.
"""

import numpy as np
import pytest

import nbce
import reference as ref
from conftest import FLOAT_DTYPES, assert_close, np_dtype
from nbce import _threads
from nbce._arrays import as_rows
from nbce._config import BLOCK
from nbce.cpu import kernels, row_metrics

LENGTHS = [1, 2, 7, 16, 33, 100, BLOCK, BLOCK + 1]
# The largest finite magnitude of each dtype that the tests feed in.
HUGE = {"float64": 3e38, "float32": 3e38, "float16": 6e4, "bfloat16": 3e38}


def n_rows_for(n_classes):
    """Two whole groups of a large batch's size and a partial one (a batch
    this small may be grouped smaller: see the grouping test below)."""
    return max(2 * int(kernels.rows_per_group(n_classes, 2**20, _threads.n_tasks())) + 3, 11)  # 7 edge rows and more


def logits_with_edge_rows(rng, n_rows, n_classes, dtype):
    """Random logits whose first rows are: huge equal values, huge values of
    both signs, a masked row (-inf but for one class), all -inf, a NaN, a
    +inf, a confident row."""
    x = rng.standard_normal((n_rows, n_classes)) * 3.0
    huge = HUGE[dtype]
    x[0] = huge
    x[1] = np.where(np.arange(n_classes) % 2 == 0, huge, -huge)
    x[2, 1:] = -np.inf
    x[3] = -np.inf
    x[4, n_classes // 2] = np.nan
    x[5, n_classes - 1] = np.inf
    x[6] = -40.0
    x[6, 0] = 40.0
    return x.astype(np_dtype(dtype))


def edge_case(rng, n_classes, dtype):
    """(rows, logits, targets): ``logits_with_edge_rows`` and random targets,
    every fifth one ignored from row 7 on (rows 0 and 6 target class 0)."""
    n = n_rows_for(n_classes)
    x = logits_with_edge_rows(rng, n, n_classes, dtype)
    t = rng.integers(0, n_classes, n)
    t[[0, 6]] = 0
    t[7::5] = -100
    return n, x, t


def finite_rows(n_rows):
    """Rows without NaN or +inf (the reference's formulas hold there), and
    without the all -inf row."""
    keep = np.ones(n_rows, bool)
    keep[[3, 4, 5]] = False
    return keep


def close(actual, expected, dtype):
    """``assert_close`` after rounding the reference to the result dtype, as
    the result is (losses of 6e38 are inf in float32)."""
    with np.errstate(over="ignore"):
        assert_close(actual, np.asarray(expected).astype(np.asarray(actual).dtype).astype(np.float64), dtype)


def check_special_rows(lse, loss):
    assert lse[3] == -np.inf and np.isnan(lse[4]) and lse[5] == np.inf
    assert np.isnan(loss[3:6]).all()


@pytest.mark.parametrize("n_classes", LENGTHS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_statistics_and_losses_match_reference(n_classes, dtype, rng):
    n, x, t = edge_case(rng, n_classes, dtype)
    keep = finite_rows(n)
    lse = nbce.logsumexp(x)
    loss = nbce.cross_entropy(x, t, reduction="none")
    check_special_rows(lse, loss)
    with np.errstate(all="ignore"):
        close(lse[keep], ref.logsumexp(x)[keep], dtype)
        close(nbce.entropy(x)[keep], ref.entropy(x)[keep], dtype)
        close(loss[keep], ref.cross_entropy(x, t, reduction="none")[keep], dtype)
        weight = np.linspace(0.5, 2.0, n_classes)
        options = dict(weight=weight, label_smoothing=0.1, ignore_index=-100)
        close(nbce.cross_entropy(x, t, reduction="none", **options)[keep],
                     ref.cross_entropy(x, t, reduction="none", **options)[keep], dtype)
        y = rng.dirichlet(np.ones(n_classes), n)
        close(nbce.cross_entropy(x, y, reduction="none")[keep],
                     ref.cross_entropy(x, y, reduction="none")[keep], dtype)
    assert np.isnan(nbce.cross_entropy(x, t))  # the NaN row propagates to the mean


@pytest.mark.parametrize("n_classes", LENGTHS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_a_nan_of_either_sign_makes_its_row_nan(n_classes, dtype, rng):
    """A NaN with its sign bit set sorts below -inf, so a row's maximum does
    not show it: short rows find it in their sums, or, in a row holding +inf
    (whose sums mean nothing), by reading the row again."""
    n = n_rows_for(n_classes)
    x = rng.standard_normal((n, n_classes))
    negative_nan = np.copysign(np.nan, -1.0)
    last = n_classes - 1
    x[0, last] = negative_nan
    x[1, 0] = np.nan
    x[2, 0], x[2, last] = np.inf, negative_nan  # one entry when n_classes == 1: NaN
    x[3], x[3, last // 2] = -np.inf, negative_nan
    x[4, last] = np.inf  # +inf without a NaN
    x[5, last], x[5, 0] = np.inf, negative_nan
    x[6, last], x[6, 0] = np.inf, np.nan
    x = x.astype(np_dtype(dtype))
    assert np.signbit(x[0, last]) and np.isnan(x[0, last])
    nan_rows = [0, 1, 2, 3, 5, 6]
    t = np.zeros(n, np.int64)
    lse = nbce.logsumexp(x)
    assert np.isnan(lse[nan_rows]).all() and lse[4] == np.inf
    assert np.isnan(nbce.entropy(x)[nan_rows]).all()
    assert np.isnan(nbce.cross_entropy(x, t, reduction="none")[nan_rows]).all()
    assert np.isnan(np.asarray(nbce.log_softmax(x), np.float64)[nan_rows]).all()
    assert np.isnan(np.asarray(nbce.softmax(x), np.float64)[nan_rows]).all()
    loss, rank, entropy, confidence = row_metrics(as_rows(x, -1), t, -100)
    assert (rank[nan_rows] == kernels.UNDEFINED_ROW).all()
    assert np.isnan([loss[nan_rows], entropy[nan_rows], confidence[nan_rows]]).all()
    keep = np.ones(n, bool)
    keep[nan_rows + [4]] = False
    with np.errstate(all="ignore"):
        close(lse[keep], ref.logsumexp(x)[keep], dtype)


@pytest.mark.parametrize("n_classes", LENGTHS)
@pytest.mark.parametrize("input_type", ["log_probs", "probs"])
def test_probability_inputs(n_classes, input_type, rng):
    n = n_rows_for(n_classes)
    p = rng.dirichlet(np.ones(n_classes), n)
    x = np.log(p) if input_type == "log_probs" else p
    t = rng.integers(0, n_classes, n)
    t[::4] = -100
    close(nbce.cross_entropy(x, t, reduction="none", input_type=input_type),
                 ref.cross_entropy(x, t, reduction="none", input_type=input_type), "float64")


@pytest.mark.parametrize("n_classes", LENGTHS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_per_row_metrics_match_reference(n_classes, dtype, rng):
    n, x, t = edge_case(rng, n_classes, dtype)
    loss, rank, entropy, confidence = row_metrics(as_rows(x, -1), t, -100)
    scored = finite_rows(n) & (t != -100)
    wide = x.astype(np.float64)
    with np.errstate(all="ignore"):
        lp = ref.log_softmax(x)
        rows, safe = np.arange(n), np.where(t < 0, 0, t)
        close(loss[scored], -lp[rows, safe][scored], dtype)
        close(entropy[scored], ref.entropy(x)[scored], dtype)
        close(confidence[scored], np.exp(lp).max(axis=1)[scored], dtype)
    expected_rank = np.sum(wide > wide[rows, safe][:, None], axis=1)
    np.testing.assert_array_equal(rank[scored], expected_rank[scored])
    assert (rank[t == -100] == kernels.IGNORED_ROW).all()
    assert rank[4] == kernels.UNDEFINED_ROW and np.isnan([loss[4], entropy[4], confidence[4]]).all()


@pytest.mark.parametrize("n_classes", LENGTHS)
def test_strided_layouts(n_classes, rng):
    n = n_rows_for(n_classes)
    x = rng.standard_normal((2 * n, n_classes + 3)) * 3.0
    t = rng.integers(0, n_classes, n)
    for view in (x[::2, 1:n_classes + 1], np.asfortranarray(x)[::2, :n_classes]):
        close(nbce.logsumexp(view), ref.logsumexp(view), "float64")
        close(nbce.cross_entropy(view, t, reduction="none"), ref.cross_entropy(view, t, reduction="none"),
                     "float64")
        close(nbce.cross_entropy(view.T, t, axis=0, reduction="none"),
                     ref.cross_entropy(view, t, reduction="none"), "float64")


@pytest.mark.parametrize("n_classes", LENGTHS)
def test_a_rows_result_does_not_depend_on_its_place_in_the_batch(n_classes, rng):
    """Rows sit in other places of their groups once the batch is sliced
    (as ``nbce.evaluate`` does in chunks): the results must not move."""
    n, x, t = edge_case(rng, n_classes, "float32")
    whole = [nbce.logsumexp(x), nbce.entropy(x), nbce.cross_entropy(x, t, reduction="none"),
             *row_metrics(as_rows(x, -1), t, -100)]
    for k in (1, 5, 17, n - 70):
        part = [nbce.logsumexp(x[k:]), nbce.entropy(x[k:]), nbce.cross_entropy(x[k:], t[k:], reduction="none"),
                *row_metrics(as_rows(x[k:], -1), t[k:], -100)]
        for a, b in zip(whole, part):
            np.testing.assert_array_equal(a[k:], b)


@pytest.mark.parametrize("n_classes", [49, 100, kernels.MID_ROW])
def test_a_rows_result_does_not_depend_on_its_groups_size(n_classes, rng):
    """Rows of up to MID_ROW entries come GROUP_ROWS (or more, for rows of
    fewer than GROUP_ELEMENTS / GROUP_ROWS entries) to a group in a large
    batch and fewer (at least MIN_GROUP) in a small one, so that it still
    makes a few tasks per thread: the same row gives the same bits either way."""
    tasks = _threads.n_tasks()
    n = kernels.GROUP_ROWS * tasks + 5
    assert kernels.rows_per_group(n_classes, n, tasks) == kernels.GROUP_ROWS
    x = logits_with_edge_rows(rng, n, n_classes, "float32")
    t = rng.integers(0, n_classes, n)
    whole = [nbce.logsumexp(x), nbce.cross_entropy(x, t, reduction="none"), *row_metrics(as_rows(x, -1), t, -100)]
    for start, stop in ((0, 300), (100, 100 + 60 * tasks + 1), (7, 30)):  # the last: 16 and 7 rows (one thread below SERIAL_WORK)
        assert kernels.MIN_GROUP <= kernels.rows_per_group(n_classes, stop - start, tasks) < kernels.GROUP_ROWS
        part = [nbce.logsumexp(x[start:stop]), nbce.cross_entropy(x[start:stop], t[start:stop], reduction="none"),
                *row_metrics(as_rows(x[start:stop], -1), t[start:stop], -100)]
        for a, b in zip(whole, part):
            np.testing.assert_array_equal(a[start:stop], b)


@pytest.mark.parametrize("n_classes", [1, 7, 48, 49, 3000])
def test_results_do_not_depend_on_the_thread_count_or_the_run(n_classes, rng):
    import numba

    n = n_rows_for(n_classes) + 200
    x = logits_with_edge_rows(rng, n, n_classes, "float32")
    t = rng.integers(0, n_classes, n)
    t[::9] = -100

    def everything():
        return [nbce.logsumexp(x), nbce.entropy(x), nbce.cross_entropy(x, t, reduction="none"),
                nbce.cross_entropy(x, t, label_smoothing=0.2), *row_metrics(as_rows(x, -1), t, -100)]

    before = numba.get_num_threads()
    results = []
    try:
        for threads in sorted({1, 2, before}):
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            results.append(everything())
            results.append(everything())
    finally:
        numba.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("n_classes", [1, 5, 49, 100, 257, kernels.MID_ROW])
def test_a_rows_result_does_not_depend_on_the_rows_read_beside_it(n_classes, rng):
    """Rows of one block are summed ``ROWS_AT_ONCE`` at a time, the rows read
    taken in order (ignored rows are not read): ignoring other rows, or
    ending a batch with a short set whose places repeat its last row, must
    leave a row's figures as they were."""
    tasks = _threads.n_tasks()
    n = kernels.MIN_GROUP * (tasks - 1) + 3  # groups of 16 rows, the last of 3
    assert kernels.rows_per_group(n_classes, n, tasks) == kernels.MIN_GROUP
    x = logits_with_edge_rows(rng, n, n_classes, "float32")
    t = rng.integers(0, n_classes, n)
    whole = row_metrics(as_rows(x, -1), t, -100)
    for ignored in ([1], [0, 2, 3], list(range(5, n, 3)), list(range(0, n, 8))):
        fewer = t.copy()
        fewer[ignored] = -100
        part = row_metrics(as_rows(x, -1), fewer, -100)
        kept = fewer != -100
        for a, b in zip(whole, part):
            np.testing.assert_array_equal(a[kept], b[kept])
    for stop in range(n - kernels.ROWS_AT_ONCE, n):
        np.testing.assert_array_equal(nbce.logsumexp(x[:stop]), nbce.logsumexp(x)[:stop])
