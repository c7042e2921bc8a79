"""Per-cell medians of PATNet / FasterNet latency ratios over several runs of ``bench_regimes.py``.

On a shared VM single cells of one regime-matrix run drift by up to 0.1 between runs (the same code gave
patnet_t0 0.65 and 0.75 of FasterNet-T0 in eager fp32 on one thread, hours apart), so a target is read from
several runs: each cell's median over the runs, with the runs' lowest and highest ratio.

    .venv/bin/python scripts/regimes_median.py RUN_DIR [RUN_DIR ...] > docs/bench/.../regimes-median.md

Each ``RUN_DIR`` is a ``--out`` folder of ``bench_regimes.py`` (it holds ``regimes/<input>/bench.json``).
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from patnet.models.factory import size_key


def cell_ratios(run_dirs: list[Path]) -> dict[str, dict[tuple, dict[str, list[float]]]]:
    """``{input: {(runtime, precision, threads): {model: [ratio per run]}}}`` from each run's bench.json."""
    cells: dict[str, dict[tuple, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for run in run_dirs:
        for report in sorted((run / "regimes").glob("*/bench.json")):
            for section in json.loads(report.read_text())["sections"]:
                if section.get("kind") != "latency" or section.get("device") != "cpu":
                    continue
                regime = (section["runtime"], section["precision"], section["threads"])
                for model, forms in section["results"].items():
                    ratio = forms.get("deploy", {}).get("ratio")
                    if ratio:
                        cells[report.parent.name][regime][model].append(ratio["median"])
    return cells


def table(regimes: dict[tuple, dict[str, list[float]]]) -> list[str]:
    """A markdown table: one row per regime, one column per PATNet model, ``median (min-max, n runs)``."""
    models = sorted({model for by_model in regimes.values() for model in by_model}, key=size_key)
    lines = ["| runtime | precision | threads | " + " | ".join(models) + " |",
             "|---|---|---:|" + "---:|" * len(models)]
    for (runtime, precision, threads), by_model in regimes.items():
        cells = []
        for model in models:
            ratios = by_model.get(model, [])
            cells.append(f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}, {len(ratios)})"
                         if ratios else "-")
        lines.append(f"| {runtime} | {precision} | {threads} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="bench_regimes.py --out folders")
    args = parser.parse_args()
    missing = [str(run) for run in args.runs if not list((run / "regimes").glob("*/bench.json"))]
    if missing:
        parser.error(f"no regimes/*/bench.json under {', '.join(missing)}; pass bench_regimes.py --out folders")
    print("PATNet / FasterNet latency, batch 1, deploy form: median of the runs' per-cell ratios "
          "(lowest-highest, number of runs).")
    for name, regimes in cell_ratios(args.runs).items():
        print(f"\n## {name}\n")
        print("\n".join(table(regimes)))


if __name__ == "__main__":
    main()
