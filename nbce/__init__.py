"""nbce: streaming, numerically stable cross-entropy kernels in Numba.

The public API lives in :mod:`nbce.api` and is re-exported here.
"""

__version__ = "0.1.0"

# Before any kernel module is imported: Numba picks a function's cache
# directory when it decorates it, and its threading layer at the first
# parallel compilation.
from . import _cache, _threads

_cache.install(__version__)
_threads.configure()

from .api import (  # noqa: E402
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    cross_entropy,
    entropy,
    log_softmax,
    logsumexp,
    softmax,
)
from .evaluation import EvalResult, Evaluator, evaluate  # noqa: E402

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
