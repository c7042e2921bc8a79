"""The benchmark's tables (headers and rows of strings) and their text and Markdown rendering.

Per model: the summary (size, each section's headline number) and each section's detail. Per regime
(one row per section): PATNet / baseline ratios with both latencies, achieved GFLOP/s against the fp32
and bf16 matmul ceilings, and each runner's startup (deploy, export, compile, first call).
"""
from __future__ import annotations

from typing import Callable

SUMMARY_SECTIONS = 4  # more sections than this: the summary shows sizes only, the regime tables the rest
FORM_ORDER = ("train", "deploy")


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _short(value: float) -> str:
    """Three significant figures or so: 0.84, 7.81, 22.9, 266."""
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.0f}%"


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


def measured_forms(results: dict) -> list[str]:
    """The forms with results in any section (the configured ones before the first section)."""
    forms = {form for s in results["sections"] for entries in s["results"].values() for form in entries}
    return [f for f in FORM_ORDER if f in forms] or list(results["header"]["config"]["forms"])


def _rows(results: dict, build) -> list[list[str]]:
    forms = measured_forms(results)
    return [build(name, info, form) for name, info in results["models"].items() for form in forms]


def summary_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the summary: size, then (for up to :data:`SUMMARY_SECTIONS` sections) each
    section's headline number and ratio."""
    sections = results["sections"] if len(results["sections"]) <= SUMMARY_SECTIONS else []
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
    """Headers and rows of one section's detail: spread, throughput, efficiency, ratio spread, startup."""
    headers = ["model", "form", "median ms", "mean ms", "p10 ms", "p90 ms", "IQR ms", "img/s", "GFLOP/s",
               "% of matmul", "% of bf16 matmul", "time/base", "p10-p90", "startup s"]

    def build(name: str, info: dict, form: str) -> list[str]:
        entry = section["results"].get(name, {}).get(form)
        if entry is None:
            return [name, form] + ["-"] * (len(headers) - 2)
        ratio = entry["ratio"]
        startup = entry.get("build_s", 0.0) + entry.get("first_call_s", 0.0)
        return [name, form, _fmt(entry["median_ms"]), _fmt(entry["mean_ms"]), _fmt(entry["p10_ms"]),
                _fmt(entry["p90_ms"]), _fmt(entry["iqr_ms"]), _fmt(entry["images_per_s"], 1),
                _fmt(entry["gflops"], 1), _percent(entry["fraction_of_matmul"]),
                _percent(entry.get("fraction_of_bf16_matmul")), _ratio(entry),
                "-" if ratio is None else f"{ratio['p10']:.3f}-{ratio['p90']:.3f}", _fmt(startup, 1)]

    return headers, _rows(results, build)


REGIME_HEADERS = ["device", "runtime", "precision", "threads", "batch", "input"]


def _regime_cells(results: dict, section: dict) -> list[str]:
    chans = sorted({info.get("in_chans", 3) for info in results["models"].values()})
    size = f"{section['img_size']}x{section['img_size']}"
    return [section["device"], section.get("runtime", "eager"), section["precision"],
            "-" if section["threads"] is None else str(section["threads"]), str(section["batch_size"]),
            f"{chans[0]}x{size}" if len(chans) == 1 else size]


def _main_entry(section: dict, name: str) -> dict | None:
    """A model's entry in ``section``: the deploy form when measured (what users run), else the training form."""
    entries = section["results"].get(name, {})
    return entries.get("deploy", entries.get("train"))


def _per_section(results: dict, columns: list[str], cell: Callable[[dict, str], str]) -> tuple[list, list]:
    rows = [_regime_cells(results, s) + [cell(s, name) for name in columns] for s in results["sections"]]
    return REGIME_HEADERS + columns, rows


def ratio_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """One row per section: each model over its baseline, ``ratio (model ms / baseline ms)``."""
    pairs = {name: info["baseline"] for name, info in results["models"].items() if info["baseline"]}

    def cell(section: dict, name: str) -> str:
        entry, base = _main_entry(section, name), _main_entry(section, pairs[name])
        if name in section.get("not_timed", {}) or pairs[name] in section.get("not_timed", {}):
            return "not timed"
        if entry is None or base is None or entry["ratio"] is None:
            return "-"
        return f"{entry['ratio']['median']:.2f} ({_short(entry['median_ms'])} / {_short(base['median_ms'])})"

    headers, rows = _per_section(results, list(pairs), cell)
    return headers[:len(REGIME_HEADERS)] + [f"{name} / {pairs[name]}" for name in pairs], rows


def efficiency_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """One row per section: each model's achieved GFLOP/s and its share of the fp32 / bf16 matmul ceilings."""
    def cell(section: dict, name: str) -> str:
        entry = _main_entry(section, name)
        if entry is None:
            return "-"
        shares = f"{_percent(entry['fraction_of_matmul'])} / {_percent(entry.get('fraction_of_bf16_matmul'))}"
        return f"{_short(entry['gflops'])} ({shares})"

    return _per_section(results, list(results["models"]), cell)


def startup_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """One row per section: each runner's seconds to its first output (build + first call)."""
    def cell(section: dict, name: str) -> str:
        entry = _main_entry(section, name)
        if entry is None:
            return "not timed" if name in section.get("not_timed", {}) else "-"
        return f"{entry['build_s'] + entry['first_call_s']:.1f}"

    return _per_section(results, list(results["models"]), cell)


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
