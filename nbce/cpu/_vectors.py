"""The vector width of the compiled loops.

LLVM tunes its code for Intel's AVX-512 processors (Skylake-SP through
Sapphire and Emerald Rapids) to prefer 256-bit vectors, a choice made when
512-bit instructions lowered those chips' clock; Numba compiles for the
host with that tuning, so on them every loop of these kernels used half of
the registers' width.  The kernels are bound by arithmetic on a few cores
(the exponentials), and full-width vectors make them faster there (see
docs/performance-history.md, "512-bit vectors on Intel").

``wide_vectors()``, called in a compiled function, gives that function the
LLVM attribute ``"prefer-vector-width"="512"``, which overrides the tuning
for its own body only: other Numba code in the process keeps its settings.
It also marks the function ``noinline``: a function inlined into another is
compiled with the caller's attributes, and Numba inlines the body of a
``prange`` loop (compiled as a function of its own, where the call must
therefore stand) into a wrapper that has none.  The call stands first in
every ``prange`` body and in each helper that loops over a block or a row;
keeping those helpers apart measured level (the same build compiled for
Zen 5, where only the inlining differs).  On processors without AVX-512 the
attribute changes nothing (the widest legal vector stays 256 bits), and
AMD's Zen 4 and Zen 5 already prefer 512 bits.
"""

from numba import types
from numba.extending import intrinsic

PREFER_512_BITS = '"prefer-vector-width"="512"'


@intrinsic
def wide_vectors(typingctx):
    """Compile the calling function for 512-bit vectors where the processor has
    them, and never inline it into a caller (see the module docstring)."""

    def codegen(context, builder, signature, args):
        # llvmlite's attribute set only admits attributes it lists; string
        # attributes ("key"="value") are written into the IR as they are.
        attributes = builder.function.attributes
        set.add(attributes, PREFER_512_BITS)
        attributes.add("noinline")
        return context.get_dummy_value()

    return types.none(), codegen
