"""``patnet bench``: compare backbones' size and speed on this machine, over the regime matrix (runtimes,
precisions, threads, image sizes), flags -> :class:`BenchConfig`."""
from __future__ import annotations

import argparse
import json
import shlex
import sys

from ..bench import BenchConfig, default_models, make_bench_config, print_report, run_benchmark, warn_if_busy
from ..bench.plan import FORMS
from ..errors import InvalidValueError
from ..runtimes import GPU_DTYPES, RUNTIMES
from .common import config_overrides

GPU_OPTIONS = ("gpu_batch", "gpu_warmup", "gpu_iters", "gpu_per_round", "amp_dtype")
FLAG_NAMES = {"latency_threads": "threads", "runtimes": "runtime", "dtypes": "dtype"}  # dest -> flag
NEGATABLE = ("cpu", "gpu", "throughput")
DEFAULTS = BenchConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help=f"timm model names (default: {' '.join(default_models())})")
    parser.add_argument("--baseline", metavar="MODEL", help="model every other model is compared with when it has no "
                        "fasternet_X partner (added to the models if missing)")
    parser.add_argument("--forms", nargs="+", choices=FORMS, help="training form (eval, unfolded) and/or deploy "
                        "form (BN folded) for the eager runtime; default both (other runtimes run the deploy form)")
    parser.add_argument("--runtime", dest="runtimes", nargs="+", choices=RUNTIMES, metavar="RUNTIME",
                        help=f"runtimes, each a regime: {', '.join(RUNTIMES)} (default eager)")
    parser.add_argument("--dtype", dest="dtypes", nargs="+", choices=GPU_DTYPES, metavar="DTYPE",
                        help="precisions, each a regime: fp32, bf16 (where the hardware has it natively), fp16 "
                        "(GPU only) (default fp32)")
    parser.add_argument("--img-size", type=int, nargs="+", metavar="N",
                        help=f"input heights and widths, each a regime (default {DEFAULTS.img_size}); the channels "
                        "are each model's own in_chans")
    parser.add_argument("--model-kwargs", metavar="JSON", help="keyword arguments for every "
                        "timm.create_model call, as a JSON object, e.g. '{\"num_classes\": 10, \"in_chans\": 1}'")
    parser.add_argument("--out-dir", default="bench-results", metavar="DIR",
                        help="where bench.json, bench.md and bench.png go (default: bench-results)")
    parser.add_argument("--accuracy", metavar="FILE", help="top-1 accuracies (JSON {model: top1} or CSV with "
                        "columns model,top1): plot latency against accuracy instead of MACs")
    parser.add_argument("--plot-y", choices=("macs", "accuracy"), help="y axis of the plot")
    parser.add_argument("--quick", action="store_true", help="a smoke test of about a minute: few iterations, "
                        "1 thread only, small batches (explicit options still apply)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--seed", type=int, metavar="N", help="seed for model initialisation")

    cpu = parser.add_argument_group("CPU latency (papers' protocol: batch 1, 1 thread, 10 + 200 calls)")
    cpu.add_argument("--cpu", action=argparse.BooleanOptionalAction, help="measure on the CPU (default: yes; "
                     "--no-cpu with a GPU measures the GPU only)")
    cpu.add_argument("--threads", dest="latency_threads", type=int, nargs="+", metavar="N",
                     help="thread counts to measure latency with (default: 1 and all cores)")
    cpu.add_argument("--latency-batch", type=int, metavar="N", help=f"default {DEFAULTS.latency_batch}")
    cpu.add_argument("--warmup", type=int, metavar="N", help=f"warm-up calls per model (default {DEFAULTS.warmup})")
    cpu.add_argument("--iters", type=int, metavar="N", help=f"timed calls per model (default {DEFAULTS.iters})")
    cpu.add_argument("--per-round", type=int, metavar="N", help="consecutive calls of one model before the "
                     f"next model's turn (default {DEFAULTS.per_round}; must divide --iters)")
    cpu.add_argument("--matmul-size", type=int, metavar="N", help=f"size of the fp32 matmul giving the GFLOP/s ceiling "
                     f"(default {DEFAULTS.matmul_size})")

    tp = parser.add_argument_group("CPU throughput")
    tp.add_argument("--throughput", action=argparse.BooleanOptionalAction,
                    help="measure CPU throughput in every regime (default: yes)")
    tp.add_argument("--throughput-batch", type=int, metavar="N", help=f"default {DEFAULTS.throughput_batch}")
    tp.add_argument("--throughput-threads", type=int, metavar="N", help="default: all cores")
    tp.add_argument("--throughput-warmup", type=int, metavar="N", help=f"default {DEFAULTS.throughput_warmup}")
    tp.add_argument("--throughput-iters", type=int, metavar="N", help=f"default {DEFAULTS.throughput_iters}")

    gpu = parser.add_argument_group("GPU throughput (fp32 NCHW and AMP channels-last; eager and compile runtimes)")
    gpu.add_argument("--gpu", action=argparse.BooleanOptionalAction,
                     help="measure on the GPU (default: when CUDA is available; any GPU option implies --gpu)")
    gpu.add_argument("--gpu-batch", type=int, nargs="+", metavar="N",
                     help=f"batch sizes, each a regime (default {' '.join(map(str, DEFAULTS.gpu_batches))})")
    gpu.add_argument("--gpu-warmup", type=int, metavar="N", help=f"default {DEFAULTS.gpu_warmup}")
    gpu.add_argument("--gpu-iters", type=int, metavar="N", help=f"default {DEFAULTS.gpu_iters}")
    gpu.add_argument("--gpu-per-round", type=int, metavar="N", help="calls timed as one block between synchronisations "
                     f"(default {DEFAULTS.gpu_per_round}; must divide --gpu-iters)")
    gpu.add_argument("--amp-dtype", choices=("float16", "bfloat16"), help=f"AMP precision measured besides fp32 and "
                     f"--dtype (default {DEFAULTS.amp_dtype})")


