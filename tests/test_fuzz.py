"""Fuzz: the public functions on random dtypes, magnitudes, shapes, layouts and
options, on the CPU and on the GPU backend (Numba's simulator, device arrays).

Each example asserts the contract: the result equals an independent float64
reference within the dtype's tolerance, or the call raises ValueError or
TypeError exactly where the reference refuses the input; any other exception
fails.  Both backends are held to the same reference, so they agree.  The
simulator runs Python threads: GPU examples stay small (at most 6 rows of 40
classes) and bfloat16 runs on the CPU only (Numba device arrays have no such
dtype).
"""

import numpy as np
import pytest
import reference as ref
from conftest import TOLERANCES, ml_dtypes
from hypothesis import event, given, settings
from hypothesis import strategies as st

import nbce

try:
    from numba import cuda

    import nbce.cuda as cuda_backend
except ImportError:  # no numba-cuda: the CPU half of each example still runs
    cuda_backend = None

DTYPES = ["float64", "float32", "float16"] + (["bfloat16"] if ml_dtypes is not None else [])
INT_DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
INT64 = np.iinfo(np.int64)
FUZZ = settings(max_examples=60, deadline=None)


@pytest.fixture(scope="module", autouse=True)
def small_blocks():
    """8 threads per block, as in test_cuda.py: rows span several blocks."""
    if cuda_backend is None:
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cuda_backend, "THREADS", 8)
        patch.setattr(cuda_backend, "MIN_ELEMENTS_PER_THREAD", 4)
        yield


def dtype_of(name):
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def finfo(name):
    return ml_dtypes.finfo(ml_dtypes.bfloat16) if name == "bfloat16" else np.finfo(name)


# ---------------------------------------------------------------- the reference


class Refused(Exception):
    """The reference's verdict that the input is invalid: nbce must raise ``kind``."""

    def __init__(self, kind, why):
        super().__init__(why)
        self.kind = kind


def log_softmax_rows(x):
    """(x - m) - log sum exp(x - m) per row of a float64 (R, C) array; a row
    holding NaN or +inf, or only -inf, is NaN throughout (PyTorch)."""
    out = np.full(x.shape, np.nan)
    for i, row in enumerate(x):
        if np.isnan(row).any() or np.isposinf(row).any() or np.isneginf(row).all():
            continue
        d = row - row.max()
        out[i] = d - np.log(np.sum(np.exp(d)))
    return out


def logsumexp_rows(x):
    out = np.empty(len(x))
    for i, row in enumerate(x):
        if np.isnan(row).any():
            out[i] = np.nan
        elif np.isposinf(row).any() or np.isneginf(row).all():
            out[i] = row.max()
        else:
            m = row.max()
            out[i] = m + np.log(np.sum(np.exp(row - m)))
    return out


def entropy_rows(x):
    lp = log_softmax_rows(x)
    p = np.exp(lp)
    with np.errstate(invalid="ignore"):
        return -np.sum(np.where(p > 0, p * lp, 0.0), axis=1) + np.where(np.isnan(lp).any(axis=1), np.nan, 0.0)


def class_rows(x, axis):
    """(rows, C) float64 view of ``x`` with ``axis`` last."""
    moved = np.moveaxis(np.asarray(x).astype(np.float64), axis, -1)
    return moved.reshape(-1, moved.shape[-1]), moved.shape[:-1]


def reference_row_function(name, x, axis):
    if x.ndim == 0:
        raise Refused(ValueError, "scalar")
    if x.shape[axis] == 0:
        raise Refused(ValueError, "no classes")
    rows, batch = class_rows(x, axis)
    if name in ("log_softmax", "softmax"):
        lp = log_softmax_rows(rows)
        out = np.exp(lp) if name == "softmax" else lp
        return np.moveaxis(out.reshape(*batch, x.shape[axis]), -1, axis)
    return (logsumexp_rows(rows) if name == "logsumexp" else entropy_rows(rows)).reshape(batch)


