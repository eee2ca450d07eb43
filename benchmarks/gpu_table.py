"""Print the GPU speed table: ``python -m benchmarks.gpu_table [--quick] [--compile]``.

Mean cross-entropy with int64 class indices on torch CUDA tensors, side by side
in one process: nbce, torch eager, Liger-Kernel's Triton forward (when
installed), ``torch.compile(F.cross_entropy)`` (with ``--compile``) and a
device-to-device copy as the bandwidth yardstick.  CUDA events, medians of 20
after a warm-up, inputs rotated through 512 MB so that small ones are not
read from L2.  Each nbce result is checked once against torch in float64
before it is timed; a row that disagrees is not timed and the exit status is 1.
Then logsumexp rows and the host cost of a small call.  With ``OUT`` set, the
rows are also written to ``$OUT/gpu_table.json``.  Without torch or a CUDA
device it says so in one line and exits 0.
"""

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback
from importlib import metadata

from ._gpu import (ITEMSIZE, bandwidth, copy_ms, event_ms, liger_cross_entropy, parse_shape, reference_cross_entropy,
                   reference_logsumexp, rotating, rotation_count, speedups, torch_cuda)

CASES = [("16384x32768", "float32"), ("16384x131072", "float32"), ("16384x131072", "bfloat16"),
         ("8192x128256", "bfloat16"), ("4096x32000", "bfloat16"), ("4096x32000", "float32"),
         ("65536x100", "float32"), ("16x262144", "float32"), ("32x1000", "float32")]
QUICK = [("8192x128256", "bfloat16"), ("4096x32000", "float32"), ("65536x100", "float32")]
RTOL = 1e-4
HOST_SHAPE, HOST_CALLS = (32, 1000), 500


class Disagrees(Exception):
    """nbce's result is not within RTOL of torch's float64 one."""


def _version(package):
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _fits(torch, nbytes, copies):
    """Whether ``copies`` arrays of ``nbytes`` (plus 1 GiB of slack for
    workspaces and the float64 reference chunks) fit in free device memory."""
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    need = copies * nbytes + 2**30
    return need <= free, f"needs about {need / 1e9:.1f} GB, {free / 1e9:.1f} GB free"


def _check(what, ours, ref):
    if not math.isclose(ours, ref, rel_tol=RTOL):
        raise Disagrees(f"{what}: nbce {ours!r} vs torch float64 {ref!r} (rtol {RTOL:g})")


def _check_rows(torch, what, ours, ref):
    ours = ours.double()
    if not torch.allclose(ours, ref, rtol=RTOL, atol=0.0):
        worst = float(((ours - ref).abs() / ref.abs()).max())
        raise Disagrees(f"{what}: nbce differs from torch float64 by up to {worst:.2e} relative (rtol {RTOL:g})")


def measure(torch, nbce, shape, dtype, liger, compiled):
    """One row: check nbce, then time every implementation on rotated inputs."""
    F = torch.nn.functional
    n, v = parse_shape(shape)
    tdtype = getattr(torch, dtype)
    nbytes = n * v * ITEMSIZE[dtype]
    inputs = rotating(lambda: (torch.randn(n, v, device="cuda", dtype=tdtype),
                               torch.randint(0, v, (n,), device="cuda")), nbytes)
    x0, t0 = inputs()
    _check("cross_entropy", float(nbce.cross_entropy(x0, t0)), reference_cross_entropy(torch, x0, t0))
    _check_rows(torch, "logsumexp", nbce.logsumexp(x0), reference_logsumexp(torch, x0))

    def timed(fn):
        return event_ms(torch, lambda: fn(*inputs()))

    ms = {"nbce": timed(nbce.cross_entropy), "torch": timed(F.cross_entropy),
          "compile": None if compiled is None else timed(compiled)}
    ms["copy"] = copy_ms(torch, inputs)
    lse = {"nbce": timed(lambda x, t: nbce.logsumexp(x)), "torch": timed(lambda x, t: torch.logsumexp(x, 1))}
    # Last: Liger releases before the HAS_GRADIENTS switch write the gradient
    # over their input; the values are then no longer randn's, the timing the same.
    ms["liger"] = None if liger is None else timed(liger)
    row = {"shape": shape, "dtype": dtype, "rotated": inputs.count,
           **{f"{k}_ms": val for k, val in ms.items()},
           **bandwidth((n, v), dtype, ms["nbce"], ms["copy"]),
           **speedups(ms["nbce"], {"torch": ms["torch"], "liger": ms["liger"], "compile": ms["compile"]}),
           "lse_nbce_ms": lse["nbce"], "lse_torch_ms": lse["torch"],
           "lse_of_copy": bandwidth((n, v), dtype, lse["nbce"], ms["copy"])["of_copy"],
           "lse_x_torch": lse["torch"] / lse["nbce"]}
    return row


