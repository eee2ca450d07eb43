"""nbce: streaming, numerically stable cross-entropy kernels in Numba.

The public API lives in :mod:`nbce.api` and is re-exported here.
"""

from .api import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    cross_entropy,
    entropy,
    log_softmax,
    logsumexp,
    softmax,
)
from .evaluation import EvalResult, Evaluator, evaluate

__version__ = "0.1.0"

__all__ = [
    "EvalResult",
    "Evaluator",
    "evaluate",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "entropy",
    "log_softmax",
    "logsumexp",
    "softmax",
]