def check_options(reduction, label_smoothing, input_type, weight, n_classes):
    if reduction not in ("none", "mean", "sum") or input_type not in ("logits", "log_probs", "probs"):
        raise Refused(ValueError, "option")
    if isinstance(label_smoothing, (str, bool)):
        raise Refused(TypeError, "label_smoothing")
    if not 0 <= label_smoothing <= 1:
        raise Refused(ValueError, "label_smoothing")
    if weight is not None and np.shape(weight) != (n_classes,):
        raise Refused(ValueError, "weight shape")


def log_probabilities(rows, input_type):
    if input_type == "logits":
        return log_softmax_rows(rows)
    if input_type == "log_probs":
        return rows
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.maximum(np.log(rows), -100.0)


def reduce(loss, reduction, denominator):
    if reduction == "none":
        return loss
    with np.errstate(over="ignore", invalid="ignore"):
        total = loss.sum()
    if reduction == "sum":
        return total
    # "mean" over zero target weight is NaN, as in PyTorch, even when label
    # smoothing adds a non-zero sum
    return total / denominator if denominator else np.float64(np.nan)


def reference_cross_entropy(x, target, axis, weight, ignore_index, reduction, label_smoothing, input_type):
    if x.shape[axis] == 0:
        raise Refused(ValueError, "no classes")
    n_classes = x.shape[axis]
    check_options(reduction, label_smoothing, input_type, weight, n_classes)
    rows, batch = class_rows(x, axis)
    lp = log_probabilities(rows, input_type)
    w = np.ones(n_classes) if weight is None else np.asarray(weight).astype(np.float64)
    eps = float(label_smoothing)
    with np.errstate(invalid="ignore", over="ignore"):
        smooth = eps / n_classes * np.sum(np.where(w != 0, w * lp, 0.0), axis=1) if eps else np.zeros(len(rows))
        if target.dtype.kind in "iu":
            if not INT64.min <= ignore_index <= INT64.max:
                raise Refused(ValueError, "ignore_index beyond int64")
            if target.shape != batch:
                raise Refused(ValueError, "target shape")
            loss = np.zeros(len(rows))
            target_weight = np.zeros(len(rows))
            for i, t in enumerate(int(v) for v in target.reshape(-1)):
                if t == ignore_index:
                    continue
                if not 0 <= t < n_classes:
                    raise Refused(ValueError, f"target {t}")
                loss[i] = -(1 - eps) * w[t] * lp[i, t] - smooth[i]
                target_weight[i] = w[t]
            return reduce(loss, reduction, target_weight.sum()).reshape(batch if reduction == "none" else ())
        if target.shape != x.shape:
            raise Refused(ValueError, "target shape")
        y, _ = class_rows(target, axis)
        a = w * ((1 - eps) * y + eps / n_classes)
        loss = -np.sum(np.where(a != 0, a * lp, 0.0), axis=1)
        return reduce(loss, reduction, len(rows)).reshape(batch if reduction == "none" else ())


def reference_binary(from_logits, x, y, weight, pos_weight, reduction):
    x, y = x.astype(np.float64), y.astype(np.float64)
    w = np.float64(1.0) if weight is None else weight.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if from_logits:
            pw = np.float64(1.0) if pos_weight is None else pos_weight.astype(np.float64)
            softplus = np.log1p(np.exp(-np.abs(x))) + np.maximum(-x, 0.0)
            loss = w * ((1 - y) * x + (1 + (pw - 1) * y) * softplus)
        else:
            if ((x < 0) | (x > 1)).any() or ((y < 0) | (y > 1)).any():
                raise Refused(ValueError, "outside [0, 1]")
            loss = -w * (y * np.maximum(np.log(x), -100) + (1 - y) * np.maximum(np.log(1 - x), -100))
    loss = np.broadcast_to(loss, x.shape)
    return reduce(loss, reduction, loss.size).reshape(x.shape if reduction == "none" else ())


# ---------------------------------------------------------------- running and comparing


def outcome(call):
    """The call's result, or the ValueError/TypeError it raised (anything else propagates and fails)."""
    try:
        return call()
    except (ValueError, TypeError) as error:
        return error


def expected_outcome(call):
    try:
        return call()
    except Refused as refusal:
        return refusal


