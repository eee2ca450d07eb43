"""What the compiler made: the hot loops must be vector code.

Cached functions cannot be inspected, so the helpers are recompiled here from
their Python source with the package's own fast-math flags.
"""

import re

import numpy as np
import pytest
from numba import njit

from nbce._config import FASTMATH
from nbce.cpu import _rows

# packed single/double arithmetic (SSE "ps"/"pd" on xmm, AVX on ymm, AVX-512 on zmm)
PACKED_FMA_OR_MUL = re.compile(r"\bv?(?:fn?m(?:add|sub)\d*|mul)p[sd]\s")
PACKED_INT_MAX = re.compile(r"\bv?pmax(?:s[dq]|u[dq])\s|\bvpcmpgtq\s")


def _asm(helper, *args):
    fresh = njit(fastmath=set(FASTMATH))(helper.py_func)
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
