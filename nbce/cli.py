"""The ``nbce`` command: score saved logits, run the demo, time the kernels.

    nbce score LOGITS TARGETS [--axis -1] [--ignore-index -100] [--top-k 1,5]
               [--device auto|cpu|cuda] [--chunk-rows N] [--dtype bfloat16] [--shift]
               [--per-sequence OUT.npy] [--per-token OUT.npy] [--json]
    nbce demo  [--rows N] [--classes V]
    nbce bench [--rows N] [--classes V]
    nbce --version

Bad input (a missing or non-NumPy file, mismatched lengths, a wrong dtype,
an out-of-range target, a damaged or truncated file) prints one line on
stderr and exits with status 2; Ctrl-C exits with status 130.  NumPy and
Numba are imported inside ``main``, so that Ctrl-C during start-up is
handled too.
"""

import argparse
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class _Fail(Exception):
    """An error for the user: printed as one line, exit status ``code``."""

    def __init__(self, message, code=EXIT_BAD_INPUT):
        super().__init__(message)
        self.code = code


def _top_k(text):
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


_SCORE_DESCRIPTION = """\
Score saved logits against integer targets in one streamed pass and print:

  rows scored / ignored  targets scored, and those equal to --ignore-index
  loss (nats)            mean cross-entropy, with its standard error
  perplexity             exp(loss)
  bits per token         loss / ln 2
  top-k accuracy         share of targets among the k highest logits (ties
                         count for the target), with its standard error
  mean entropy (nats)    mean entropy of softmax(logits)
  ECE                    expected calibration error over --calibration-bins
  time                   rows/s and GB/s of the evaluation (compilation excluded)
"""

_SCORE_EXAMPLES = """\
examples:
  nbce score logits.npy targets.npy --top-k 1,5
  nbce score out.safetensors:logits batch.npz:input_ids --dtype bfloat16 --shift \\
      --per-sequence seq.npy --json
"""


def _parser():
    from . import __version__

    parser = argparse.ArgumentParser(prog="nbce", description="Streaming, numerically stable cross-entropy.")
    parser.add_argument("--version", action="version", version=f"nbce {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    score = commands.add_parser("score", help="score saved logits against targets (loss, perplexity, top-k, ECE)",
                                description=_SCORE_DESCRIPTION, epilog=_SCORE_EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    score.add_argument("logits", help="LOGITS.npy, FILE.npz:KEY or FILE.safetensors:KEY "
                                      "(memory-mapped, never read whole)")
    score.add_argument("targets", help="TARGETS.npy, FILE.npz:KEY or FILE.safetensors:KEY: integer class indices")
    score.add_argument("--axis", type=int, default=-1, help="class axis of the logits (default -1)")
    score.add_argument("--ignore-index", type=int, default=-100, help="target value to skip (default -100)")
    score.add_argument("--top-k", type=_top_k, default=(1, 5), help="top-k accuracies to report (default 1,5)")
    score.add_argument("--calibration-bins", type=_positive, default=15, help="ECE bins (default 15)")
    score.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="cuda: stream the file's chunks through the GPU; auto (the default) and cpu: score "
                            "on the CPU's cores (faster for host data where both were measured)")
    score.add_argument("--chunk-rows", type=_positive, default=None, help="rows per chunk (default: ~64 MiB)")
    score.add_argument("--dtype", choices=("bfloat16",), default=None,
                       help="read raw 2-byte logits (|V2, as np.save writes ml_dtypes.bfloat16; uint16; int16) "
                            "as bfloat16, without a copy")
    score.add_argument("--shift", action="store_true",
                       help="causal LM: (batch, seq, vocab) logits against (batch, seq) token ids, "
                            "position i scored against token i+1")
    score.add_argument("--per-sequence", metavar="OUT.npy", default=None,
                       help="write loss, perplexity and scored tokens per sequence (first axis of the targets)")
    score.add_argument("--per-token", metavar="OUT.npy", default=None,
                       help="write each token's loss (0 at ignore-index), chunk by chunk, in bounded memory")
    score.add_argument("--json", action="store_true", help="print the metrics as JSON")
    score.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    demo = commands.add_parser("demo", help="build a realistic evaluation set on disk, score it, check, clean up")
    demo.add_argument("--rows", type=_positive, default=4096, help="tokens (default 4096)")
    demo.add_argument("--classes", type=_positive, default=32000, help="vocabulary size (default 32000)")
    demo.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                      help="cuda: stream the chunks through the GPU; auto and cpu: score on the CPU")

    bench = commands.add_parser("bench", help="a quick side-by-side speed table on this machine")
    bench.add_argument("--rows", type=_positive, default=4096, help="rows of float32 logits (default 4096)")
    bench.add_argument("--classes", type=_positive, default=32000, help="classes per row (default 32000)")
    return parser