def assert_matches(got, expected, dtype, where):
    event(f"{where.split()[0]}: " + (f"refused ({expected})" if isinstance(expected, Refused) else "a result"))
    if isinstance(expected, Refused):
        assert isinstance(got, expected.kind), f"{where}: expected {expected.kind.__name__} ({expected}), got {got!r}"
        return
    assert not isinstance(got, Exception), f"{where}: raised {got!r}, expected {expected!r}"
    result_dtype = np.float64 if dtype == "float64" else np.float32
    got = np.asarray(got)
    assert got.dtype == result_dtype, f"{where}: dtype {got.dtype}"
    assert got.shape == np.shape(expected), f"{where}: shape {got.shape}, expected {np.shape(expected)}"
    with np.errstate(over="ignore"):  # beyond float32's range is inf in a float32 result
        expected = np.asarray(expected).astype(result_dtype).astype(np.float64)
    rtol, atol = TOLERANCES[dtype]
    got = got.astype(np.float64)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, err_msg=where)


def on_gpu(dtype):
    return cuda_backend is not None and dtype != "bfloat16"


def host(result):
    return result if isinstance(result, Exception) else np.asarray(result.copy_to_host())


# ---------------------------------------------------------------- strategies

NORMAL = st.floats(-30, 30)
HUGE = st.builds(lambda sign, exponent: sign * 10.0 ** exponent, st.sampled_from([-1.0, 1.0]), st.floats(12, 39))
SPECIAL = st.sampled_from([-np.inf, np.inf, np.nan])
ELEMENTS = {
    "normal": NORMAL,
    "masked": st.one_of(NORMAL, st.just(-np.inf)),
    "huge": HUGE,
    "mixed": st.one_of(NORMAL, HUGE, st.just(-np.inf)),
    "special": st.one_of(NORMAL, NORMAL, SPECIAL),
}


@st.composite
def shapes(draw, max_classes=40):
    """(shape, class axis): 1 to 3 axes, at most 6 rows (0 included), 1 to ``max_classes`` classes."""
    # mostly short rows: the simulator's time grows with the threads a row gets
    n_classes = draw(st.one_of(st.integers(1, 4), st.integers(1, 8), st.integers(9, max_classes)))
    batch = draw(st.lists(st.integers(1, 3), min_size=0, max_size=2).filter(lambda b: np.prod(b) <= 6))
    if batch and draw(st.integers(0, 9)) == 7:  # no rows, now and then
        batch[draw(st.integers(0, len(batch) - 1))] = 0
    axis = draw(st.integers(0, len(batch)))
    return tuple(batch[:axis]) + (n_classes,) + tuple(batch[axis:]), axis


def cast(values, dtype):
    """float64 values in ``dtype``: finite ones clipped to its range (so huge stays finite)."""
    biggest = float(finfo(dtype).max)
    with np.errstate(invalid="ignore"):
        clipped = np.where(np.isfinite(values), np.clip(values, -biggest, biggest), values)
    return clipped.astype(dtype_of(dtype))


@st.composite
def logits(draw, dtype, shape):
    regime = draw(st.sampled_from(["normal", "normal", "masked", "huge", "equal", "mixed", "special"]))
    size = int(np.prod(shape))
    if regime == "equal":  # equal and next-to-equal logits of one magnitude, the dtype's max included
        magnitude = draw(st.one_of(HUGE, st.floats(0.5, 30), st.floats(-30, -0.5), st.just(float(finfo(dtype).max))))
        x = cast(np.full(size, magnitude), dtype)
        word = np.dtype(f"u{x.itemsize}")
        steps = np.array(draw(st.lists(st.integers(0, 2), min_size=size, max_size=size)), dtype=word)
        x = (x.view(word) - steps).view(x.dtype)  # toward zero: stays finite
    else:
        x = cast(np.array(draw(st.lists(ELEMENTS[regime], min_size=size, max_size=size)), dtype=np.float64), dtype)
    return x.reshape(shape)


LAYOUTS = ["contiguous", "reversed", "strided", "fortran"]


