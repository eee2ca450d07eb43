"""The parts of the CPU evaluation that were restructured for speed give what
the straightforward versions give, bit for bit: the tally's jobs (serial and
on threads, unit weights counted) against a row-by-row loop, the rank counted
during the extrema pass against a count of its own."""

import re

import numba
import numpy as np
import pytest
from numba import njit

from nbce import _exact, _tally
from nbce.cpu import _rows
from nbce.evaluation import Evaluator
from test_codegen import PACKED_INT_MAX, _asm


@njit(**_exact.JIT_NO_NRT)
def _row_by_row(loss, rank, entropy, confidence, weight, top_k, edges, partials, used, special, counts):
    """The tally as one loop over the rows, every sum of a row in turn."""
    first_bin = 3 + top_k.size
    squares = first_bin + 3 * (edges.size - 1)
    for r in range(rank.size):
        k_rank = rank[r]
        if k_rank == _tally.IGNORED_ROW:
            counts[_tally.IGNORED] += 1
            continue
        counts[_tally.ROWS] += 1
        w = weight[r] if weight.size > 0 else 1.0
        _exact.add(partials, used, special, _tally.WEIGHT, w)
        _exact.add_product(partials, used, special, _tally.LOSS, w, loss[r])
        _exact.add_product(partials, used, special, _tally.ENTROPY, w, entropy[r])
        _exact.add_product(partials, used, special, squares, w, loss[r] * loss[r])
        if k_rank == _tally.UNDEFINED_ROW:
            counts[_tally.UNDEFINED] += 1
            continue
        for i in range(top_k.size):
            if k_rank < top_k[i]:
                _exact.add(partials, used, special, 3 + i, w)
        c = confidence[r]
        if c != c:
            counts[_tally.UNCALIBRATED] += 1
            continue
        at = first_bin + 3 * _tally.calibration_bin(c, edges)
        _exact.add(partials, used, special, at, w)
        _exact.add_product(partials, used, special, at + 1, w, c)
        if k_rank == 0:
            _exact.add(partials, used, special, at + 2, w)


def _per_row(rng, n):
    """Per-row metrics with every special case: ignored and undefined rows,
    NaN and infinite values, confidences on the bin edges, zero weights."""
    loss = rng.exponential(2.0, n)
    rank = rng.integers(0, 12, n)
    rank[rng.random(n) < 0.3] = 0
    entropy = rng.uniform(0, 5, n)
    confidence = rng.uniform(0, 1, n)
    confidence[::11] = np.round(confidence[::11] * 15) / 15
    rank[::7] = _tally.IGNORED_ROW
    rank[3::13] = _tally.UNDEFINED_ROW
    loss[5::17] = np.inf
    entropy[6::19] = np.nan
    confidence[8::23] = np.nan
    weight = rng.uniform(0, 3, n) * 10.0 ** rng.integers(-30, 30, n)
    weight[::29] = 0.0
    return (loss, rank, entropy, confidence), weight


def _tally_equals_the_row_by_row_loop(per_row, weight, weighted):
    evaluator = Evaluator(top_k=(1, 3, 10), calibration_bins=15)
    options = (evaluator._top_k_array, evaluator._edges)
    expected, got = _exact.accumulators(evaluator._layout.size), _exact.accumulators(evaluator._layout.size)
    expected_counts, got_counts = np.zeros(_tally.N_COUNTS, np.int64), np.zeros(_tally.N_COUNTS, np.int64)
    for _ in range(3):  # beyond the first chunk the pending counts are not zero
        _row_by_row(*per_row, weight, *options, *expected, expected_counts)
        _tally.tally(*per_row, weight, *options, *got, got_counts)
    np.testing.assert_array_equal(got_counts, expected_counts)
    for i in range(evaluator._layout.size):  # the same exact sums (NaN where a NaN was added)
        (n, special), (m, expected_special) = _exact.total(*got, i), _exact.total(*expected, i)
        assert n == m
        np.testing.assert_array_equal(special, expected_special)
    if weighted:  # the very same additions in the same order: the same state, bins and pending counts
        for mine, theirs in zip(got, expected):
            np.testing.assert_array_equal(mine.view(np.int64), theirs.view(np.int64))


@pytest.mark.parametrize("n", [0, 1, 100, _tally.PARALLEL_ROWS, 3 * _tally.PARALLEL_ROWS + 5])
@pytest.mark.parametrize("weighted", [False, True])
def test_tally_jobs_equal_the_row_by_row_loop(rng, n, weighted):
    per_row, weight = _per_row(rng, n)
    _tally_equals_the_row_by_row_loop(per_row, weight if weighted else np.empty(0), weighted)


def test_unit_bins_over_several_runs_of_fixed_point_sums(rng):
    # Confidences summed as fixed-point pieces are added to the bins every
    # UNIT_RUN rows: a chunk of more rows crosses that boundary.
    per_row, _ = _per_row(rng, _exact.UNIT_RUN + 7)
    _tally_equals_the_row_by_row_loop(per_row, np.empty(0), False)


@pytest.mark.parametrize("odd", [1e-30, 2.0 ** -31 * (1 + 2.0 ** -52), 2.0, np.inf, 5e-324])
def test_unit_bins_with_confidences_beyond_the_fixed_point_pieces(rng, odd):
    # A confidence with bits below 2**-83, or outside [0, 2), takes the exact
    # additions one by one; 2**-31 * (1 + 2**-52) fits, its last bit 2**-83.
    per_row, _ = _per_row(rng, 3 * _tally.PARALLEL_ROWS)
    loss, rank, entropy, confidence = per_row
    confidence[100] = odd
    rank[100] = 0
    row_bin = np.empty(rank.size, np.int64)
    _tally._row_bins(rank, confidence, _tally.calibration_edges(15), row_bin)
    assert _tally._fits_unit_pieces(confidence, row_bin) == (odd == 2.0 ** -31 * (1 + 2.0 ** -52))
    _tally_equals_the_row_by_row_loop(per_row, np.empty(0), False)


