"""Print the README's table of every public function beside PyTorch:
``python -m benchmarks.functions_table``.

Each row is one call at the function's main shapes, float32 and a fresh
result, nbce and torch in the same process with the same thread count (set
``NUMBA_NUM_THREADS``; torch gets numba's count): medians of 9 runs after a
warm-up.  ``entropy`` has no single torch call; torch's row is
-(softmax * log_softmax).sum(1).  Without torch the torch columns are blank.
"""


import numpy as np

import nbce

from ._cases import make_inputs, median_seconds, torch_beside_numba


def _binary_inputs(shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    return x, rng.random(shape, dtype=np.float32)


def cases(scale=1):
    """(label, nbce call, torch call taking the torch module) for each row; shapes
    divided by ``scale`` (class counts kept), for a quick check of the calls."""
    rows = []
    for shape in ((16_000_000 // scale,), (4000 // scale, 4000)):
        x, y = _binary_inputs(shape)
        label = "×".join(map(str, shape))
        rows.append((f"binary_cross_entropy_with_logits {label}", lambda x=x, y=y: nbce.binary_cross_entropy_with_logits(x, y),
                     lambda torch, x=x, y=y: torch.nn.functional.binary_cross_entropy_with_logits(
                         torch.from_numpy(x), torch.from_numpy(y))))
    x, y = _binary_inputs((16_000_000 // scale,))
    p = 1 / (1 + np.exp(-x))
    rows.append((f"binary_cross_entropy {x.size}", lambda: nbce.binary_cross_entropy(p, y),
                 lambda torch: torch.nn.functional.binary_cross_entropy(torch.from_numpy(p), torch.from_numpy(y))))
    wide, wide_t = make_inputs((1024 // scale, 32000), "float32")
    uniform = np.full_like(wide, 1.0 / wide.shape[1])
    for shape in ((1024 // scale, 32000), (65536 // scale, 100), (10000 // scale, 32)):
        x, _ = make_inputs(shape, "float32")
        label = f"{shape[0]}×{shape[1]}"
        for name in ("logsumexp", "log_softmax", "softmax"):
            rows.append((f"{name} {label}", lambda x=x, name=name: getattr(nbce, name)(x),
                         lambda torch, x=x, name=name: getattr(torch, name)(torch.from_numpy(x), 1)))
    rows.append((f"entropy {wide.shape[0]}×32000", lambda: nbce.entropy(wide),
                 lambda torch: -(torch.softmax(torch.from_numpy(wide), 1)
                                 * torch.log_softmax(torch.from_numpy(wide), 1)).sum(1)))
    rows.append((f"cross_entropy label_smoothing=0.1 {wide.shape[0]}×32000",
                 lambda: nbce.cross_entropy(wide, wide_t, label_smoothing=0.1),
                 lambda torch: torch.nn.functional.cross_entropy(torch.from_numpy(wide), torch.from_numpy(wide_t),
                                                                  label_smoothing=0.1)))
    rows.append((f"cross_entropy probabilities {wide.shape[0]}×32000", lambda: nbce.cross_entropy(wide, uniform),
                 lambda torch: torch.nn.functional.cross_entropy(torch.from_numpy(wide), torch.from_numpy(uniform))))
    for shape in ((4096 // scale, 32000), (65536 // scale, 100)):
        x, t = make_inputs(shape, "float32")
        rows.append((f"cross_entropy {shape[0]}×{shape[1]}", lambda x=x, t=t: nbce.cross_entropy(x, t),
                     lambda torch, x=x, t=t: torch.nn.functional.cross_entropy(torch.from_numpy(x),
                                                                               torch.from_numpy(t))))
    return rows


def main():
    torch = torch_beside_numba()
    print("| call (float32) | nbce ms | torch ms | nbce vs torch |")
    print("|---|---|---|---|")
    for label, ours, theirs in cases():
        mine = median_seconds(ours, repeat=9)
        other = median_seconds(lambda: theirs(torch), repeat=9) if torch is not None else None
        cells = [label, f"{mine * 1e3:.2f}", f"{other * 1e3:.2f}" if other else "–",
                 f"{other / mine:.2f}×" if other else "–"]
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
