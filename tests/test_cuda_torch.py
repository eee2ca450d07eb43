"""PyTorch CUDA tensors in and out, on a real GPU only (NBCE_TEST_REAL_GPU=1 with a
CUDA build of torch): every function against torch's own float64 result, the
result a tensor on the input's device, and work on torch's current stream.
The simulator cannot hold torch CUDA memory, so these skip there."""

import numpy as np
import pytest

import nbce
import reference as ref
from test_evaluation import assert_matches

torch = pytest.importorskip("torch")
cuda_backend = pytest.importorskip("nbce.cuda")
if cuda_backend.dev.SIMULATOR or not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU and a CUDA build of torch", allow_module_level=True)

F = torch.nn.functional


@pytest.fixture
def logits():
    generator = torch.Generator(device="cuda").manual_seed(0)
    return torch.randn(64, 1000, device="cuda", generator=generator) * 4


def close(ours, theirs, rtol=2e-5):
    assert isinstance(ours, torch.Tensor) and ours.device == theirs.device
    np.testing.assert_allclose(ours.double().cpu().numpy(), theirs.double().cpu().numpy(), rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_matches_torch_float64(logits, dtype, reduction):
    x = logits.to(dtype)
    t = torch.randint(0, 1000, (64,), device="cuda")
    t[::7] = -100
    for target in (t, t.cpu().numpy(), t.to(torch.int32)):
        close(nbce.cross_entropy(x, target, reduction=reduction), F.cross_entropy(x.double(), t, reduction=reduction))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_functions_match_torch_float64(logits, dtype):
    x = logits.to(dtype)
    close(nbce.logsumexp(x), torch.logsumexp(x.double(), 1))
    close(nbce.log_softmax(x), torch.log_softmax(x.double(), 1))
    close(nbce.softmax(x, axis=0), torch.softmax(x.double(), 0))
    p = torch.softmax(x.double(), 1)
    close(nbce.entropy(x), -(p * torch.log_softmax(x.double(), 1)).sum(1), rtol=1e-4)


def test_binary_cross_entropy_with_logits_matches_torch_float64(logits):
    y = (torch.rand_like(logits) > 0.5).float()
    pos_weight = torch.rand(1000, device="cuda") + 0.5
    close(nbce.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight),
          F.binary_cross_entropy_with_logits(logits.double(), y.double(), pos_weight=pos_weight.double()))


def test_evaluate_takes_torch_tensors(logits):
    t = torch.randint(0, 1000, (64,), device="cuda")
    expected = ref.evaluation(logits.cpu().numpy(), t.cpu().numpy(), top_k=(1, 5))
    assert_matches(nbce.evaluate(logits, t, top_k=(1, 5)), expected, "float32")
    assert_matches(nbce.evaluate(logits.to(torch.bfloat16), t, top_k=(1, 5)),
                   ref.evaluation(logits.to(torch.bfloat16).float().cpu().numpy(), t.cpu().numpy(), top_k=(1, 5)),
                   "float32")


def test_work_runs_on_torch_current_stream(logits, monkeypatch):
    t = torch.randint(0, 1000, (64,), device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    launched_on = []
    real = cuda_backend.dev.launch
    monkeypatch.setattr(cuda_backend.dev, "launch", lambda kernel, blocks, threads, stream, args: (
        launched_on.append(cuda_backend.dev.stream_key(stream)), real(kernel, blocks, threads, stream, args))[1])
    with torch.cuda.stream(side):
        ours = nbce.cross_entropy(logits, t, reduction="none")
        lse = nbce.logsumexp(logits)
    side.synchronize()
    assert launched_on and set(launched_on) == {side.cuda_stream}
    close(ours, F.cross_entropy(logits.double(), t, reduction="none"))
    close(lse, torch.logsumexp(logits.double(), 1))
