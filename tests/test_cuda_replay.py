"""Replayed launches (``nbce.cuda._replay``) on a real GPU with PyTorch CUDA
tensors (NBCE_TEST_REAL_GPU=1): a repeated call gives the ordinary path's
result bit for bit, raises the ordinary path's errors, follows the current
stream and is not replayed once its workspace buffers were made anew."""

import pytest

import nbce

torch = pytest.importorskip("torch")
cuda_backend = pytest.importorskip("nbce.cuda")
if cuda_backend.dev.SIMULATOR or not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU and a CUDA build of torch", allow_module_level=True)

from nbce.cuda import _replay  # noqa: E402

if not _replay.ENABLED:
    pytest.skip("replay is off here (NBCE_CUDA_REPLAY=0 or no raw launches)", allow_module_level=True)


@pytest.fixture
def replays(monkeypatch):
    """A list that gets one entry per call answered by a replay."""
    done = []
    real = _replay._replay

    def counted(found, args, stream):
        result = real(found, args, stream)
        if result is not None:
            done.append(found)
        return result

    monkeypatch.setattr(_replay, "_replay", counted)
    return done


def ordinary(monkeypatch, fn, *args, **kwargs):
    with monkeypatch.context() as m:
        m.setattr(_replay, "ENABLED", False)
        return fn(*args, **kwargs)


def same_bits(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape and a.device == b.device
    assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


CASES = [
    (nbce.logsumexp, {}, None),
    (nbce.entropy, {}, None),
    (nbce.cross_entropy, {}, torch.int64),
    (nbce.cross_entropy, {"reduction": "sum", "ignore_index": 3}, torch.int32),
    (nbce.cross_entropy, {"reduction": "none", "label_smoothing": 0.1}, torch.uint8),
]


@pytest.mark.parametrize("shape", [(64, 1000), (3, 250), (16, 262144), (2, 3, 40)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_replayed_calls_give_the_ordinary_paths_bits(monkeypatch, replays, shape, dtype, case):
    fn, options, target_dtype = CASES[case]
    classes = min(shape[-1], 250 if target_dtype == torch.uint8 else shape[-1])
    for _ in range(4):
        x = (torch.randn(shape, device="cuda") * 8).to(dtype)
        args = (x,) if target_dtype is None else (x, torch.randint(0, classes, shape[:-1], device="cuda")
                                                   .to(target_dtype))
        ours = fn(*args, **options)
        same_bits(ours, ordinary(monkeypatch, fn, *args, **options))
    assert len(replays) >= 2


def test_a_bad_device_target_raises_on_a_replayed_call(monkeypatch, replays):
    x = torch.randn(32, 100, device="cuda")
    t = torch.randint(0, 100, (32,), device="cuda")
    for _ in range(3):
        nbce.cross_entropy(x, t)
    assert replays
    good = t[5].item()
    t[5] = 100  # in place: the same key, so the call is replayed and finds the flag raised
    tried = len(replays)
    with pytest.raises(ValueError, match="100") as replayed:
        nbce.cross_entropy(x, t)
    assert len(replays) == tried
    with pytest.raises(ValueError) as plain:
        ordinary(monkeypatch, nbce.cross_entropy, x, t)
    assert str(replayed.value) == str(plain.value)
    t[5] = good
    for _ in range(3):  # the flag was rearmed: recorded again, then replayed
        same_bits(nbce.cross_entropy(x, t), ordinary(monkeypatch, nbce.cross_entropy, x, t))
    assert len(replays) > tried


def test_replay_follows_the_current_stream(monkeypatch, replays):
    x = torch.randn(64, 1000, device="cuda")
    t = torch.randint(0, 1000, (64,), device="cuda")
    expected = ordinary(monkeypatch, nbce.cross_entropy, x, t)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        found = [nbce.cross_entropy(x, t) for _ in range(4)]
    side.synchronize()
    for result in found:
        same_bits(result, expected)
    assert len(replays) >= 2  # replayed on the side stream too


def test_workspace_buffers_made_anew_are_not_replayed(monkeypatch, replays):
    x = torch.randn(64, 1000, device="cuda")
    t = torch.randint(0, 1000, (64,), device="cuda")
    for _ in range(3):
        nbce.cross_entropy(x, t)
    before = len(replays)
    big = torch.randn(1 << 16, 100, device="cuda")
    nbce.cross_entropy(big, torch.randint(0, 100, (1 << 16,), device="cuda"))  # the per-row scratch grows
    same_bits(nbce.cross_entropy(x, t), ordinary(monkeypatch, nbce.cross_entropy, x, t))
    assert len(replays) == before  # recorded again, not replayed


def test_logits_at_other_alignments_are_keyed_apart(monkeypatch, replays):
    """Contiguous views starting 0, 4, 8 and 16 bytes into one buffer: the
    wide loads' alignment words differ, so each offset has its own record."""
    base = torch.randn(64 * 1000 + 8, device="cuda")
    for _ in range(3):
        for start in (0, 1, 2, 4):
            x = base[start:start + 64000].view(64, 1000)
            same_bits(nbce.logsumexp(x), ordinary(monkeypatch, nbce.logsumexp, x))
    assert len(replays) >= 4


def test_options_of_other_types_raise_as_on_the_ordinary_path(monkeypatch, replays):
    x = torch.randn(32, 100, device="cuda")
    t = torch.randint(0, 100, (32,), device="cuda")
    for _ in range(3):
        nbce.cross_entropy(x, t, ignore_index=1, label_smoothing=0.0)
        nbce.logsumexp(x, axis=1)
    assert replays
    for call in (lambda: nbce.cross_entropy(x, t, ignore_index=True, label_smoothing=0.0),
                 lambda: nbce.cross_entropy(x, t, ignore_index=1, label_smoothing=False),
                 lambda: nbce.logsumexp(x, axis=1.0)):
        with pytest.raises(TypeError):
            call()


def test_logits_that_require_grad_take_the_ordinary_path(monkeypatch, replays):
    x = torch.randn(32, 100, device="cuda")
    for _ in range(3):
        nbce.logsumexp(x)
    tried = len(replays)
    x.requires_grad_(True)
    try:
        plain = ordinary(monkeypatch, nbce.logsumexp, x)
    except Exception as error:  # noqa: BLE001 - whatever the ordinary path does, replay must do too
        with pytest.raises(type(error)):
            nbce.logsumexp(x)
    else:
        same_bits(nbce.logsumexp(x), plain)
    assert len(replays) == tried