def _wall_us(sync, fn, *args):
    for _ in range(10):
        fn(*args)
    sync()
    start = time.perf_counter()
    for _ in range(HOST_CALLS):
        fn(*args)
    sync()
    return (time.perf_counter() - start) / HOST_CALLS * 1e6


def host_overhead_us(torch, nbce):
    """Wall µs per call of small calls (cross_entropy with device targets,
    logsumexp) on torch and, when installed, CuPy inputs, beside torch's own:
    the mean of HOST_CALLS calls on the same inputs, synchronising once at the end."""
    x = torch.randn(*HOST_SHAPE, device="cuda")
    t = torch.randint(0, HOST_SHAPE[1], (HOST_SHAPE[0],), device="cuda")
    sync = torch.cuda.synchronize
    result = {"nbce": _wall_us(sync, nbce.cross_entropy, x, t),
              "torch": _wall_us(sync, torch.nn.functional.cross_entropy, x, t),
              "nbce_logsumexp": _wall_us(sync, nbce.logsumexp, x),
              "torch_logsumexp": _wall_us(sync, torch.logsumexp, x, 1)}
    result.update(_launch_paths_us(sync, nbce, x, t))
    try:
        import cupy
    except ImportError:
        return result
    xc, tc = cupy.asarray(x), cupy.asarray(t)
    cupy_sync = cupy.cuda.get_current_stream().synchronize
    result["nbce_cupy"] = _wall_us(cupy_sync, nbce.cross_entropy, xc, tc)
    result["nbce_cupy_logsumexp"] = _wall_us(cupy_sync, nbce.logsumexp, xc)
    return result


def _launch_paths_us(sync, nbce, x, t, rounds=7):
    """Wall µs per small cross_entropy call by each host path, in alternating
    rounds in this one process (medians over the rounds): replayed launches
    (``nbce.cuda._replay``, the default for repeated calls on torch tensors),
    and the ordinary path launching through cuda.core and through the
    driver's cuLaunchKernel (``NBCE_CUDA_RAW_LAUNCH``)."""
    from nbce.cuda import _device, _replay

    paths = {"nbce_replay": (True, False), "nbce_core_launch": (False, False)}
    if _device.RAW_LAUNCH_AVAILABLE:
        paths["nbce_raw_launch"] = (False, True)
    saved, times = (_replay.ENABLED, _device.RAW_LAUNCH), {name: [] for name in paths}
    try:
        for _ in range(rounds):
            for name, (replay, raw) in paths.items():
                _replay.ENABLED = replay and saved[0]
                _device.RAW_LAUNCH = raw
                times[name].append(_wall_us(sync, nbce.cross_entropy, x, t))
    finally:
        _replay.ENABLED, _device.RAW_LAUNCH = saved
    return {name: statistics.median(found) for name, found in times.items()}


def _cell(value, fmt):
    return "–" if value is None else format(value, fmt)


def _print_row(row, with_compile):
    cells = [row["shape"].replace("x", "×"), row["dtype"], _cell(row["nbce_ms"], ".3f"), _cell(row["torch_ms"], ".3f"),
             _cell(row["liger_ms"], ".3f")]
    cells += [_cell(row["compile_ms"], ".3f")] if with_compile else []
    cells += [_cell(row["copy_ms"], ".3f"), _cell(row["gbs"], ".0f"), _cell(row["of_copy"], ".2f"),
              _cell(row["x_torch"], ".2f"), _cell(row["x_liger"], ".2f")]
    cells += [_cell(row["x_compile"], ".2f")] if with_compile else []
    print("| " + " | ".join(cells) + " |", flush=True)


