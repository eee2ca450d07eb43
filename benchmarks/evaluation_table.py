"""Print the README's evaluation table: ``python -m benchmarks.evaluation_table``.

Loss, top-1/top-5 accuracy and mean entropy of the same logits, every library
timed in the same process (medians of 7 after a warm-up); nbce also computes
the calibration error.  The same implementations as the asv suite.
"""

from ._cases import EVALUATIONS
from .speed_table import print_table

CASES = [((4096, 32000), "float32"), ((65536, 100), "float32"), ((4096, 32000), "float16")]


if __name__ == "__main__":
    print_table(EVALUATIONS, CASES, ("jax", "torch", "numpy"))
