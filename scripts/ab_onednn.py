"""A/B of the deploy form's matrix products: the plain matrix products (A) against the library path a rule
picks (B), beside FasterNet.

Eager (``--runtime eager``): the prepacked oneDNN linears (patnet.layers.onednn, B) against torch.addmm (A).
Compiled (``--runtime compile``): fp32 products as 1x1 convs, which inductor hands to oneDNN (B), against
matrix products, which it hands to MKL (A); each variant is its own compiled graph, called with the rule it was
traced under (dynamo guards on it). On a GPU (``--device cuda``, eager): the MLP's products as cuDNN 1x1 convs
(B, ``CUDA_PRODUCTS_AS_CONVS``) against cuBLAS matrix products (A), at ``--batch``, each round's calls timed
between synchronisations, cuDNN autotuning on (the 4 Dec 2026 run in docs/bench/gpu.md had it off).
For each thread count and model, in one process: every round runs PATNet A, PATNet B and the deployed
FasterNet partner once each, in rotating order (batch 1 unless ``--batch``, 150 timed calls each after 10
warm-up calls, 5-call rounds). Prints a markdown table: median ms, A / FasterNet, B / FasterNet and B / A
(medians of per-round ratios, the harness's ``summarise``) and the largest relative difference between A's and
B's outputs.

    .venv/bin/python scripts/ab_onednn.py --threads 1 2 --dtype fp32
    .venv/bin/python scripts/ab_onednn.py --force-fp32    # on an Intel CPU: would fp32 gain there too?
    .venv/bin/python scripts/ab_onednn.py --force-fp32 --runtime compile --cases t0 t2
    python scripts/ab_onednn.py --device cuda --batch 256 --dtype bf16 --cases t0 t2 s
"""
from __future__ import annotations

import argparse
from functools import partial
from typing import Callable, TypeVar

import timm
import torch

import patnet.layers.fused as fused
import patnet.layers.onednn as onednn
from patnet.bench.timing import summarise, time_alternating
from patnet.deploy import deploy
from patnet.models import baseline_partner
from patnet.runtimes.hardware import describe_cpu
from patnet.runtimes.runner import make_runner, relative_difference

CASES = {"t0": ("patnet_t0", 224, 3, 1000), "t1": ("patnet_t1", 224, 3, 1000), "t2": ("patnet_t2", 224, 3, 1000),
         "s": ("patnet_s", 224, 3, 1000), "t0@64": ("patnet_t0", 64, 1, 10)}
T = TypeVar("T")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--iters", type=int, default=150)
    parser.add_argument("--runtime", choices=["eager", "compile"], default="eager")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: eager only")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--force-fp32", action="store_true",
                        help="take oneDNN for fp32 also where MKL is fast (to measure the rule on an Intel CPU)")
    return parser.parse_args()


def under_rule(name: str, value, work: Callable[[], T]) -> Callable[[], T]:
    """``work`` as a callable that runs with ``patnet.layers.fused.<name>`` set to ``value``, restored after.
    Toggling per call lets A and B share one process; a compiled graph is called under the rule it was traced
    with, so dynamo's guards on it hold."""
    def call() -> T:
        kept = getattr(fused, name)
        setattr(fused, name, value)
        try:
            return work()
        finally:
            setattr(fused, name, kept)
    return call


def with_rule(model: torch.nn.Module, x: torch.Tensor, use_onednn: bool) -> Callable[[], torch.Tensor]:
    rule = fused.takes_onednn if use_onednn else (lambda rows, matrix: False)
    return under_rule("takes_onednn", rule, lambda: model(x))


def compiled_with_rule(model: torch.nn.Module, x: torch.Tensor, dtype: str,
                       convs: bool) -> Callable[[], torch.Tensor]:
    """``model`` compiled (patnet.runtimes.make_runner) with fp32 products as oneDNN convs or MKL products,
    and called with that rule in force."""
    runner = under_rule("FP32_TAKES_ONEDNN", convs, lambda: make_runner(model, "compile", dtype, x, threads=None))()
    return under_rule("FP32_TAKES_ONEDNN", convs, lambda: runner(x))


