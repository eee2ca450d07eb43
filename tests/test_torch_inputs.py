"""PyTorch CPU tensors as inputs: read zero-copy (bfloat16 through its 16-bit words), results as NumPy."""

import numpy as np
import pytest

import nbce
from nbce._arrays import host_array
from conftest import TOLERANCES

torch = pytest.importorskip("torch", reason="the PyTorch input tests need torch (a CPU build)")
pytest.importorskip("ml_dtypes", reason="bfloat16 tensors are viewed as ml_dtypes.bfloat16")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@pytest.fixture
def tensors():
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(40, 3, 17, generator=generator) * 3
    t = torch.randint(0, 17, (40, 3), generator=generator)
    t[::4, 1] = -100
    return x, t


def as_numpy(x):
    return x.float().numpy()


@pytest.mark.parametrize("name", DTYPES)
def test_host_array_is_a_view(tensors, name):
    x = tensors[0].to(DTYPES[name])[:, ::2].transpose(0, 1)  # strided: still a view
    array = host_array(x)
    assert array.dtype.name == name and array.shape == tuple(x.shape)
    assert array.ctypes.data == x.data_ptr()
    np.testing.assert_array_equal(array.astype(np.float32), x.float().numpy())


@pytest.mark.parametrize("name", DTYPES)
def test_every_function_takes_tensors_and_returns_numpy(tensors, name):
    x, t = tensors
    x = x.to(DTYPES[name])
    reference = as_numpy(x).astype(np.float64)
    rtol, atol = TOLERANCES[name]
    for function in (nbce.logsumexp, nbce.entropy, nbce.softmax, nbce.log_softmax):
        ours = function(x)
        assert isinstance(ours, np.ndarray) and ours.dtype == np.float32
        np.testing.assert_allclose(ours, function(reference), rtol=rtol, atol=atol, err_msg=function.__name__)
    loss = nbce.cross_entropy(x, t, reduction="none", weight=torch.rand(17))
    assert isinstance(loss, np.ndarray) and loss.shape == (40, 3)
    soft = nbce.cross_entropy(x, torch.softmax(x.float(), -1).to(DTYPES[name]))
    assert isinstance(soft, np.floating)
    probs = torch.sigmoid(x.float()).to(DTYPES[name])
    np.testing.assert_allclose(nbce.binary_cross_entropy(probs, probs), nbce.binary_cross_entropy(
        as_numpy(probs), as_numpy(probs)), rtol=1e-6)
    np.testing.assert_allclose(nbce.binary_cross_entropy_with_logits(x, probs, pos_weight=torch.ones(17)),
                               nbce.binary_cross_entropy_with_logits(as_numpy(x), as_numpy(probs)), rtol=1e-6)


@pytest.mark.parametrize("name", DTYPES)
def test_evaluate_and_update_take_tensors(tensors, name):
    x, t = tensors
    x = x.to(DTYPES[name])
    expected = nbce.evaluate(host_array(x), t.numpy(), device="cpu")
    assert nbce.evaluate(x, t, chunk_rows=7, device="cpu") == expected
    assert nbce.Evaluator().update(x, t, weight=torch.ones(40, 3)).compute() == expected
    shifted = nbce.evaluate(x.transpose(0, 1), t.T, shift=True, per_sequence=True, device="cpu")
    assert shifted.count == np.sum(t.T[:, 1:].numpy() != -100)


def test_tensors_requiring_grad_are_detached(tensors):
    x, t = tensors
    x.requires_grad_(True)
    assert nbce.cross_entropy(x, t) == pytest.approx(nbce.cross_entropy(x.detach().numpy(), t.numpy()))
    assert nbce.evaluate(x, t, device="cpu").count == int((t != -100).sum())


def test_integer_tensors_are_not_logits(tensors):
    with pytest.raises(TypeError, match="logits must be a floating-point array.*got dtype int64"):
        nbce.cross_entropy(tensors[1], tensors[1])
