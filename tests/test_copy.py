"""The parallel copy that stages host chunks for the GPU pipeline."""

import numpy as np
import pytest

from nbce.cpu._copy import copy_into

LAYOUTS = {
    "contiguous": lambda a: a,
    "every_other_column": lambda a: a[:, ::2],
    "reversed_rows": lambda a: a[::-1],
    "batch_axes_swapped": lambda a: np.swapaxes(a.reshape(6, 5, -1), 0, 1),
    "one_row": lambda a: a[0],
    "empty": lambda a: a[:0],
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "uint16"])
def test_copies_every_bit(layout, dtype, rng):
    source = LAYOUTS[layout]((rng.standard_normal((30, 17)) * 1e3).astype(dtype))
    destination = np.full(source.shape, 7, dtype=dtype)
    copy_into(destination, source)
    np.testing.assert_array_equal(destination.view(f"u{source.itemsize}"), source.view(f"u{source.itemsize}"))
