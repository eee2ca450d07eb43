"""What the compiler made: the hot loops must be vector code.

Cached functions cannot be inspected, so the helpers are recompiled here from
their Python source with the package's own fast-math flags.
"""

import re

import numpy as np
import pytest
from numba import njit

from nbce._config import ELEMENTWISE_JIT_OPTIONS, FASTMATH, JIT_OPTIONS
from nbce.cpu import _binary, _rows

# packed single/double arithmetic (SSE "ps"/"pd" on xmm, AVX on ymm, AVX-512 on zmm)
PACKED_FMA_OR_MUL = re.compile(r"\bv?(?:fn?m(?:add|sub)\d*|mul)p[sd]\s")
PACKED_INT_MAX = re.compile(r"\bv?pmax(?:s[dq]|u[dq])\s|\bvpcmpgtq\s")


def _asm(helper, *args, options=None):
    """``helper`` recompiled with ``options`` (default: the fast-math flags alone)."""
    fresh = njit(**{**(options or dict(fastmath=set(FASTMATH))), "cache": False})(helper.py_func)
    fresh(*args)
    return fresh.inspect_asm(fresh.signatures[0])


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_sum_of_exponentials_is_vectorized(dtype):
    block = np.zeros(2048, dtype=np.float32).astype(dtype)
    if dtype == "float16":
        block = block.view(np.int16)
    shift = np.float64(0.0) if dtype == "float64" else np.float32(0.0)
    asm = _asm(_rows._block_sum_exp, block, shift)
    assert len(PACKED_FMA_OR_MUL.findall(asm)) >= 6, "polynomial exp did not vectorize"
    assert "call" not in "".join(line for line in asm.splitlines() if "exp" in line.lower() and "call" in line)


@pytest.mark.parametrize("with_moment", [False, True])
def test_split_sum_of_the_max_block_is_vectorized(with_moment):
    asm = _asm(_rows._block_sums_split, np.zeros(2048, np.float32), np.float32(0.0), with_moment)
    assert len(PACKED_FMA_OR_MUL.findall(asm)) >= 6


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_block_extrema_is_vectorized(dtype):
    asm = _asm(_rows._block_extrema, np.zeros(2048, dtype))
    assert PACKED_INT_MAX.search(asm), "integer-key max did not vectorize"


def test_float16_words_widen_in_registers():
    asm = _asm(_rows._block_extrema, np.zeros(2048, np.int16))
    # F16C's vcvtph2ps where available, otherwise a software conversion — never a libcall per element
    assert "vcvtph2ps" in asm or "__extendhfsf2" not in asm


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_count_above_the_target_is_vectorized(dtype):
    block = np.zeros(2048, dtype=np.float32).astype(dtype)
    pivot = np.float64(0.0) if dtype == "float64" else np.float32(0.0)
    if dtype == "float16":
        block = block.view(np.int16)
    asm = _asm(_rows._count_above, block, pivot)
    assert re.search(r"\bv?cmp\w*p[sd]\s", asm), "comparison did not vectorize"