def _print_note(shape, dtype, note):
    print(f"| {shape.replace('x', '×')} | {dtype} | {note} |", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"only {len(QUICK)} shapes")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(F.cross_entropy)")
    args = parser.parse_args(argv)
    try:
        torch = torch_cuda()
    except NotImplementedError as reason:
        print(f"gpu_table: nothing to measure: {reason}.")
        return 0
    import nbce

    try:
        liger = liger_cross_entropy()
    except NotImplementedError:
        liger = None
    versions = {p: _version(p) for p in ("nbce", "numba", "numba-cuda", "torch", "triton", "liger-kernel")}
    device = torch.cuda.get_device_name()
    print(f"{device}; " + ", ".join(f"{p} {v}" for p, v in versions.items() if v))
    print("cross_entropy, mean, int64 targets; CUDA events, medians of 20 after warm-up; GB/s: logits read ÷ time; "
          "of copy: GB/s ÷ a device copy's (read+write) GB/s; ×lib: lib ms ÷ nbce ms (above 1: nbce faster)"
          + ("" if liger else "; liger-kernel not installed"))
    libs = ["torch", "liger"] + (["compile"] if args.compile else [])
    header = ("| shape | dtype | nbce ms | torch ms | liger ms | " + ("compile ms | " if args.compile else "")
              + "copy ms | nbce GB/s | of copy | " + " | ".join(f"×{lib}" for lib in libs) + " |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1), flush=True)

    rows, failed = [], False
    for shape, dtype in (QUICK if args.quick else CASES):
        nbytes = math.prod(parse_shape(shape)) * ITEMSIZE[dtype]
        # The rotated inputs, the copy's destination and torch's log_softmax output.
        ok, why = _fits(torch, nbytes, rotation_count(nbytes) + 2)
        if not ok:
            _print_note(shape, dtype, f"skipped: does not fit the device ({why})")
            rows.append({"shape": shape, "dtype": dtype, "skipped": why})
            continue
        compiled = None
        if args.compile:
            torch._dynamo.reset()  # one compilation per shape, never the recompile limit's eager fallback
            compiled = torch.compile(torch.nn.functional.cross_entropy)
        try:
            row = measure(torch, nbce, shape, dtype, liger, compiled)
        except Disagrees as wrong:
            failed = True
            print(f"WRONG, not timed: {shape} {dtype}: {wrong}", file=sys.stderr, flush=True)
            _print_note(shape, dtype, f"**WRONG, not timed**: {wrong}")
            rows.append({"shape": shape, "dtype": dtype, "wrong": str(wrong)})
        except torch.cuda.OutOfMemoryError as oom:
            _print_note(shape, dtype, "skipped: out of device memory")
            rows.append({"shape": shape, "dtype": dtype, "skipped": str(oom).splitlines()[0]})
        except Exception as error:  # noqa: BLE001 - one row's failure must not hide the others
            failed = True
            traceback.print_exc()
            _print_note(shape, dtype, f"**failed**: {type(error).__name__}: {str(error).splitlines()[0]}")
            rows.append({"shape": shape, "dtype": dtype, "error": f"{type(error).__name__}: {error}"})
        else:
            rows.append(row)
            _print_row(row, args.compile)
        torch.cuda.empty_cache()

    print("\nlogsumexp along rows (same inputs; of copy: against the copy above)")
    print("| shape | dtype | nbce ms | torch ms | of copy | ×torch |\n|---|---|---|---|---|---|")
    for row in rows:
        if "lse_nbce_ms" in row:
            print(f"| {row['shape'].replace('x', '×')} | {row['dtype']} | {row['lse_nbce_ms']:.3f} | "
                  f"{row['lse_torch_ms']:.3f} | {row['lse_of_copy']:.2f} | {row['lse_x_torch']:.2f} |")

    host = host_overhead_us(torch, nbce)
    print(f"\nhost overhead, {HOST_SHAPE[0]}×{HOST_SHAPE[1]} float32, wall µs per call (mean of {HOST_CALLS}, "
          f"one synchronisation at the end): cross_entropy nbce {host['nbce']:.1f}, torch {host['torch']:.1f}; "
          f"logsumexp nbce {host['nbce_logsumexp']:.1f}, torch {host['torch_logsumexp']:.1f}")
    print(f"cross_entropy by host path (alternating rounds, medians): replayed {host['nbce_replay']:.1f}, "
          f"ordinary by cuda.core {host['nbce_core_launch']:.1f}"
          + (f", ordinary by cuLaunchKernel {host['nbce_raw_launch']:.1f}" if "nbce_raw_launch" in host else ""))
    if "nbce_cupy" in host:
        print(f"on CuPy arrays: cross_entropy nbce {host['nbce_cupy']:.1f}, logsumexp nbce "
              f"{host['nbce_cupy_logsumexp']:.1f}")

    if os.environ.get("OUT"):
        path = os.path.join(os.environ["OUT"], "gpu_table.json")
        with open(path, "w") as f:
            json.dump({"device": device, "versions": versions, "rows": rows, "host_overhead_us": host}, f, indent=1)
        print(f"wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
