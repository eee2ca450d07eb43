"""The other public functions, on one LLM-sized shape."""

import numpy as np

import nbce

from ._cases import optional, make_inputs


class Functions:
    params = [["logsumexp", "log_softmax", "softmax", "log_softmax_out", "softmax_out", "entropy",
               "smoothed_cross_entropy", "soft_target_cross_entropy", "binary_with_logits"]]
    param_names = ["function"]

    def setup(self, function):
        x, t = make_inputs((1024, 32000), "float32")
        calls = {
            "logsumexp": lambda: nbce.logsumexp(x),
            "log_softmax": lambda: nbce.log_softmax(x),
            "softmax": lambda: nbce.softmax(x),
            # a reused result array: no page faults of a fresh one
            "log_softmax_out": lambda: nbce.log_softmax(x, out=self.out),
            "softmax_out": lambda: nbce.softmax(x, out=self.out),
            "entropy": lambda: nbce.entropy(x),
            "smoothed_cross_entropy": lambda: nbce.cross_entropy(x, t, label_smoothing=0.1),
            "soft_target_cross_entropy": lambda: nbce.cross_entropy(x, self.y),
            "binary_with_logits": lambda: nbce.binary_cross_entropy_with_logits(x, self.y),
        }
        self.y = np.full_like(x, 1.0 / x.shape[1]) if "soft" in function or "binary" in function else None
        self.out = np.empty_like(x) if function.endswith("_out") else None
        self.run = calls[function]
        self.run()

    def time_function(self, function):
        self.run()


class ShortRows:
    """Small vocabularies (65536 rows of 100 classes): the row kernels' per-row
    costs, beside PyTorch's logsumexp and cross_entropy on the same array."""

    params = [["logsumexp", "log_softmax", "entropy", "cross_entropy", "evaluate"], ["float32", "float64"],
              ["nbce", "torch"]]
    param_names = ["function", "dtype", "library"]

    def setup(self, function, dtype, library):
        self.run = _calls((65536, 100), dtype, library)[function]
        self.run()

    def time_function(self, function, dtype, library):
        self.run()


class SmallCalls:
    """One call on a small batch (1, 32 and 512 rows of 100 classes, float32):
    the per-call costs (argument checks, dispatch, a kernel launch) beside
    PyTorch's for the same call."""

    params = [["1x100", "32x100", "512x100"], ["logsumexp", "log_softmax", "cross_entropy"], ["nbce", "torch"]]
    param_names = ["shape", "function", "library"]

    def setup(self, shape, function, library):
        rows, classes = (int(n) for n in shape.split("x"))
        self.run = _calls((rows, classes), "float32", library)[function]
        self.run()

    def time_call(self, shape, function, library):
        self.run()


def _calls(shape, dtype, library):
    """Zero-argument calls of each function on inputs of ``shape`` (torch has
    no single call for entropy and evaluate: asv skips those cases)."""
    x, t = make_inputs(shape, dtype)
    if library == "torch":
        torch = optional("torch")
        xt, tt = torch.from_numpy(x), torch.from_numpy(t)
        return {"logsumexp": lambda: torch.logsumexp(xt, dim=1), "log_softmax": lambda: torch.log_softmax(xt, 1),
                "cross_entropy": lambda: torch.nn.functional.cross_entropy(xt, tt),
                "entropy": _no_single_call, "evaluate": _no_single_call}
    return {"logsumexp": lambda: nbce.logsumexp(x), "log_softmax": lambda: nbce.log_softmax(x),
            "entropy": lambda: nbce.entropy(x), "cross_entropy": lambda: nbce.cross_entropy(x, t),
            "evaluate": lambda: nbce.evaluate(x, t)}


def _no_single_call():
    raise NotImplementedError("torch has no single call for this")


class ClassAxisLayouts:
    """PyTorch's (N, C, L) layout and a strided slice, against the contiguous (N, C) case."""

    params = [["contiguous", "axis1_NCL", "column_slice"]]
    param_names = ["layout"]

    def setup(self, layout):
        x, t = make_inputs((2048, 8000), "float32")
        if layout == "axis1_NCL":
            x = np.ascontiguousarray(x.reshape(64, 32, 8000).transpose(0, 2, 1))  # (64, 8000, 32)
            t = t.reshape(64, 32)
            self.run = lambda: nbce.cross_entropy(x, t, axis=1)
        elif layout == "column_slice":
            v = x[:, : x.shape[1] - 7]
            t = t % v.shape[1]
            self.run = lambda: nbce.cross_entropy(v, t)
        else:
            self.run = lambda: nbce.cross_entropy(x, t)
        self.run()

    def time_layout(self, layout):
        self.run()
