"""nbce: streaming, numerically stable cross-entropy kernels in Numba.

The public API lives in :mod:`nbce.api` and :mod:`nbce.evaluation` and is
re-exported here, imported on first use: ``import nbce`` (and so the ``nbce``
command's start-up, before it can handle Ctrl-C) does not load Numba.
"""

import importlib

_HOMES = {
    **dict.fromkeys(("binary_cross_entropy", "binary_cross_entropy_with_logits", "cross_entropy", "entropy",
                     "log_softmax", "logsumexp", "softmax"), "api"),
    **dict.fromkeys(("EvalResult", "Evaluator", "evaluate"), "evaluation"),
}


def __getattr__(name):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'nbce' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_HOMES))


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