def laid_out(values, layout):
    """(host view, device view) holding ``values`` in ``layout``; the device view
    is None where the dtype cannot go to the GPU."""
    ndim = values.ndim
    device = on_gpu(values.dtype.name)
    if layout == "contiguous":
        return values, cuda.to_device(values) if device else None
    if layout == "fortran":
        f = np.asfortranarray(values)
        return f, cuda.to_device(f) if device else None
    if layout == "reversed":
        flip = (slice(None, None, -1),) * ndim
        base = np.ascontiguousarray(values[flip])
        return base[flip], cuda.to_device(base)[flip] if device else None
    every_other = (slice(None, None, 2),) * ndim  # strided along every axis
    base = np.zeros(tuple(2 * n for n in values.shape), values.dtype)
    base[every_other] = values
    return base[every_other], cuda.to_device(base)[every_other] if device else None


def compare_backends(dtype, expected, cpu_call, gpu_call, where):
    """Run on the CPU (and on the GPU when it takes the dtype); both must match the reference."""
    assert_matches(outcome(cpu_call), expected, dtype, f"cpu {where}")
    if gpu_call and on_gpu(dtype):
        assert_matches(host(outcome(gpu_call)), expected, dtype, f"gpu {where}")


# ---------------------------------------------------------------- properties


@FUZZ
@given(st.data(), st.sampled_from(DTYPES), shapes(), st.sampled_from(LAYOUTS),
       st.sampled_from(["logsumexp", "log_softmax", "softmax", "entropy"]))
def test_row_functions(data, dtype, shape_axis, layout, name):
    shape, axis = shape_axis
    x = data.draw(logits(dtype, shape))
    on_host, on_device = laid_out(x, layout)
    axis = data.draw(st.sampled_from([axis, axis - len(shape)]))
    function = getattr(nbce, name)
    expected = expected_outcome(lambda: reference_row_function(name, x, axis))
    compare_backends(dtype, expected, lambda: function(on_host, axis=axis),
                     on_device is not None and (lambda: function(on_device, axis=axis)), f"{name} {x!r} axis={axis}")


def extreme_integers(dtype):
    info = np.iinfo(dtype)
    return [int(info.min), int(info.max), int(info.max) - 1, int(info.min) + 1]


IGNORE_INDICES = st.one_of(st.just(-100), st.integers(-3, 45))
EXTREME_IGNORE_INDICES = [INT64.min, INT64.max, 2**63, 2**64 - 1, -(2**63) - 1, 2**64 - 2**40, 255, 127, -128,
                          2**32 - 1]
OPTIONS = st.fixed_dictionaries({
    "weight_kind": st.sampled_from([None, "float64", "float32", "int64", "bfloat16", "zeros"]),
    "reduction": st.sampled_from(["none", "mean", "sum"]),
    "label_smoothing": st.one_of(st.just(0.0), st.floats(0, 1), st.just(1.0)),
    "input_type": st.sampled_from(["logits", "logits", "log_probs", "probs"]),
})
INVALID_OPTIONS = [("weight_kind", "wrong_length"), ("reduction", "max"), ("label_smoothing", 1.5),
                   ("label_smoothing", -0.1), ("label_smoothing", "0.1"), ("input_type", "scores")]


def options_drawn(data, drawn):
    """The drawn options, one of them made invalid in about one example in ten."""
    drawn = dict(drawn)
    if data.draw(st.integers(0, 9)) == 7:
        key, value = data.draw(st.sampled_from(INVALID_OPTIONS))
        drawn[key] = value
    return drawn.pop("weight_kind"), drawn


def class_weights(draw, kind, n_classes):
    if kind is None:
        return None
    if kind == "wrong_length":
        return np.ones(n_classes + 1)
    values = np.array(draw(st.lists(st.floats(0, 3), min_size=n_classes, max_size=n_classes)))
    if kind == "zeros":
        values[::2] = 0.0
        return values
    if kind == "int64":
        return np.round(values).astype(np.int64)
    return values.astype(dtype_of(kind))


@FUZZ
@given(st.data(), st.sampled_from(DTYPES), shapes(), st.sampled_from(LAYOUTS), st.sampled_from(INT_DTYPES),
       IGNORE_INDICES, st.sampled_from(["device", "host"]), OPTIONS)