def test_private_counts_sit_a_cache_line_apart():
    used = np.arange(51, dtype=np.int64)
    own = _tally._private_counts(used, 9)
    assert own.shape[0] == 9 and own.strides[0] >= 64 + used.nbytes
    assert (own[:, :used.size] == used).all()


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_rank_count_in_the_extrema_pass_equals_a_count_of_its_own(rng, dtype):
    for n in (1, 15, 100, 2048):
        x = rng.standard_normal(n).astype(dtype)
        x[rng.random(n) < 0.2] = x[0]  # ties with the pivot
        if n > 20:
            x[3], x[7], x[9] = np.inf, -np.inf, np.nan
        block = x.view(np.int16) if dtype == "float16" else x
        compute = np.float64 if dtype == "float64" else np.float32
        for pivot in (compute(x[0]), compute(np.inf), compute(-np.inf)):
            high, low, above = _rows._block_extrema_above(block, True, pivot)
            alone = _rows._block_extrema(block)
            np.testing.assert_array_equal([high, low], [alone[0], alone[1]])
            assert above == _rows._count_above(block, pivot)
            assert _rows._block_extrema_above(block, False, pivot)[2] == 0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_extrema_with_the_count_is_vectorized(dtype):
    block = np.zeros(2048, dtype)
    asm = _asm(_rows._block_extrema_above, block, True, block[0])
    assert PACKED_INT_MAX.search(asm), "integer-key max did not vectorize"
    assert re.search(r"\bv?cmp\w*p[sd]\s", asm), "comparison did not vectorize"


def test_tally_leaves_the_callers_chunk_size_alone(rng):
    per_row, _ = _per_row(rng, _tally.PARALLEL_ROWS)
    evaluator = Evaluator()
    before = numba.set_parallel_chunksize(7)
    try:
        evaluator._tally(per_row, np.empty(0))
        assert numba.get_parallel_chunksize() == 7
    finally:
        numba.set_parallel_chunksize(before)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_sums_in_the_extrema_pass_match_the_split_sums(rng, dtype):
    # A block below the running maximum is summed (and its entropy moment
    # formed) in the read that finds its extrema: the same extrema and count,
    # and the split sums' values up to the rounding of a compute-type sum.
    x = (rng.standard_normal(2048) * 4).astype(dtype)
    x[::97] = -np.inf
    x[1::53] = x[0]
    block = x.view(np.int16) if dtype == "float16" else x
    compute = np.float64 if dtype == "float64" else np.float32
    shift, pivot = compute(np.max(x.astype(np.float64)) + 1.5), compute(x[0])
    for count_above in (False, True):
        total, moment, high, low, above = _rows._block_sums_moment_extrema(block, shift, count_above, pivot)
        assert (high, low, above) == _rows._block_extrema_above(block, count_above, pivot)
        ones, rest, expected_moment = _rows._block_sums_split(block, shift, True)
        assert ones == 0
        rtol = 1e-13 if dtype == "float64" else 1e-5
        np.testing.assert_allclose([total, moment], [rest, expected_moment], rtol=rtol)


@pytest.mark.parametrize("n_bins", [1, 2, 3, 7, 10, 15, 49, 100, 999, 1000])
def test_calibration_bin_equals_a_search_of_the_edges(rng, n_bins):
    """edges[b] < c <= edges[b + 1], c = 0 in bin 0 and c > 1 in the last,
    for confidences on every edge, one ulp either side, and random ones."""
    edges = _tally.calibration_edges(n_bins)
    np.testing.assert_array_equal(edges, np.linspace(0.0, 1.0, n_bins + 1))  # the reference's edges
    confidence = np.concatenate([edges, np.nextafter(edges, -1.0), np.nextafter(edges, 2.0), rng.random(2000),
                                 [0.0, 1.0, 1.0 + 2.0**-52, 1.5]])
    confidence = confidence[confidence >= 0]
    expected = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    got = np.array([_tally.calibration_bin(c, edges) for c in confidence])
    np.testing.assert_array_equal(got, expected)


def test_batched_sums_and_calibration_bins_are_vector_code():
    """``add_many``'s passes (an integer max of the values' bits, the cuts) and
    the calibration bins' pass compile to packed instructions.  The cuts and
    the bins convert float64 to int64, packed only with AVX-512DQ (AVX2
    machines convert one value at a time)."""
    options = dict(_exact.JIT_NO_NRT)
    sums = _exact.accumulators(1)
    asm = _asm(_exact.add_many, *sums, 0, np.ones(64), False, np.zeros(64, np.int64), -1, options=options)
    assert PACKED_INT_MAX.search(asm), "the batch's largest value did not vectorize"
    if "+avx512dq" not in _host_features():
        return
    assert re.search(r"\bvcvttpd2qq\s", asm), "the cuts did not vectorize"
    rank, edges = np.zeros(64, np.int64), _tally.calibration_edges(15)
    asm = _asm(_tally._row_bins, rank, np.ones(64), edges, np.empty(64, np.int64), options=options)
    assert re.search(r"\bv?cmp\w*pd\s", asm), "the calibration bins did not vectorize"


def _host_features():
    import llvmlite.binding as llvm
    return llvm.get_host_cpu_features().flatten()