class _Terminated(BaseException):
    """SIGTERM or SIGHUP, unwound like Ctrl-C so that temporary files are removed."""

    def __init__(self, signal_number):
        super().__init__(signal_number)
        self.signal_number = signal_number


def _terminate(signal_number, frame):
    raise _Terminated(signal_number)


def _catch_termination():
    """Make SIGTERM and SIGHUP raise ``_Terminated`` (from the main thread only,
    where Python delivers signals); returns what to restore."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    numbers = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    # An ignored signal stays ignored (``nohup``, ``trap '' TERM``), as Python leaves an ignored SIGINT.
    return {number: signal.signal(number, _terminate) for number in numbers
            if signal.getsignal(number) is not signal.SIG_IGN}


def main(argv=None):
    name = "nbce"
    previous = _catch_termination()
    try:
        args = _parser().parse_args(argv)
        name = f"nbce {args.command}"
        return {"score": _score, "demo": _demo, "bench": _bench}[args.command](args)
    except _Fail as failure:
        print(f"{name}: error: {failure}", file=sys.stderr)
        return failure.code
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _Terminated as termination:
        print(f"{name}: terminated", file=sys.stderr)
        return 128 + termination.signal_number
    except BrokenPipeError:  # the reader of the output went away (``nbce score ... | head``)
        # Python flushes stdout at exit and would report the broken pipe again: point it at nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:
        for number, handler in previous.items():
            if handler is not None:  # None: set outside Python, nothing to put back
                signal.signal(number, handler)


def _run_evaluation(logits, targets, args, progress, verify=None):
    """(result, seconds); the kernels are compiled (or loaded from Numba's cache) first, untimed.
    ``verify()``, when given, runs after the scoring and before the output files
    are put in place (``_outputs``), so that its refusal leaves them as they were."""
    import nbce

    from ._outputs import OutputError, Outputs

    shift = getattr(args, "shift", False)
    options = dict(axis=args.axis, ignore_index=args.ignore_index, top_k=args.top_k,
                   calibration_bins=args.calibration_bins, device=args.device, shift=shift)
    try:
        with Outputs(_output_paths(args), _input_paths(args)) as outputs:
            per_token = None
            try:
                if getattr(logits, "ndim", 0) >= 2 and args.axis % logits.ndim != 0 and len(targets):
                    nbce.evaluate(logits[:1], targets[:1], **options)
                if outputs.temporary(_PER_TOKEN) is not None:
                    per_token = _open_output(outputs.temporary(_PER_TOKEN), args.per_token, logits, targets, shift)
                start = time.perf_counter()
                result = nbce.evaluate(logits, targets, chunk_rows=args.chunk_rows, progress=progress,
                                       per_sequence=outputs.temporary(_PER_SEQUENCE) is not None,
                                       per_token=per_token, **options)
                seconds = time.perf_counter() - start
            except (ValueError, TypeError, RuntimeError) as error:
                raise _Fail(str(error)) from None
            except OSError as error:  # an input file that went away or failed while being read
                raise _Fail(f"{error.filename or 'input'}: cannot read ({error.strerror or error})") from None
            if per_token is not None:
                per_token.flush()
                del per_token
            if outputs.temporary(_PER_SEQUENCE) is not None:
                _save(outputs.temporary(_PER_SEQUENCE), args.per_sequence, result.per_sequence)
            if verify is not None:
                verify()
            outputs.commit()
    except OutputError as error:
        raise _Fail(str(error)) from None
    return result, seconds


_PER_TOKEN, _PER_SEQUENCE = "--per-token", "--per-sequence"


def _output_paths(args):
    """{option: path} of the output files asked for."""
    paths = {_PER_TOKEN: getattr(args, "per_token", None), _PER_SEQUENCE: getattr(args, "per_sequence", None)}
    return {option: path for option, path in paths.items() if path is not None}


def _input_paths(args):
    """The input files that exist (outputs must not be one of them)."""
    from ._files import _split_spec

    specs = (getattr(args, "logits", None), getattr(args, "targets", None))
    return [path for path in (_split_spec(spec)[0] for spec in specs if spec is not None) if os.path.exists(path)]


def _open_output(path, name, logits, targets, shift):
    """A .npy file at ``path`` (the output ``name``'s temporary file) of the scored
    targets' shape, float32 (float64 for float64 logits), mapped for writing."""
    import numpy as np

    from ._arrays import result_dtype
    from ._outputs import shown

    shape = tuple(targets.shape)
    if shift and len(shape) == 2:
        shape = (shape[0], max(0, shape[1] - 1))
    try:
        return np.lib.format.open_memmap(path, mode="w+", dtype=result_dtype(logits.dtype), shape=shape)
    except OSError as error:
        raise _Fail(f"{shown(name)}: cannot write ({error.strerror or error})") from None


def _save(path, name, array):
    import numpy as np

    from ._outputs import shown

    try:
        with open(path, "wb") as file:  # a file object: np.save adds no suffix
            np.save(file, array)
    except OSError as error:
        raise _Fail(f"{shown(name)}: cannot write ({error.strerror or error})") from None


def _score(args):
    from ._files import InputError, open_array

    from ._arrays import reinterpret

    checks = []  # stored .npz members' CRC-32, summed while they are scored
    try:
        logits, targets = open_array(args.logits, checks), open_array(args.targets, checks)
        logits = reinterpret(logits, args.dtype)
    except (InputError, OSError, TypeError, RuntimeError) as error:
        raise _Fail(f"{args.logits}: {error}" if isinstance(error, (TypeError, RuntimeError)) else str(error)) from None
    _check_shapes(logits, targets, args)
    try:
        result, seconds = _run_evaluation(logits, targets, args, progress=not args.no_progress and sys.stderr.isatty(),
                                          verify=lambda: _verify(checks))
    except _Fail:
        _verify(checks)  # damaged bytes explain a failure better than what they caused (a target out of range)
        raise
    throughput = {"seconds": seconds, "rows_per_second": result.count / seconds if seconds else None,
                  "gb_per_second": logits.nbytes / seconds / 1e9 if seconds else None}
    if result.pipeline is not None:  # host files streamed through the GPU: its stages
        throughput["gpu_pipeline"] = result.pipeline
    if args.json:
        print(json.dumps({**result.to_dict(), "throughput": throughput,
                          "inputs": _inputs(logits, targets, args, result.pipeline is not None)},
                         indent=2, allow_nan=False))
    else:
        print(_table(result, f"{args.logits} {_describe(logits)}", seconds, logits.nbytes,
                     args.calibration_bins))
    return 0


def _verify(checks):
    """Wait for the inputs' checksums (``_files.MemberChecksum``); one line on a mismatch."""
    from ._files import InputError

    try:
        for check in checks:
            check.verify()
    except InputError as error:
        raise _Fail(str(error)) from None


def _check_shapes(logits, targets, args):
    """The files' whole shapes against each other, before anything is scored (a
    mismatch found in the one-row warm-up would describe the slice, not the files)."""
    name, target_name = args.logits, args.targets
    if logits.ndim < 2 and not (logits.ndim == 1 and targets.ndim == 0):
        raise _Fail(f"{name} {_describe(logits)} is {logits.ndim}-D: nbce score expects logits of (rows, classes) "
                    "or more dimensions, the classes along --axis")
    if not -logits.ndim <= args.axis < logits.ndim:
        raise _Fail(f"--axis {args.axis} is out of range for {name} {_describe(logits)}")
    axis = args.axis % logits.ndim
    if args.shift:
        if logits.ndim != 3 or axis != 2:
            raise _Fail(f"--shift scores (batch, seq, vocab) logits, class axis last, against (batch, seq) token ids; "
                        f"{name} is {_describe(logits)} with --axis {args.axis}")
        expected, what = tuple(logits.shape[:2]), "(batch, seq) token ids"
    else:
        expected = tuple(logits.shape[:axis]) + tuple(logits.shape[axis + 1:])
        what = f"one class index per row: the logits' shape without the class axis {args.axis}"
    if tuple(targets.shape) != expected:
        raise _Fail(f"{target_name} {_describe(targets)} does not fit {name} {_describe(logits)}: expected targets "
                    f"of shape {expected} ({what})")


def _inputs(logits, targets, args, on_gpu):
    """What was scored, how (``on_gpu``: through the GPU pipeline), and by which nbce: the JSON output's "inputs"."""
    from . import __version__

    device = "cuda" if on_gpu or args.device == "cuda" else "cpu"  # files are host data: "auto" chose

    def describe(path, array):
        return {"file": path, "shape": list(array.shape), "dtype": str(array.dtype)}

    return {"logits": describe(args.logits, logits), "targets": describe(args.targets, targets),
            "axis": args.axis, "ignore_index": args.ignore_index, "top_k": list(args.top_k),
            "calibration_bins": args.calibration_bins, "shift": args.shift, "device": device,
            "nbce_version": __version__}


def _describe(array):
    return f"({' x '.join(str(n) for n in array.shape)} {array.dtype})"


def _table(result, title, seconds, nbytes, bins):
    rows = [
        ("rows scored", f"{result.count:,}"),
        ("rows ignored", f"{result.ignored:,}"),
        ("loss (nats)", f"{result.loss:.6f}  ± {result.loss_stderr:.6f} (standard error)"),
        ("perplexity", f"{result.perplexity:.4f}"),
        ("bits per token", f"{result.bits_per_token:.6f}"),
        *((f"top-{k} accuracy", f"{100 * v:.3f} %  ± {100 * result.accuracy_stderr.get(k, math.nan):.3f}")
          for k, v in result.accuracy.items()),
        ("mean entropy (nats)", f"{result.entropy:.6f}"),
        (f"ECE ({bins} bins)", f"{result.ece:.6f}"),
        ("time", f"{seconds:.3f} s  ({result.count / max(seconds, 1e-9):,.0f} rows/s, "
                 f"{nbytes / max(seconds, 1e-9) / 1e9:.2f} GB/s)"),
        *([("GPU pipeline", _pipeline_line(result.pipeline))] if result.pipeline is not None else []),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join([title, *(f"  {name:<{width}}  {value}" for name, value in rows)])


def _pipeline_line(stages):
    """The GPU pipeline's stages in words: host reads, copies, kernels, overlap."""
    def rate(value):
        return "not timed" if value is None else f"{value:.1f} GB/s"

    overlap = "not timed" if stages["overlap"] is None else f"{stages['overlap']:.2f}"
    return (f"host reads {stages['read_s']:.3f} s, copies {rate(stages['copy_gb_per_second'])}, "
            f"kernels {rate(stages['compute_gb_per_second'])}, overlap {overlap}")


def _demo(args):
    from . import _demo
    from ._files import open_array

    with tempfile.TemporaryDirectory(prefix="nbce-demo-") as folder:
        _check_demo_space(folder, args.rows, args.classes)
        print(f"nbce demo: writing {args.rows:,} x {args.classes:,} float16 logits "
              f"({args.rows * args.classes * 2 / 1e6:,.0f} MB) and Zipf-distributed targets to {folder}",
              file=sys.stderr)
        logits_path, targets_path = _demo.write_dataset(Path(folder), args.rows, args.classes)
        print(f"$ nbce score {logits_path.name} {targets_path.name}   "
              "(a first run compiles the kernels: seconds, then cached)", file=sys.stderr)
        score_args = argparse.Namespace(axis=-1, ignore_index=_demo.PADDING, top_k=(1, 5), calibration_bins=15,
                                        device=args.device, chunk_rows=None)
        logits, targets = open_array(str(logits_path)), open_array(str(targets_path))
        result, seconds = _run_evaluation(logits, targets, score_args, progress=sys.stderr.isatty())
        print(_table(result, f"{logits_path.name} {_describe(logits)}", seconds, logits.nbytes, 15))
        _check_sample(logits, targets, score_args)
        del logits, targets  # unmap before the folder goes
    return 0


def _check_demo_space(folder, rows, classes):
    """Refuse a demo data set that the temporary folder's disk, or memory, cannot
    hold (a full disk under a memory map would end the process with SIGBUS)."""
    import shutil

    needed = rows * classes * 2 + rows * 8
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise _Fail(f"--rows {rows:,} --classes {classes:,} need {needed:,} bytes in {folder}, "
                    f"where {free:,} are free: choose fewer")
    if classes * 4 * 520 > _memory_bytes():  # about 520 float32 rows: a block of 512, the prior, temporaries
        raise _Fail(f"--classes {classes:,} needs {classes * 4 * 520:,} bytes of memory to generate: choose fewer")


def _memory_bytes():
    """Physical memory, or 2**63 where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**63


def _check_sample(logits, targets, args, sample_rows=256):
    """Score a sample of rows with nbce and with NumPy float64; fail loudly if they disagree."""
    import numpy as np

    import nbce

    from . import _demo

    picks = np.unique(np.linspace(0, len(targets) - 1, sample_rows).astype(np.int64))
    x, t = np.asarray(logits[picks]), np.asarray(targets[picks])
    got = nbce.evaluate(x, t, ignore_index=args.ignore_index, top_k=args.top_k)
    expected = _demo.numpy_reference(x, t, args.top_k)
    worst = max(_difference(got.loss, expected["loss"]), _difference(got.entropy, expected["entropy"]),
                *(_difference(got.accuracy[k], expected["accuracy"][k]) for k in args.top_k))
    if not worst < 1e-5:
        raise _Fail(f"check failed: nbce and NumPy differ by {worst:.3g} on {picks.size} sampled rows", code=1)
    print(f"check: nbce agrees with a float64 NumPy reference on {picks.size} sampled rows "
          f"(largest difference {worst:.1e})")


def _difference(ours, theirs):
    """|ours - theirs|, 0 where both are NaN (a sample of padding rows only has no loss on either side)."""
    return 0.0 if math.isnan(ours) and math.isnan(theirs) else abs(ours - theirs)


def _bench(args):
    from ._bench import speed_table

    print(speed_table(args.rows, args.classes))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
