"""Scalar formulas shared by the CPU and GPU kernels: plain Python on ``math``,
compiled by each backend's own decorator, so both compute the same thing."""

import math


def logit_loss(x, y, pos_weight):
    """PyTorch's binary cross-entropy of a logit x, target y and pos_weight,

        (1 - y) x + c (log1p(e^-|x|) + max(-x, 0)),   c = 1 + (pos_weight - 1) y,

    without its cancellation for x << 0, where it equals -pos_weight y x +
    c log1p(e^x): two terms of one sign.  x = -inf keeps PyTorch's form (and
    its NaN)."""
    c = 1.0 + (pos_weight - 1.0) * y
    tail = math.log1p(math.exp(-abs(x)))
    if x >= 0.0:
        return (1.0 - y) * x + c * tail
    if x != -math.inf:
        return -pos_weight * y * x + c * tail
    return (1.0 - y) * x + c * (tail - x)
