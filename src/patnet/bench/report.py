"""Benchmark reports: machine header, terminal and Markdown tables, JSON, accuracy files."""
from __future__ import annotations

import csv
import json
import os
import platform
import sys
from pathlib import Path

import timm
import torch

from ..errors import InvalidValueError, MissingFileError
from ..fileio import write_text_atomic

JSON_NAME, MARKDOWN_NAME, PLOT_NAME = "bench.json", "bench.md", "bench.png"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """What the numbers depend on: CPU, cores, instruction set, GPU, software versions."""
    from patnet import __version__

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "patnet": __version__,
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


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(entry: dict) -> str:
    ratio = entry.get("ratio")
    return "-" if ratio is None else f"{ratio['median']:.3f}"


def _headline(section: dict, entry: dict) -> str:
    """The one number a section contributes to the summary: latency (ms) or throughput (images/s)."""
    return _fmt(entry["median_ms"]) if section["kind"] == "latency" else _fmt(entry["images_per_s"], 1)


def _section_label(section: dict) -> str:
    unit = "ms" if section["kind"] == "latency" else "img/s"
    status = "" if section["complete"] else f", partial {section['rounds']}/{section['rounds_planned']}"
    return f"{section['title']} ({unit}{status})"


def _rows(results: dict, build) -> list[list[str]]:
    forms = results["header"]["config"]["forms"]
    rows = []
    for name, info in results["models"].items():
        for form in forms:
            rows.append(build(name, info, form))
    return rows


def summary_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the summary: size, then each section's headline number and ratio."""
    sections = results["sections"]
    headers = ["model", "form", "baseline", "params (M)", "MACs (G)"]
    for section in sections:
        headers += [_section_label(section), "time/base"]

    def build(name: str, info: dict, form: str) -> list[str]:
        row = [name, form, info["baseline"] or "-", _fmt(info["params"] / 1e6), _fmt(info["macs"] / 1e9, 3)]
        for section in sections:
            entry = section["results"].get(name, {}).get(form)
            row += ["-", "-"] if entry is None else [_headline(section, entry), _ratio(entry)]
        return row

    return headers, _rows(results, build)


def section_table(results: dict, section: dict) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of one section's detail: spread, throughput, efficiency, ratio spread."""
    headers = ["model", "form", "median ms", "mean ms", "p10 ms", "p90 ms", "IQR ms", "img/s", "GFLOP/s",
               "% of matmul", "time/base", "p10-p90"]

    def build(name: str, info: dict, form: str) -> list[str]:
        entry = section["results"].get(name, {}).get(form)
        if entry is None:
            return [name, form] + ["-"] * (len(headers) - 2)
        fraction = entry["fraction_of_matmul"]
        ratio = entry["ratio"]
        return [name, form, _fmt(entry["median_ms"]), _fmt(entry["mean_ms"]), _fmt(entry["p10_ms"]),
                _fmt(entry["p90_ms"]), _fmt(entry["iqr_ms"]), _fmt(entry["images_per_s"], 1),
                _fmt(entry["gflops"], 1), "-" if fraction is None else f"{100 * fraction:.0f}%", _ratio(entry),
                "-" if ratio is None else f"{ratio['p10']:.3f}-{ratio['p90']:.3f}"]

    return headers, _rows(results, build)


def text_table(headers: list[str], rows: list[list[str]], text_columns: int = 2) -> str:
    """A plain-text table with aligned columns; the first ``text_columns`` left-aligned, numbers right."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    numeric = [i >= text_columns for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(cells, widths, numeric)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def markdown_table(headers: list[str], rows: list[list[str]], text_columns: int = 2) -> str:
    align = ["---" if i < text_columns else "---:" for i in range(len(headers))]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [headers, align, *rows])


def header_lines(results: dict) -> list[str]:
    h = results["header"]
    ceilings = ", ".join(f"{t} thread{'s' if t != '1' else ''}: {g:.1f} GFLOP/s"
                         for t, g in h["matmul_gflops"].items()) or "not measured"
    size = h["config"]["matmul_size"]
    lines = [
        f"Machine: {h['cpu']}, {h['cores']} cores, {h['cpu_capability']}"
        + (f", GPU {h['gpu']}" if h["gpu"] else ", no GPU") + f"; {h['os']}",
        f"Software: Python {h['python']}, torch {h['torch']}, timm {h['timm']}, patnet {h['patnet']}",
        f"Started {h['started']}, " + (f"finished {h['finished']}" if h["finished"] else
                                         "interrupted" if h["interrupted"] else "in progress"),
        f"1-minute load average: {h['load_average_start']} at the start"
        + (f", {h['load_average_end']} at the end" if h.get("load_average_end") is not None else "")
        + f" (a load above {h['cores']} would mean other work competed with the timings)",
        f"Input {'x'.join(map(str, h['input_size']))}; params and MACs of the training form "
        "(MACs: FlopCounterMode / 2 at batch 1, math attention)",
        f"fp32 {size}x{size} matmul ceiling, measured in this run: {ceilings}",
        "time/base: median over rounds of (model time / baseline time), same form, timed in alternation; "
        "below 1 the model is faster",
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
    return (f"{section['device']}{threads}, batch {section['batch_size']}, {section['precision']}, "
            f"{section['memory_format']}; {section['warmup']} warm-up + {section['iters']} timed calls per model, "
            f"{per_round} in a row per round ({section['rounds_planned']} rounds), {timing}; {status}.")


def to_markdown(results: dict, plot_name: str | None = None) -> str:
    models = ", ".join(results["models"]) or "none yet"
    parts = [f"# Benchmark: {models}", "", *(f"- {line}" for line in header_lines(results)), "",
             "## Summary", "", markdown_table(*summary_table(results), text_columns=3)]
    if plot_name:
        parts += ["", f"![latency plot]({plot_name})"]
    for section in results["sections"]:
        parts += ["", f"## {section['title']}", "", section_description(section), "",
                  markdown_table(*section_table(results, section))]
    return "\n".join(parts) + "\n"


def to_text(results: dict) -> str:
    return "\n".join([*header_lines(results), "", text_table(*summary_table(results), text_columns=3)])


def write_outputs(results: dict, out_dir: str | Path, plot_y: str | None = None) -> dict[str, Path]:
    """Write ``bench.json`` and ``bench.md`` (and ``bench.png`` when ``plot_y`` is given and a latency
    section has results) to ``out_dir``; returns the paths written."""
    from .plot import plot_results

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / JSON_NAME, "markdown": out_dir / MARKDOWN_NAME}
    plot_path = out_dir / PLOT_NAME
    if plot_y is not None and plot_results(results, plot_path, y=plot_y):
        paths["plot"] = plot_path
        results["header"]["plot"] = PLOT_NAME
    write_text_atomic(paths["json"], json.dumps(results, indent=1, default=str) + "\n")
    write_text_atomic(paths["markdown"], to_markdown(results, results["header"].get("plot")))
    return paths


def print_report(results: dict, file=None) -> None:
    print(to_text(results), file=file or sys.stdout)