def on_cuda(models: list[torch.nn.Module], x: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    """PATNet's products as cuBLAS matrix products (A) and cuDNN 1x1 convs (B), and FasterNet, on the GPU."""
    return {"A": under_rule("CUDA_PRODUCTS_AS_CONVS", False, lambda: models[0](x)),
            "B": under_rule("CUDA_PRODUCTS_AS_CONVS", True, lambda: models[0](x)), "F": lambda: models[1](x)}


def variants(name: str, chans: int, classes: int, x: torch.Tensor, dtype: str,
             runtime: str) -> dict[str, Callable[[], torch.Tensor]]:
    """PATNet's A and B (see the module docstring) and FasterNet, each a callable on ``x`` (on ``x``'s device)."""
    fresh = [timm.create_model(n, num_classes=classes, in_chans=chans).eval() for n in (name, baseline_partner(name))]
    if x.is_cuda:
        return on_cuda([deploy(model).to(x.device, DTYPES[dtype]) for model in fresh], x.to(DTYPES[dtype]))
    if runtime == "compile":
        runs = {key: compiled_with_rule(fresh[0], x, dtype, convs) for key, convs in (("A", False), ("B", True))}
        runs["F"] = partial(make_runner(fresh[1], "compile", dtype, x, threads=None), x)
        return runs
    models = [deploy(model).to(DTYPES[dtype]) for model in fresh]
    x = x.to(DTYPES[dtype])
    return {"A": with_rule(models[0], x, False), "B": with_rule(models[0], x, True), "F": lambda: models[1](x)}


def measure(case: str, dtype: str, iters: int, runtime: str, device: str, batch: int) -> str:
    name, size, chans, classes = CASES[case]
    x = torch.randn(batch, chans, size, size).to(device, memory_format=torch.channels_last)
    runs = variants(name, chans, classes, x, dtype, runtime)
    gpu = dict(time_each_call=False, synchronize=torch.cuda.synchronize) if x.is_cuda else {}
    torch.backends.cudnn.benchmark = x.is_cuda  # as patnet bench times GPUs: cuDNN picks its fastest kernels
    with torch.inference_mode():
        difference = relative_difference(runs["A"](), runs["B"]())
        times = time_alternating(runs, iters=iters, warmup=10, per_round=5, **gpu)
    stats, against_fasternet = summarise(times, {"A": "F", "B": "F"})
    _, against_addmm = summarise(times, {"B": "A"})
    ms = " | ".join(f"{stats[key].median_ms:.2f}" for key in ("A", "B", "F"))
    ratios = " | ".join(f"{r.median:.3f}" for r in (*against_fasternet.values(), against_addmm["B"]))
    where = torch.cuda.get_device_name() if x.is_cuda else torch.get_num_threads()
    return f"| {name} | {size} | {where} | {batch} | {ms} | {ratios} | {difference:.1e} |"


def main() -> None:
    args = parse_args()
    if args.force_fp32:
        onednn.FP32_TAKES_ONEDNN = True
    rule = "fp32 forced onto oneDNN" if args.force_fp32 else "the shipped rule"
    paths = "A ms (cuBLAS) | B ms (cuDNN)" if args.device == "cuda" else "A ms (MKL) | B ms (oneDNN)"
    print(f"CPU: {describe_cpu()}; {args.runtime} {args.dtype} on {args.device}; {rule}; torch {torch.__version__}\n")
    print(f"| model | px | threads or GPU | batch | {paths} | FasterNet ms | A / F | B / F | B / A | max rel. diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for threads in args.threads if args.device == "cpu" else [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        for case in args.cases:
            print(measure(case, args.dtype, args.iters, args.runtime, args.device, args.batch), flush=True)


if __name__ == "__main__":
    main()