def _calls_numba_functions(helper, *args, options):
    """The Numba functions that ``helper``'s machine code still calls (none: all inlined)."""
    fresh = njit(**{**options, "cache": False})(helper.py_func)
    fresh(*args)
    signature = fresh.signatures[0]
    own = fresh.overloads[signature].fndesc.mangled_name
    return {name for name in re.findall(r"call [^@\n]*@(_ZN\w+)", fresh.inspect_llvm(signature)) if name != own}


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_binary_losses_are_vectorized(dtype):
    """The element-wise binary losses (exp, log1p, log, divisions) become packed code."""
    values = np.zeros(512, dtype=np.float32).astype(dtype)
    compute = np.float64 if dtype == "float64" else np.float32
    if dtype == "float16":
        values = values.view(np.int16)
    weight, out = np.ones(512), np.zeros(512, compute)
    for helper, args in [(_binary.logits_losses, (values, values, weight, weight, out)),
                         (_binary.probability_losses, (values, values, weight, out))]:
        asm = _asm(helper, *args, options=ELEMENTWISE_JIT_OPTIONS)
        assert len(PACKED_FMA_OR_MUL.findall(asm)) >= 10, f"{helper.__name__} did not vectorize"
        assert re.search(r"\bv?divp[sd]\s", asm), f"{helper.__name__}: the divisions did not vectorize"
        assert not _calls_numba_functions(helper, *args, options=ELEMENTWISE_JIT_OPTIONS)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_binary_block_sum_is_vectorized(dtype):
    asm = _asm(_binary.float64_sum, np.zeros(512, dtype), options=JIT_OPTIONS)
    assert re.search(r"\bv?addpd\s+%[xyz]mm\d+, %[xyz]mm\d+, %[xyz]mm", asm) or re.search(r"\baddpd\s", asm)


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("exponentiate", [True, False])
def test_softmax_output_pass_is_vectorized(dtype, exponentiate):
    """exp((x - c) - log s) and (x - c) - log s become packed code in the row's compute type."""
    from nbce.cpu import _normalize

    row = np.zeros(2048, dtype=np.float32).astype(dtype)
    if dtype == "float16":
        row = row.view(np.int16)
    out = np.zeros(2048, np.float64 if dtype == "float64" else np.float32)
    args = (row, 0, 2048, 0.0, 0.0, exponentiate, out, 0)
    asm = _asm(_normalize.write_normalized, *args, options=ELEMENTWISE_JIT_OPTIONS)
    assert re.search(r"\bv?subp[sd]\s", asm), "(x - c) - log s did not vectorize"
    if exponentiate:
        assert len(PACKED_FMA_OR_MUL.findall(asm)) >= 6, "the exp of softmax did not vectorize"
    assert not _calls_numba_functions(_normalize.write_normalized, *args, options=ELEMENTWISE_JIT_OPTIONS)


def test_logarithms_of_a_group_of_rows_are_vectorized():
    """One vector loop of vlog, log1p and exp over the rows of a group: a loop
    reading and writing rows of one array, or a call left in it, stays scalar."""
    asm = _asm(_rows.log_stats_table, np.ones((_rows.N_SUMS, 64)), np.ones((_rows.N_LOGS, 64)), 64, True,
               options=ELEMENTWISE_JIT_OPTIONS)
    assert len(PACKED_FMA_OR_MUL.findall(asm)) >= 20


@njit(**{**JIT_OPTIONS, "cache": False})
def _four_rows_with_every_sum(base, offsets, pivots):
    # constant flags, as the kernels call it (``kernels._one_block_rows``)
    return _rows.short_rows_sums(base, offsets, 100, True, True, pivots)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_four_short_rows_are_summed_in_vectors(dtype):
    """Rows of one block are read four at a time at offsets of one array: the
    offsets are unsigned, so the loads take no negative-index wraparound and
    both passes (integer-key extrema, the split sum of exponentials) are
    vector code, four rows in each loop."""
    base = np.zeros(4 * 100, dtype=np.float32).astype(dtype)
    if dtype == "float16":
        base = base.view(np.int16)
    offsets = tuple(np.uint64(k * 100) for k in range(4))
    pivot = np.float64(0.0) if dtype == "float64" else np.float32(0.0)
    asm = _asm(_four_rows_with_every_sum, base, offsets, (pivot,) * 4, options=JIT_OPTIONS)
    assert len(PACKED_FMA_OR_MUL.findall(asm)) >= 24, "the four rows' exponentials did not vectorize"
    assert PACKED_INT_MAX.search(asm), "the four rows' integer-key extrema did not vectorize"


# --- vector width (``nbce.cpu._vectors``) ---------------------------------------

def _host_has_avx512():
    import llvmlite.binding as ll

    return bool(ll.get_host_cpu_features().get("avx512f", False))


def _functions_asking_for_512_bits(llvm_ir):
    """Names of the functions defined in ``llvm_ir`` whose attributes hold
    ``"prefer-vector-width"="512"`` and ``noinline``."""
    from nbce.cpu._vectors import PREFER_512_BITS

    groups = {m.group(1) for m in re.finditer(r"^attributes #(\d+) = \{([^}]*)\}", llvm_ir, re.M)
              if PREFER_512_BITS in m.group(2) and "noinline" in m.group(2).split()}
    return {m.group(1) for m in re.finditer(r"^define [^@\n]*@([\w.$]+)\([^\n]*\) [^\n{]*#(\d+)", llvm_ir, re.M)
            if m.group(2) in groups}


