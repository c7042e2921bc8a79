"""Regenerate docs/bench/regimes.md and regimes.png: PATNet against FasterNet in every runtime and native precision.

Two runs of ``patnet bench``'s engine, each regime's models timed in alternation in one process (batch 1,
both models folded, 10 warm-up + 200 timed calls, median of per-round ratios):
  1. patnet/fasternet T0, T1, T2, S at 3x224x224, on 1 and 2 threads;
  2. patnet/fasternet T0 at 1x64x64 with 10 classes (the Fashion-MNIST model), on 1 and 2 threads;
each in every runtime (eager, torch.compile, ONNX Runtime, OpenVINO) and every precision this CPU has
natively (fp32; bf16 with AVX512-BF16 or AMX). Full reports go to docs/bench/regimes/<run>/; regimes.md
gathers the ratio, efficiency and startup tables under a header naming the command and the CPU. The GPU's
protocol (fp32, AMP fp16/bf16 channels-last, batch 32 and 256) is run by scripts/gpu_checks.sh.

Run it on a quiet machine (the header records the load average):

    .venv/bin/python scripts/bench_regimes.py
    .venv/bin/python scripts/bench_regimes.py --quick --out /tmp/regimes    # smoke test, minutes
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from patnet.bench import BenchConfig, run_benchmark
from patnet.bench.plot import plot_ratios
from patnet.bench.report import header_lines, regime_parts
from patnet.fileio import write_text_atomic
from patnet.models import baseline_partner
from patnet.runtimes import RUNTIMES, native_bf16

VARIANTS = ("patnet_t0", "patnet_t1", "patnet_t2", "patnet_s")
RUNS = {  # name -> (title, variants, image size, model keyword arguments)
    "rgb224": ("3x224x224, 1000 classes", VARIANTS, 224, {}),
    "gray64": ("1x64x64, 10 classes (the Fashion-MNIST model)", VARIANTS[:1], 64, {"num_classes": 10, "in_chans": 1}),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/bench", help="folder for regimes.md, regimes.png and regimes/")
    parser.add_argument("--quick", action="store_true", help="a smoke test: few iterations (not a measurement)")
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    parser.add_argument("--threads", nargs="+", type=int, help="default: 1 and 2 (as far as the cores go)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), help="PATNet variants (with partners)")
    parser.add_argument("--model-kwargs", default="{}", help="JSON keyword arguments for every model (smoke tests)")
    return parser.parse_args()


def command() -> str:
    return shlex.join(["python", "scripts/bench_regimes.py", *sys.argv[1:]])


def base_config(args: argparse.Namespace) -> BenchConfig:
    threads = tuple(args.threads or (t for t in (1, 2) if t <= (os.cpu_count() or 1)))
    dtypes = ("fp32", "bf16") if native_bf16("cpu") else ("fp32",)
    settings = dict(forms=("deploy",), runtimes=tuple(args.runtimes), dtypes=dtypes, latency_threads=threads,
                    throughput=False, gpu=False)
    return BenchConfig.quick(**settings) if args.quick else BenchConfig(**settings)


def models_of(variants) -> tuple[str, ...]:
    return (*variants, *(baseline_partner(name) for name in variants))


def run_cpu(args: argparse.Namespace, out: Path) -> list[tuple[str, str, dict]]:
    """Both CPU runs, each saved as it goes to ``out/regimes/<run>/``; returns (run, title, results) of each."""
    config, extra = base_config(args), json.loads(args.model_kwargs)
    done = []
    for name, (title, variants, img, kwargs) in RUNS.items():
        chosen = [v for v in variants if v in args.variants]
        if chosen:
            print(f"bench_regimes: {title}", flush=True)
            run_config = replace(config, models=models_of(chosen), img_size=img, model_kwargs={**kwargs, **extra})
            done.append((name, title, run_benchmark(run_config, out / "regimes" / name, command=command())))
    return done


def write_report(runs: list[tuple[str, str, dict]], out: Path, name: str, title: str) -> Path:
    """``<name>.md`` (the first run's header, then each run's regime tables) and ``<name>.png`` in ``out``."""
    links = ", ".join(f"[{run}](regimes/{run}/bench.md)" for run, _, _ in runs)
    parts = [f"# {title}", "", *(f"- {line}" for line in header_lines(runs[0][2])),
             f"- Full reports (every statistic, each section in detail): {links}"]
    for _, run_title, results in runs:
        parts += ["", f"## {run_title}", *regime_parts(results, level=3)]
    if plot_ratios([results for _, _, results in runs], out / f"{name}.png"):
        parts += ["", f"![ratios by regime]({name}.png)"]
    path = out / f"{name}.md"
    write_text_atomic(path, "\n".join(parts) + "\n")
    return path


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    runs = run_cpu(args, out)
    if runs:
        print(f"wrote {write_report(runs, out, 'regimes', 'PATNet against FasterNet in every runtime and precision')}")


if __name__ == "__main__":
    main()
