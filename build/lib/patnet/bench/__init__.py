"""Benchmarks: PATNet and any timm model side by side, on this machine, in every runtime and precision.

The harness (:func:`compare_runs`, :func:`compare`, :func:`measure_latency`, :func:`matmul_gflops`) times
callables or ``nn.Module`` s in alternation; :func:`run_benchmark` measures a list of timm models over the
regime matrix (runtime x precision x threads x image size, and the GPU's batch sizes) with
:func:`patnet.runtimes.make_runner` and writes JSON, Markdown and plots; ``patnet bench`` is its
command line.
"""
from .plan import BenchConfig, default_models, make_bench_config, plan_sections
from .report import load_accuracies, print_report, to_markdown, warn_if_busy, write_outputs
from .runner import default_baselines, run_benchmark
from .timing import (
                     Comparison,
                     RatioStats,
                     TimingStats,
                     compare,
                     compare_runs,
                     matmul_gflops,
                     measure_latency,
                     num_threads,
                     time_alternating,
)

__all__ = [
    "BenchConfig", "Comparison", "RatioStats", "TimingStats", "compare", "compare_runs", "default_baselines",
    "default_models", "load_accuracies", "make_bench_config", "matmul_gflops", "measure_latency", "num_threads",
    "plan_sections", "print_report", "run_benchmark", "time_alternating", "to_markdown", "warn_if_busy",
    "write_outputs",
]