def _model_kwargs(text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidValueError(f"--model-kwargs is not valid JSON ({exc.msg}); "
                                "give an object such as '{\"num_classes\": 10}'") from None
    if not isinstance(kwargs, dict):
        raise InvalidValueError("--model-kwargs must be a JSON object such as '{\"num_classes\": 10}'")
    return kwargs


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The run's configuration: explicit options over ``--quick`` settings over the defaults."""
    given_gpu_options = [name for name in GPU_OPTIONS if getattr(args, name) is not None]
    if given_gpu_options and args.gpu is False:
        flags = ", ".join("--" + name.replace("_", "-") for name in given_gpu_options)
        raise InvalidValueError(f"{flags} cannot be combined with --no-gpu; drop one of them")
    overrides = config_overrides(args, BenchConfig)
    overrides.update(model_kwargs=_model_kwargs(args.model_kwargs), gpu=True if given_gpu_options else args.gpu,
                     models=tuple(args.models) or None)
    return make_bench_config(args.quick, **overrides)


def command_line(args: argparse.Namespace) -> str:
    """The command as given (options in canonical order), for the report header."""
    words = ["patnet", "bench", *args.models]
    for name, value in vars(args).items():
        if name in ("models", "command") or value is None or (value is False and name not in NEGATABLE):
            continue
        flag = "--" + FLAG_NAMES.get(name, name).replace("_", "-")
        if value is False:
            words.append(flag.replace("--", "--no-", 1))
        elif value is True:
            words.append(flag)
        else:
            words += [flag, *map(str, value if isinstance(value, list) else [value])]
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    warn_if_busy()
    try:
        results = run_benchmark(config, args.out_dir, accuracy_file=args.accuracy, plot_y=args.plot_y,
                                command=command_line(args), progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"patnet bench: what was measured before the interruption is in {args.out_dir}/", file=sys.stderr)
        raise
    print_report(results)
    plots = [results["header"][key] for key in ("plot", "ratio_plot") if results["header"].get(key)]
    print("\nwrote " + ", ".join(["bench.json", "bench.md", *plots]) + f" to {args.out_dir}/")
    return 0
