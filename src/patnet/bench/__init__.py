"""Benchmarks: PATNet and any timm model side by side, on this machine.

The harness (:func:`compare`, :func:`measure_latency`, :func:`matmul_gflops`) times ``nn.Module`` s in
alternation; :func:`run_benchmark` measures a list of timm models in training and deploy form and
writes JSON, Markdown and a plot; ``patnet bench`` is its command line.
"""
from .report import load_accuracies, print_report, to_markdown, write_outputs
from .runner import DEFAULT_MODELS, BenchConfig, default_baselines, run_benchmark
from .timing import (Comparison, RatioStats, TimingStats, compare, matmul_gflops, measure_latency,
                     num_threads, time_alternating)

__all__ = [
    "BenchConfig", "Comparison", "DEFAULT_MODELS", "RatioStats", "TimingStats", "compare", "default_baselines",
    "load_accuracies", "matmul_gflops", "measure_latency", "num_threads", "print_report", "run_benchmark",
    "time_alternating", "to_markdown", "write_outputs",
]
