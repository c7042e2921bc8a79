"""Benchmark reports: the machine header (CPU named with its flags), terminal and Markdown reports, JSON,
plots, accuracy files. The tables themselves are built in ``tables.py``."""
from __future__ import annotations

import csv
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import timm
import torch

from ..errors import InvalidValueError, MissingFileError
from ..fileio import write_text_atomic
from ..runtimes import cpu_flags, cpu_model, describe_cpu
from .tables import (
    efficiency_table,
    markdown_table,
    ratio_table,
    section_table,
    startup_table,
    summary_table,
    text_table,
)

JSON_NAME, MARKDOWN_NAME, PLOT_NAME, RATIO_PLOT_NAME = "bench.json", "bench.md", "bench.png", "bench_ratios.png"
RUNTIME_PACKAGES = ("onnxruntime", "openvino")


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """What the numbers depend on: CPU, cores, instruction set, GPU, software versions."""
    from patnet import __version__

    return {
        "cpu": cpu_model(),
        "cpu_description": describe_cpu(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "patnet": __version__,
        **{name: _package_version(name) for name in RUNTIME_PACKAGES},
        "load_average_start": load_average(),
    }


def load_average() -> float | None:
    """The 1-minute load average: above the thread count, other work competed with the timings."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def warn_if_busy() -> None:
    """Say so when other work is running: it distorts timings, multi-threaded ones most."""
    load, cores = load_average(), os.cpu_count() or 1
    if load is not None and load > 0.5:
        print(f"patnet bench: warning: load average {load} on {cores} cores; other work is running and will "
              "distort the timings (multi-threaded ones most)", file=sys.stderr)


def load_accuracies(path: str | Path) -> dict[str, float]:
    """Top-1 accuracies by model name from a JSON object ``{name: top1}`` or a CSV with columns
    ``model`` and ``top1`` (timm's results files)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"accuracy file {path} does not exist")
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not all(isinstance(v, (int, float)) for v in data.values()):
            raise InvalidValueError(f"{path}: expected a JSON object mapping model names to top-1 accuracies")
        return {str(k): float(v) for k, v in data.items()}
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or "model" not in rows[0] or "top1" not in rows[0]:
            raise InvalidValueError(f"{path}: expected a CSV with columns 'model' and 'top1'")
        try:
            return {row["model"]: float(row["top1"]) for row in rows}
        except ValueError as exc:
            raise InvalidValueError(f"{path}: a 'top1' value is not a number ({exc})") from None
    raise InvalidValueError(f"{path}: accuracy files must be .json or .csv")


def _ceiling_text(ceilings: dict[str, float]) -> str:
    return ", ".join(f"{t} thread{'s' if t != '1' else ''}: {g:.1f} GFLOP/s" for t, g in ceilings.items())


def _input_text(results: dict) -> str:
    h = results["header"]
    chans = sorted({info.get("in_chans", 3) for info in results["models"].values()}) or [3]
    sizes = [f"{'/'.join(map(str, chans))}x{img}x{img}" for img in h.get("img_sizes", [])]
    return (f"Input {', '.join(sizes)}; params of the training form, MACs at the first size "
            "(FlopCounterMode / 2 at batch 1, math attention)")


def _ceiling_lines(h: dict) -> list[str]:
    size = h["config"]["matmul_size"]
    fp32 = _ceiling_text(h["matmul_gflops"]) or "not measured"
    lines = [f"fp32 {size}x{size} matmul ceiling (the faster of torch.mm and oneDNN's prepacked linear), measured "
             f"in this run: {fp32}",
             f"bf16 {size}x{size} matmul ceiling: " + (_ceiling_text(h["matmul_gflops_bf16"]) or
                                                       "not measured (no native bf16 on this CPU)")]
    if h["gpu_matmul_gflops"]:
        tf32 = h.get("gpu_tf32", {})
        lines.append("GPU matmul ceilings: " + ", ".join(f"{dtype} {g:.0f} GFLOP/s"
                                                          for dtype, g in h["gpu_matmul_gflops"].items())
                     + f"; TF32 allowed in fp32 convolutions: {tf32.get('cudnn')}, in matmuls: {tf32.get('matmul')}")
    return lines


def header_lines(results: dict) -> list[str]:
    """The report's header: command, machine (the CPU with its flags), software, load, ceilings, skips."""
    h = results["header"]
    runtimes = ", ".join(f"{name} {h[name]}" for name in RUNTIME_PACKAGES if h.get(name))
    lines = [
        f"Machine: {h['cpu_description']}, {h['cores']} cores, torch CPU capability {h['cpu_capability']}"
        + (f", GPU {h['gpu']}" if h["gpu"] else ", no GPU") + f"; {h['os']}",
        f"Software: Python {h['python']}, torch {h['torch']}, timm {h['timm']}, patnet {h['patnet']}"
        + (f", {runtimes}" if runtimes else ""),
        f"Started {h['started']}, " + (f"finished {h['finished']}" if h["finished"] else
                                         "interrupted" if h["interrupted"] else "in progress"),
        f"1-minute load average: {h['load_average_start']} at the start"
        + (f", {h['load_average_end']} at the end" if h.get("load_average_end") is not None else "")
        + f" (a load above {h['cores']} would mean other work competed with the timings)",
        _input_text(results),
        *_ceiling_lines(h),
        *(f"Not measured: {s['runtime']} {s['dtype']} on {s['device']}: {s['reason']}" for s in h["skipped"]),
        "time/base: median over rounds of (model time / baseline time), same runtime, precision and form, timed "
        "in alternation; below 1 the model is faster",
        "startup: deploy, export or conversion, and the first call (torch.compile compiles there), apart from "
        "the timed calls",
    ]
    if h["command"]:
        lines.insert(0, f"Command: `{h['command']}`")
    return lines


def section_description(section: dict) -> str:
    per_round = section["per_round"]
    timing = "each call timed" if section["device"] == "cpu" else f"blocks of {per_round} calls timed"
    threads = "" if section["threads"] is None else f", {section['threads']} thread" + "s" * (section["threads"] != 1)
    status = (f"complete in {section['wall_s']} s" if section["complete"]
              else f"interrupted after {section['rounds']} rounds")
    runners = f" Runners ready in {section['startup_wall_s']} s." if "startup_wall_s" in section else ""
    not_timed = "".join(f" Not timed: {name}: {why}." for name, why in section.get("not_timed", {}).items())
    return (f"{section['device']}{threads}, {section.get('runtime', 'eager')}, batch {section['batch_size']}, "
            f"{section['precision']}, {section['memory_format']}; {section['warmup']} warm-up + {section['iters']} "
            f"timed calls per model, {per_round} in a row per round ({section['rounds_planned']} rounds), {timing}; "
            f"{status}.{runners}{not_timed}")


def regime_parts(results: dict, level: int = 2) -> list[str]:
    """Markdown of the per-regime tables (headings at ``level``): ratios, efficiency against both ceilings,
    startup."""
    heading = "#" * level
    parts = []
    if any(info["baseline"] for info in results["models"].values()):
        parts += ["", f"{heading} Ratios by regime", "", "Model / baseline time, median of per-round ratios "
                  "(model ms / baseline ms, medians); deploy form where measured.", "",
                  markdown_table(*ratio_table(results), text_columns=3)]
        not_timed = [f"- Not timed: {name}, {s['runtime']} {s['precision']}, {s['img_size']}x{s['img_size']}: {why}"
                     for s in results["sections"] for name, why in s.get("not_timed", {}).items()]
        parts += ["", *not_timed] if not_timed else []
    parts += ["", f"{heading} Efficiency", "", "Achieved GFLOP/s (2 x MACs / median time) and its share of the fp32 "
              "/ bf16 matmul ceilings of the same device and threads.", "",
              markdown_table(*efficiency_table(results), text_columns=3),
              "", f"{heading} Startup", "", "Seconds from making a runner to its first output (deploy, export, "
              "compile, first call).", "", markdown_table(*startup_table(results), text_columns=3)]
    return parts


def to_markdown(results: dict, plot_name: str | None = None, ratio_plot_name: str | None = None) -> str:
    models = ", ".join(results["models"]) or "none yet"
    parts = [f"# Benchmark: {models}", "", *(f"- {line}" for line in header_lines(results)), "",
             "## Summary", "", markdown_table(*summary_table(results), text_columns=3)]
    if plot_name:
        parts += ["", f"![latency plot]({plot_name})"]
    if results["sections"]:
        parts += regime_parts(results)
    if ratio_plot_name:
        parts += ["", f"![ratios by regime]({ratio_plot_name})"]
    for section in results["sections"]:
        parts += ["", f"## {section['title']}", "", section_description(section), "",
                  markdown_table(*section_table(results, section))]
    return "\n".join(parts) + "\n"


def to_text(results: dict) -> str:
    lines = [*header_lines(results), "", text_table(*summary_table(results), text_columns=3)]
    if results["sections"] and any(info["baseline"] for info in results["models"].values()):
        lines += ["", "Ratios by regime (model / baseline, deploy form where measured):",
                  text_table(*ratio_table(results), text_columns=3)]
    return "\n".join(lines)


def write_outputs(results: dict, out_dir: str | Path, plot_y: str | None = None) -> dict[str, Path]:
    """Write ``bench.json`` and ``bench.md`` to ``out_dir``, and with ``plot_y`` the plots: ``bench.png``
    when a latency section has results, ``bench_ratios.png`` when a model has a baseline; returns the
    paths written."""
    from .plot import plot_ratios, plot_results

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / JSON_NAME, "markdown": out_dir / MARKDOWN_NAME}
    if plot_y is not None and plot_results(results, out_dir / PLOT_NAME, y=plot_y):
        paths["plot"] = out_dir / PLOT_NAME
        results["header"]["plot"] = PLOT_NAME
    if plot_y is not None and plot_ratios([results], out_dir / RATIO_PLOT_NAME):
        paths["ratio_plot"] = out_dir / RATIO_PLOT_NAME
        results["header"]["ratio_plot"] = RATIO_PLOT_NAME
    write_text_atomic(paths["json"], json.dumps(results, indent=1, default=str) + "\n")
    header = results["header"]
    write_text_atomic(paths["markdown"], to_markdown(results, header.get("plot"), header.get("ratio_plot")))
    return paths


def print_report(results: dict, file=None) -> None:
    print(to_text(results), file=file or sys.stdout)
