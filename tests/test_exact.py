"""The exact accumulators behind Evaluator: correctly rounded, whatever the order."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numba import njit

from nbce import _exact

finite = st.floats(allow_nan=False, allow_infinity=False)
# products stay within range and their rounding errors above the subnormals
moderate = st.floats(min_value=-1e150, max_value=1e150).filter(lambda v: v == 0 or abs(v) > 1e-150)


@njit(**_exact.JIT_NO_NRT)
def _add_all(bins, pending, special, values, weights):
    for j in range(values.size):
        if weights.size:
            _exact.add_product(bins, pending, special, 0, weights[j], values[j])
        else:
            _exact.add(bins, pending, special, 0, values[j])


def total(values, weights=()):
    sums = _exact.accumulators(1)
    _add_all(*sums, np.asarray(values, dtype=np.float64), np.asarray(weights, dtype=np.float64))
    return sums


def rounded(exact):
    try:
        return float(exact)
    except OverflowError:
        return math.inf if exact > 0 else -math.inf


@given(st.lists(finite, max_size=60))
def test_sum_is_the_correctly_rounded_exact_sum(values):
    assert _exact.value(*total(values), 0) == rounded(sum(map(Fraction, values)))


@given(st.lists(st.tuples(moderate, moderate), max_size=40))
def test_weighted_sum_is_exact(pairs):
    weights, values = zip(*pairs) if pairs else ((), ())
    expected = float(sum(Fraction(w) * Fraction(v) for w, v in pairs))
    assert _exact.value(*total(values, weights), 0) == expected


@given(st.lists(finite, max_size=40), st.integers(0, 40))
def test_merge_equals_one_sum(values, cut):
    left, right = total(values[:cut]), total(values[cut:])
    _exact.merge_into(*left, *right)
    assert _exact.value(*left, 0) == _exact.value(*total(values), 0)


def test_many_additions_carry_without_overflow():
    values = np.full(250_000, np.finfo(np.float64).max / 1e6)
    values[1::2] = 1.0 + 2.0**-52
    assert _exact.value(*total(values), 0) == float(sum(map(Fraction, values.tolist())))


def test_non_finite_values_are_summed_apart():
    assert _exact.value(*total([1.0, math.inf, 2.0]), 0) == math.inf
    assert math.isnan(_exact.value(*total([math.inf, -math.inf]), 0))
    assert math.isnan(_exact.value(*total([1.0, math.nan]), 0))


@given(st.lists(st.tuples(finite, finite), max_size=40))
def test_weighted_sum_is_exact_over_the_whole_float64_range(pairs):
    # products beyond float64's largest value or below its subnormals are added exactly too
    weights, values = zip(*pairs) if pairs else ((), ())
    expected = rounded(sum(Fraction(w) * Fraction(v) for w, v in pairs))
    assert _exact.value(*total(values, weights), 0) == expected


@pytest.mark.parametrize("weights,values", [
    ([1.7e308, 1.7e308], [1.5, 2.5]),  # products overflow float64
    ([5e-324, 1e-320], [1.5, 0.3]),  # products fall below the subnormals
    ([1e300, 1e-300], [1e300, 1e-300]),
])
def test_ratios_of_sums_beyond_float64_are_correctly_rounded(weights, values):
    sums = _exact.accumulators(2)
    _add_all(sums[0][:1], sums[1][:1], sums[2][:1], np.array(values), np.array(weights))
    _add_all(sums[0][1:], sums[1][1:], sums[2][1:], np.array(weights), np.array([]))
    numerator, denominator = (_exact.total(*sums, i) for i in range(2))
    expected = sum(Fraction(w) * Fraction(v) for w, v in zip(weights, values)) / sum(map(Fraction, weights))
    assert _exact.ratio(numerator, denominator) == float(expected)


def test_ratio_of_non_finite_or_empty_sums():
    assert math.isnan(_exact.ratio((0, 0.0), (0, 0.0)))
    assert _exact.ratio((0, math.inf), (1 << _exact._SHIFT, 0.0)) == math.inf
    assert math.isnan(_exact.ratio((0, math.inf), (0, math.inf)))


@njit(**_exact.JIT_NO_NRT)
def _add_runs(bins, pending, special, values, repeats, run):
    """Each value ``repeats`` times, in runs of ``run`` additions."""
    n = 0
    for _ in range(repeats):
        for j in range(values.size):
            _exact.add_in_run(bins, special, 0, values[j])
            n += 1
            if n == run:
                _exact.end_run(bins, pending, 0)
                n = 0
    _exact.end_run(bins, pending, 0)


@given(st.lists(finite, max_size=60), st.integers(1, 7))
def test_runs_of_additions_are_exact(values, repeats):
    sums = _exact.accumulators(1)
    _add_runs(*sums, np.asarray(values, dtype=np.float64), repeats, _exact.RUN)
    assert _exact.value(*sums, 0) == rounded(repeats * sum(map(Fraction, values)))


def test_a_full_run_of_the_largest_integers_is_exact():
    # every bit of the integer set: a run moves the two bins by the whole
    # 2**53 a run allows, the next one of the other sign takes it back
    values = np.array([2.0**53 - 1, -(2.0**53 - 1), 2.0**-1022 * (1 - 2.0**-52)])
    sums = _exact.accumulators(1)
    _add_runs(*sums, values[:1], _exact.RUN, _exact.RUN)
    _add_runs(*sums, values[1:2], _exact.RUN - 1, _exact.RUN)
    _add_runs(*sums, values[2:], 1000, 1)
    expected = Fraction(values[0]) + 1000 * Fraction(values[2])  # the two runs cancel but for one value
    assert _exact.total(*sums, 0)[0] == expected * 2**_exact._SHIFT


def _many(values, labels, square):
    sums = _exact.accumulators(1)
    _exact.add_many(*sums, 0, np.asarray(values, dtype=np.float64), square, np.asarray(labels, dtype=np.int64), -1)
    return sums


@given(st.lists(st.tuples(finite, st.sampled_from([-1, 0, 3])), max_size=60), st.booleans())
def test_a_batch_cut_into_integer_pieces_is_exact(pairs, square):
    values, labels = zip(*pairs) if pairs else ((), ())
    kept = [v * v if square else v for v, label in pairs if label != -1]  # each square rounded once
    got = _exact.value(*_many(values, labels, square), 0)
    if any(map(math.isinf, kept)):
        assert math.isinf(got)
    else:
        assert got == rounded(sum(map(Fraction, kept)))


@pytest.mark.parametrize("spread", [0, 40, 100, 300, 1000])
def test_batches_with_bits_below_the_last_cut_are_exact(rng, spread):
    """Values far below the batch's largest leave rests below its third cut
    (they take the addition one at a time); beyond 2**900 the whole batch
    does; non-finite values are summed apart."""
    values = rng.standard_normal(5000) * 2.0 ** rng.integers(-spread, spread + 1, 5000).astype(np.float64)
    labels = rng.integers(-1, 2, 5000)
    expected = sum(Fraction(v) for v, label in zip(values.tolist(), labels.tolist()) if label != -1)
    assert _exact.total(*_many(values, labels, False), 0)[0] == expected * 2**_exact._SHIFT
    values[7], labels[7] = np.nan, 0
    assert math.isnan(_exact.value(*_many(values, labels, False), 0))


def test_pending_counts_are_zero_only_without_bits():
    """totals skips the bins of an accumulator whose pending count is 0: a
    carry leaves 1, never 0, and a merge or a restored state keeps bits counted."""
    sums = _exact.accumulators(3)
    one, two = (tuple(array[i:i + 1] for array in sums) for i in (1, 2))  # accumulators 1 and 2 as views
    _add_runs(*one, np.array([0.1, 3.0]), 600, 1)  # 1201 runs: past a carry (every 1000)
    _add_all(*two, np.full(1000, 0.3), np.empty(0))  # ends at a carry
    assert sums[1][0] == 0 and sums[1][1] >= 1 and sums[1][2] >= 1
    expected = [0, Fraction(0.1) * 600 + Fraction(3.0) * 600, Fraction(0.3) * 1000]
    assert [n for n, _ in _exact.totals(*sums)] == [e * 2**_exact._SHIFT for e in expected]
    state = _exact.export(*sums)
    state["pending"] = np.zeros(3, np.int64)  # as a state saved just after a carry used to be
    restored = _exact.accumulators(3)
    _exact.restore(*restored, state)
    merged = _exact.accumulators(3)
    _exact.merge_into(*merged, *restored)
    for i in range(3):
        assert _exact.total(*restored, i) == _exact.total(*sums, i) == _exact.total(*merged, i)
    assert merged[1][0] == 0


@pytest.mark.parametrize("exponent", [-1074, -1022, -1000, -960, -900, -880, -841, -839, -800, 0, 900, 1023])
@pytest.mark.parametrize("n", [1, 3, 600])
def test_batches_of_tiny_and_huge_values_are_exact(rng, exponent, n):
    """Down where the last cut would leave float64's normals (largest value below
    about 2**-840) the batch goes one value at a time; at every size it is exact."""
    values = np.ldexp(1.0 + rng.integers(0, 2**52, n) * 2.0**-52, exponent - rng.integers(0, 60, n))
    values[::2] *= -1
    values[0] = math.ldexp(1 + 2**-52, exponent)  # the largest, with its last bit set
    expected = sum(map(Fraction, values.tolist()))
    assert _exact.total(*_many(values, np.zeros(n, np.int64), False), 0)[0] == expected * 2**_exact._SHIFT


def test_a_variance_of_minus_zero_gives_a_standard_error_of_zero():
    # (0 * W - 1**2) / (W**2 * 2) underflows to -0.0 (squares rounded once can leave it negative)
    variance_below_zero = _exact.standard_error((0, 0.0), (1, 0.0), (2**3000, 0.0), 3)
    assert variance_below_zero == 0.0 and math.copysign(1.0, variance_below_zero) == 1.0
