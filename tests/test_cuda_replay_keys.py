"""Which calls replayed launches (``nbce.cuda._replay``) may serve, and under
which key: checked without a GPU on stand-ins for PyTorch CUDA tensors (the
replays themselves are tested on hardware in ``test_cuda_replay.py``)."""

import math
import types

import pytest

torch = pytest.importorskip("torch")
_replay = pytest.importorskip("nbce.cuda._replay")

SETTINGS = (256, 8, 4)


class CudaTensor:
    """What ``_key`` reads of a PyTorch CUDA tensor."""

    is_cuda = True
    is_nested = False
    layout = torch.strided

    def __init__(self, shape, dtype=torch.float32, address=1 << 32, requires_grad=False):
        self.shape, self.dtype, self._address, self.requires_grad = shape, dtype, address, requires_grad
        self.device = types.SimpleNamespace(index=0)

    def stride(self):
        return tuple(math.prod(self.shape[i + 1:]) for i in range(len(self.shape)))

    def data_ptr(self):
        return self._address


CudaTensor.__module__ = "torch"


def key(name, *args, settings=SETTINGS, **kwargs):
    return _replay._key(name, args, kwargs, settings)


def test_served_calls_have_keys():
    x, t = CudaTensor((4, 10)), CudaTensor((4,), torch.int64)
    assert key("logsumexp", x) is not None
    assert key("entropy", x, axis=-1) is not None
    assert key("cross_entropy", x, t, reduction="sum", ignore_index=3, label_smoothing=0.1) is not None


@pytest.mark.parametrize("why, call", [
    ("other function", lambda x, t: key("log_softmax", x)),
    ("class weights", lambda x, t: key("cross_entropy", x, t, weight=None)),
    ("a stream", lambda x, t: key("logsumexp", x, stream=None)),
    ("target by name", lambda x, t: key("cross_entropy", x, target=t)),
    ("host targets", lambda x, t: key("cross_entropy", x, [0, 1, 2, 3])),
    ("float targets", lambda x, t: key("cross_entropy", x, CudaTensor((4, 10)))),
    ("bool targets", lambda x, t: key("cross_entropy", x, CudaTensor((4,), torch.bool))),
    ("logits that require grad", lambda x, t: key("logsumexp", CudaTensor((4, 10), requires_grad=True))),
    ("an unhashable option", lambda x, t: key("logsumexp", x, axis=[1])),
])
def test_calls_replay_does_not_serve(why, call):
    assert call(CudaTensor((4, 10)), CudaTensor((4,), torch.int64)) is None, why


def test_sparse_and_nested_tensors_are_not_served():
    sparse, nested = CudaTensor((4, 10)), CudaTensor((4, 10))
    sparse.layout = torch.sparse_coo
    nested.is_nested = True
    assert key("logsumexp", sparse) is None and key("logsumexp", nested) is None


def test_options_equal_in_value_but_not_in_type_are_keyed_apart():
    """1 == True == 1.0 (and hash alike), but the checks pass only some of them."""
    x, t = CudaTensor((4, 10)), CudaTensor((4,), torch.int64)
    assert key("logsumexp", x, axis=1) != key("logsumexp", x, axis=1.0)
    assert key("cross_entropy", x, t, ignore_index=1) != key("cross_entropy", x, t, ignore_index=True)
    assert key("cross_entropy", x, t, label_smoothing=0.0) != key("cross_entropy", x, t, label_smoothing=False)
    assert key("cross_entropy", x, t, ignore_index=1, reduction="sum") == key("cross_entropy", x, t,
                                                                                reduction="sum", ignore_index=1)


def test_alignment_shape_dtype_and_settings_are_in_the_key():
    x = CudaTensor((4, 10))
    assert key("logsumexp", x) == key("logsumexp", CudaTensor((4, 10), address=(1 << 32) + 512))
    assert key("logsumexp", x) != key("logsumexp", CudaTensor((4, 10), address=(1 << 32) + 4))
    assert key("logsumexp", x) != key("logsumexp", CudaTensor((5, 10)))
    assert key("logsumexp", x) != key("logsumexp", CudaTensor((4, 10), torch.float16))
    assert key("logsumexp", x) != key("logsumexp", x, settings=(8, 8, 4))