def test_cross_entropy_class_indices(data, dtype, shape_axis, layout, target_dtype, ignore_index, target_place,
                                     drawn):
    shape, axis = shape_axis
    weight_kind, drawn = options_drawn(data, drawn)
    x = data.draw(logits(dtype, shape))
    on_host, on_device = laid_out(x, layout)
    n_classes = shape[axis]
    batch = shape[:axis] + shape[axis + 1:]
    if data.draw(st.integers(0, 4)) == 3:  # now and then an extreme ignore_index
        ignore_index = data.draw(st.sampled_from(EXTREME_IGNORE_INDICES))
    info = np.iinfo(target_dtype)
    candidates = [v for v in [*range(n_classes), ignore_index, n_classes, -1, *extreme_integers(target_dtype)]
                  if info.min <= v <= info.max]
    size = int(np.prod(batch))
    if data.draw(st.integers(0, 3)) == 2:  # now and then out-of-range or extreme values among the classes
        values = data.draw(st.lists(st.sampled_from(candidates), min_size=size, max_size=size))
    else:  # else valid classes and ignore_index
        kept = [v for v in candidates if 0 <= v < n_classes or v == ignore_index]
        values = data.draw(st.lists(st.sampled_from(kept), min_size=size, max_size=size))
    target = np.array([int(v) for v in values], dtype=object).astype(target_dtype).reshape(batch)
    weight = class_weights(data.draw, weight_kind, n_classes)
    options = dict(axis=axis, weight=weight, ignore_index=ignore_index, **drawn)
    expected = expected_outcome(lambda: reference_cross_entropy(x, target, **options))
    gpu_target = cuda.to_device(target) if on_device is not None and target_place == "device" else target
    where = f"cross_entropy({x!r}, {target!r}, **{options})"
    compare_backends(dtype, expected, lambda: nbce.cross_entropy(on_host, target, **options),
                     on_device is not None and (lambda: nbce.cross_entropy(on_device, gpu_target, **options)), where)


@FUZZ
@given(st.data(), st.sampled_from(DTYPES), shapes(), st.sampled_from(LAYOUTS), st.sampled_from(DTYPES), OPTIONS)
def test_cross_entropy_soft_targets(data, dtype, shape_axis, layout, target_dtype, drawn):
    shape, axis = shape_axis
    weight_kind, drawn = options_drawn(data, drawn)
    x = data.draw(logits(dtype, shape))
    on_host, on_device = laid_out(x, layout)
    n_classes = shape[axis]
    raw = np.array(data.draw(st.lists(st.one_of(st.floats(0, 1), st.just(0.0)), min_size=x.size,
                                      max_size=x.size))).reshape(shape)
    if data.draw(st.booleans()):  # rows that sum to one
        raw = raw / np.where(raw.sum(axis=axis, keepdims=True) > 0, raw.sum(axis=axis, keepdims=True), 1.0)
    target = cast(raw, target_dtype)
    weight = class_weights(data.draw, weight_kind, n_classes)
    options = dict(axis=axis, weight=weight, **drawn)
    expected = expected_outcome(lambda: reference_cross_entropy(x, target, ignore_index=-100, **options))
    # The GPU gets the probabilities on the device, or on the host (copied there).
    gpu_target = None
    if on_device is not None and on_gpu(target_dtype):
        gpu_target = cuda.to_device(target) if data.draw(st.booleans()) else target
    where = f"cross_entropy({x!r}, {target!r}, **{options})"
    compare_backends(dtype, expected, lambda: nbce.cross_entropy(on_host, target, **options),
                     gpu_target is not None and (lambda: nbce.cross_entropy(on_device, gpu_target, **options)),
                     where)


@FUZZ
@given(st.data(), st.sampled_from(DTYPES), shapes(max_classes=12), st.sampled_from(LAYOUTS), st.booleans(),
       st.sampled_from([None, "scalar", "last", "full"]), st.sampled_from([None, "scalar", "last", "full"]),
       st.sampled_from(["none", "mean", "sum"]))
