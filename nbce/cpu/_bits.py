"""Bit-level helpers, written as LLVM intrinsics so they vectorize.

Numba's CPU target has no float16 type, so half-precision logits reach the
kernels as raw 16-bit words.  The storage convention (set in ``nbce._arrays``):

* IEEE float16 words travel as ``int16``;
* bfloat16 words travel as ``uint16``.

``widen`` turns a word (or a float) into the float type the kernels compute
in: float32 for halves and float32, float64 for float64.
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload


def widen(value):  # pragma: no cover - replaced by the overload in compiled code
    raise NotImplementedError


@intrinsic
def _fp16_word_to_float32(typingctx, word):
    """float16 bits -> float32 (``fpext half``; F16C's vcvtph2ps on x86)."""
    if word != types.int16:
        return None

    def codegen(context, builder, sig, args):
        half = builder.bitcast(args[0], ir.HalfType())
        return builder.fpext(half, ir.FloatType())

    return types.float32(types.int16), codegen


@intrinsic
def _bf16_word_to_float32(typingctx, word):
    """bfloat16 bits are the high half of a float32: shift them into place."""
    if word != types.uint16:
        return None

    def codegen(context, builder, sig, args):
        wide = builder.zext(args[0], ir.IntType(32))
        return builder.bitcast(builder.shl(wide, ir.Constant(ir.IntType(32), 16)), ir.FloatType())

    return types.float32(types.uint16), codegen


@overload(widen)
def _widen_impl(value):
    if value == types.int16:
        return lambda value: _fp16_word_to_float32(value)
    if value == types.uint16:
        return lambda value: _bf16_word_to_float32(value)
    if value in (types.float32, types.float64):
        return lambda value: value
    raise TypingError(f"nbce kernels cannot read {value}")


def _float_and_int(fty):
    width = fty.bitwidth
    return (ir.FloatType() if width == 32 else ir.DoubleType()), ir.IntType(width)


@intrinsic
def order_key(typingctx, value):
    """Map a float to a signed integer of the same width with the same order.

    Integer max reductions vectorize without any NaN assumption, unlike a
    compare-and-select on floats.  Non-negative floats keep their bits;
    negative ones get their magnitude bits flipped.  The map is its own
    inverse.  Positive NaNs sort above +inf, negative NaNs below -inf.
    """
    if value not in (types.float32, types.float64):
        return None
    ity = types.int32 if value == types.float32 else types.int64

    def codegen(context, builder, sig, args):
        _, irint = _float_and_int(value)
        bits = builder.bitcast(args[0], irint)
        sign = builder.ashr(bits, ir.Constant(irint, value.bitwidth - 1))
        magnitude_mask = builder.lshr(sign, ir.Constant(irint, 1))
        return builder.xor(bits, magnitude_mask)

    return ity(value), codegen


@intrinsic
def float64_bits(typingctx, value):
    """The IEEE bits of a float64 as an int64 (a register bitcast, no memory)."""
    if value != types.float64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(value), codegen


@intrinsic
def key_to_float(typingctx, key, like):
    """Inverse of ``order_key``; ``like`` only selects the float type."""
    if like not in (types.float32, types.float64) or not isinstance(key, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        irfloat, irint = _float_and_int(like)
        bits = args[0]
        if key.bitwidth != like.bitwidth:
            bits = builder.trunc(bits, irint) if key.bitwidth > like.bitwidth else builder.sext(bits, irint)
        sign = builder.ashr(bits, ir.Constant(irint, like.bitwidth - 1))
        restored = builder.xor(bits, builder.lshr(sign, ir.Constant(irint, 1)))
        return builder.bitcast(restored, irfloat)

    return like(key, like), codegen


@intrinsic
def scale_by_power_of_two(typingctx, mantissa, exponent):
    """``mantissa * 2**exponent`` for an integral float ``exponent``.

    2**n is built from exponent bits in two halves, (m * 2**(n//2)) * 2**(n - n//2),
    so results down into the subnormal range and up to the largest finite
    float are exact powers of two.  ``exponent`` must lie in
    [-2*(bias+1), 2*bias]; callers clamp it.  Plain (non-fast) multiplies:
    reassociating them would underflow or overflow the scale factor.
    """
    if mantissa not in (types.float32, types.float64) or exponent != mantissa:
        return None
    width = mantissa.bitwidth
    mantissa_bits, bias = (23, 127) if width == 32 else (52, 1023)

    def codegen(context, builder, sig, args):
        irfloat, irint = _float_and_int(mantissa)
        m, e = args
        n = builder.fptosi(e, irint)
        n1 = builder.ashr(n, ir.Constant(irint, 1))
        n2 = builder.sub(n, n1)

        def power(k):
            biased = builder.add(k, ir.Constant(irint, bias))
            return builder.bitcast(builder.shl(biased, ir.Constant(irint, mantissa_bits)), irfloat)

        return builder.fmul(builder.fmul(m, power(n1)), power(n2))

    return mantissa(mantissa, exponent), codegen


@intrinsic
def biased_exponent_to_power_of_two(typingctx, shifted):
    """2**n from a float whose low mantissa bits hold the biased exponent n + bias.

    Shifting the bits left by the mantissa width moves them into the exponent
    field and pushes everything above out of the word.  Valid for n + bias in
    [1, 2*bias]: callers clamp.
    """
    if shifted not in (types.float32, types.float64):
        return None
    mantissa_bits = 23 if shifted.bitwidth == 32 else 52

    def codegen(context, builder, sig, args):
        irfloat, irint = _float_and_int(shifted)
        bits = builder.bitcast(args[0], irint)
        return builder.bitcast(builder.shl(bits, ir.Constant(irint, mantissa_bits)), irfloat)

    return shifted(shifted), codegen


def cast_like(value, like):  # pragma: no cover - replaced by the overload in compiled code
    """``value`` converted to the float type of ``like``."""
    raise NotImplementedError


@overload(cast_like)
def _cast_like_impl(value, like):
    if like == types.float32:
        return lambda value, like: np.float32(value)
    if like == types.float64:
        return lambda value, like: np.float64(value)
    raise TypingError(f"cast_like: expected a float32 or float64 model, got {like}")


def _log_split_constants(fty):
    """(offset, mantissa mask, mantissa bits) of ``log_exponent``/``log_mantissa``:
    the offset is the bit pattern of (about) sqrt(1/2)."""
    if fty.bitwidth == 32:
        return 0x3F3504F3, (1 << 23) - 1, 23
    return 0x3FE6A09E667F3BCD, (1 << 52) - 1, 52


def _log_split(builder, value, arg):
    """(bits of ``arg`` minus the offset, offset, mask, mantissa bits, IR float, IR int)."""
    irfloat, irint = _float_and_int(value)
    offset, mask, mantissa_bits = _log_split_constants(value)
    shifted = builder.sub(builder.bitcast(arg, irint), ir.Constant(irint, offset))
    return shifted, offset, mask, mantissa_bits, irfloat, irint


@intrinsic
def log_exponent(typingctx, value):
    """k, as a float, in x = 2**k * m with m in [sqrt(1/2), sqrt(2)), for a
    positive normal x (musl's split: one integer subtract and shift).

    The integer is narrowed to 32 bits before the conversion, so that float64
    vectors convert with a packed int32 -> double instruction on every x86.
    """
    if value not in (types.float32, types.float64):
        return None

    def codegen(context, builder, sig, args):
        shifted, _, _, mantissa_bits, irfloat, irint = _log_split(builder, value, args[0])
        k = builder.ashr(shifted, ir.Constant(irint, mantissa_bits))
        if value.bitwidth == 64:
            k = builder.trunc(k, ir.IntType(32))
        return builder.sitofp(k, irfloat)

    return value(value), codegen


@intrinsic
def log_mantissa(typingctx, value):
    """m in [sqrt(1/2), sqrt(2)) with x = 2**k * m (see ``log_exponent``)."""
    if value not in (types.float32, types.float64):
        return None

    def codegen(context, builder, sig, args):
        shifted, offset, mask, _, irfloat, irint = _log_split(builder, value, args[0])
        bits = builder.add(builder.and_(shifted, ir.Constant(irint, mask)), ir.Constant(irint, offset))
        return builder.bitcast(bits, irfloat)

    return value(value), codegen


@intrinsic
def prefetch(typingctx, array, index):
    """Ask the CPU to bring the cache line of ``array[index]`` towards L1
    (``llvm.prefetch``, read, high locality); no effect on results, and no
    fault for any address."""
    if not isinstance(array, types.Array) or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        index = args[1]
        if sig.args[1].bitwidth < 64:
            extend = builder.sext if sig.args[1].signed else builder.zext
            index = extend(index, ir.IntType(64))
        pointer = builder.gep(ary.data, [index])
        raw = builder.bitcast(pointer, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        signature = ir.FunctionType(ir.VoidType(), [raw.type, i32, i32, i32])
        function = cgutils.get_or_insert_function(builder.module, signature, "llvm.prefetch.p0")
        builder.call(function, [raw, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.none(array, index), codegen