def test_a_hot_helper_asks_for_512_bit_vectors():
    """``wide_vectors()`` gives its function the width attribute (and keeps it
    from being inlined into a caller compiled without it); where the
    processor has AVX-512 the loop then runs on 512-bit registers, also on
    Intel's server chips, for which LLVM otherwise picks 256 bits."""
    block = np.zeros(2048, np.float32)
    fresh = njit(**{**JIT_OPTIONS, "cache": False})(_rows._block_sum_exp.py_func)
    fresh(block, np.float32(0.0))
    signature = fresh.signatures[0]
    own = fresh.overloads[signature].fndesc.mangled_name
    assert own in _functions_asking_for_512_bits(fresh.inspect_llvm(signature))
    if _host_has_avx512():
        assert "zmm" in fresh.inspect_asm(signature), "512-bit vectors asked for, not used"


def test_a_prange_body_asks_for_512_bit_vectors():
    """Numba compiles a ``prange`` body as a function of its own: the call in
    the body reaches it (a call before the loop would not)."""
    from nbce._config import PARALLEL_JIT_OPTIONS
    from nbce.cpu import _copy

    fresh = njit(**{**PARALLEL_JIT_OPTIONS, "cache": False})(_copy._copy_rows.py_func)
    source = np.ones((8, 64), np.float32)
    fresh(source, np.zeros_like(source))
    wide = _functions_asking_for_512_bits(fresh.inspect_llvm(fresh.signatures[0]))
    assert any("parfor_gufunc" in name for name in wide), wide


def test_every_prange_body_and_row_helper_asks_for_512_bit_vectors():
    """A kernel added later cannot forget it: each ``prange`` loop of the CPU
    backend starts with ``wide_vectors()``, and so does each helper that
    loops over a block or a row's entries."""
    import ast
    import inspect
    import pathlib

    import nbce.cpu

    def starts_with_the_call(body):
        statements = [s for s in body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        first = statements[0]
        return (isinstance(first, ast.Expr) and isinstance(first.value, ast.Call)
                and getattr(first.value.func, "id", None) == "wide_vectors")

    loops = 0
    for path in pathlib.Path(nbce.cpu.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.For) and isinstance(node.iter, ast.Call)
                    and getattr(node.iter.func, "id", None) == "prange"):
                loops += 1
                assert starts_with_the_call(node.body), f"{path.name}:{node.lineno}: prange body without wide_vectors()"
    assert loops >= 7
    helpers = [_rows._block_extrema_above, _rows._block_sum_exp, _rows._block_sum_exp_extrema,
               _rows._block_sums_moment_extrema, _rows._block_sums_split, _rows._count_above, _rows.row_sums,
               _rows.log_stats_table, _binary.logits_losses, _binary.probability_losses, _binary.float64_sum]
    for helper in helpers:
        tree = ast.parse(inspect.getsource(helper.py_func))
        assert starts_with_the_call(tree.body[0].body), helper.__name__


@pytest.mark.skipif(not _host_has_avx512(), reason="the processor has no AVX-512")
def test_the_cross_entropy_kernel_runs_on_512_bit_registers(monkeypatch):
    import nbce
    import nbce.cpu as cpu

    launched = {}
    real_launch = cpu.launch

    def record(kernel, work, *args):
        launched[kernel.__name__] = (kernel, args)
        return real_launch(kernel, work, *args)

    monkeypatch.setattr(cpu, "launch", record)
    logits = np.random.default_rng(0).standard_normal((64, 100), dtype=np.float32)
    nbce.cross_entropy(logits, np.arange(64) % 100)
    kernel, args = launched["class_index_rows"]
    options = {key: value for key, value in kernel.targetoptions.items() if key != "nopython"}
    fresh = njit(**{**options, "cache": False})(kernel.py_func)
    fresh(*args)
    asm = fresh.inspect_asm(fresh.signatures[0])
    assert asm.count("zmm") > asm.count("ymm"), "the kernel's loops kept 256-bit vectors"