def test_binary(data, dtype, shape_axis, layout, from_logits, weight_kind, pos_weight_kind, reduction):
    shape, _ = shape_axis
    if from_logits:
        x = data.draw(logits(dtype, shape))
    else:
        x = cast(np.array(data.draw(st.lists(st.one_of(st.floats(0, 1), st.sampled_from([0.0, 1.0, np.nan, 1.5])),
                                             min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))), dtype)
        x = x.reshape(shape)
    y = np.array(data.draw(st.lists(st.one_of(st.floats(0, 1), st.sampled_from([0.0, 1.0])),
                                    min_size=x.size, max_size=x.size))).reshape(shape).astype(x.dtype)
    on_host, on_device = laid_out(x, layout)

    def operand(kind):
        if kind is None:
            return None
        operand_shape = {"scalar": (), "last": shape[-1:], "full": shape}[kind]
        return np.array(data.draw(st.lists(st.floats(0, 3), min_size=int(np.prod(operand_shape)),
                                           max_size=int(np.prod(operand_shape))))).reshape(operand_shape)

    weight, pos_weight = operand(weight_kind), operand(pos_weight_kind) if from_logits else None
    expected = expected_outcome(lambda: reference_binary(from_logits, x, y, weight, pos_weight, reduction))
    if from_logits:
        def call(a, b):
            return nbce.binary_cross_entropy_with_logits(a, b, weight=weight, pos_weight=pos_weight,
                                                         reduction=reduction)
    else:
        def call(a, b):
            return nbce.binary_cross_entropy(a, b, weight=weight, reduction=reduction)
    where = f"binary from_logits={from_logits} {x!r} {y!r} weight={weight!r} pos_weight={pos_weight!r} {reduction}"
    compare_backends(dtype, expected, lambda: call(on_host, y),
                     on_device is not None and (lambda: call(on_device, cuda.to_device(y))), where)


@settings(max_examples=15, deadline=None)
@given(st.data(), st.sampled_from(DTYPES), shapes(), st.sampled_from(["normal", "masked", "huge", "mixed"]),
       st.sampled_from(INT_DTYPES), st.sampled_from([(1,), (1, 2), (1, 5)]), st.booleans())
def test_evaluate(data, dtype, shape_axis, regime, target_dtype, top_k, weighted):
    """nbce.evaluate on finite and masked logits (NaN and +inf rows have their
    own rule: every figure NaN) against the reference's metrics."""
    shape, axis = shape_axis
    values = data.draw(st.lists(ELEMENTS[regime], min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    x = cast(np.array(values, dtype=np.float64), dtype).reshape(shape)
    n_classes = shape[axis]
    batch = shape[:axis] + shape[axis + 1:]
    classes = [v for v in [*range(n_classes), -100] if np.iinfo(target_dtype).min <= v]
    target = np.array(data.draw(st.lists(st.sampled_from(classes), min_size=int(np.prod(batch)),
                                         max_size=int(np.prod(batch)))), dtype=target_dtype).reshape(batch)
    weight = None
    if weighted:
        weight = np.array(data.draw(st.lists(st.floats(0, 3), min_size=target.size,
                                             max_size=target.size))).reshape(batch)
    expected = ref.evaluation(x, target, axis=axis, top_k=top_k, weight=weight)
    rows, _ = class_rows(x, axis)
    if np.isneginf(rows[target.reshape(-1) != -100]).all(axis=1).any():
        expected["entropy"] = np.nan  # a row of -inf only has NaN entropy (the reference's sum skips its NaN)

    def check(result, where):
        rtol, atol = TOLERANCES[dtype]
        assert (result.count, result.ignored) == (expected["count"], expected["ignored"]), where
        for name in ("loss", "entropy"):
            np.testing.assert_allclose(getattr(result, name), expected[name], rtol=rtol, atol=atol,
                                       err_msg=f"{where} {name}")
        for k in top_k:
            np.testing.assert_allclose(result.accuracy[k], expected["accuracy"][k], rtol=1e-12, atol=1e-12,
                                       err_msg=f"{where} top-{k}")

    where = f"evaluate({x!r}, {target!r}, axis={axis}, top_k={top_k}, weight={weight!r})"
    check(nbce.evaluate(x, target, axis=axis, top_k=top_k, weight=weight, device="cpu"), f"cpu {where}")
    if on_gpu(dtype):
        d_weight = None if weight is None else cuda.to_device(weight)
        check(nbce.evaluate(cuda.to_device(x), cuda.to_device(target), axis=axis, top_k=top_k, weight=d_weight),
              f"gpu {where}")
