"""Benchmarks: PATNet and any timm model side by side, on this machine.

The harness (:func:`compare`, :func:`measure_latency`, :func:`matmul_gflops`) times ``nn.Module`` s in
alternation; :func:`run_benchmark` measures a list of timm models in training and deploy form and
writes JSON, Markdown and a plot; ``patnet bench`` is its command line.
"""
from .report import load_accuracies, print_report, to_markdown, warn_if_busy, write_outputs
from .runner import BenchConfig, default_baselines, default_models, make_bench_config, run_benchmark
from .timing import (
                     Comparison,
                     RatioStats,
                     TimingStats,
                     compare,
                     matmul_gflops,
                     measure_latency,
                     num_threads,
                     time_alternating,
)

__all__ = [
    "BenchConfig", "Comparison", "RatioStats", "TimingStats", "compare", "default_baselines", "default_models",
    "load_accuracies", "make_bench_config", "matmul_gflops", "measure_latency", "num_threads", "print_report",
    "run_benchmark", "time_alternating", "to_markdown", "warn_if_busy", "write_outputs",
]
