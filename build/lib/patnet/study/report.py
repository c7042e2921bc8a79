"""A study's report: per-variant rows from the runs' metrics, findings, Markdown, and the accuracy-latency plot."""
from __future__ import annotations

import os
import statistics

from ..bench.report import markdown_table
from ..plotting import pyplot, save_figure
from .plan import (
    BASELINE,
    FASHION_MNIST_TRAIN_IMAGES,
    HEADLINE,
    PATNET,
    PLANS,
    Plan,
    Run,
    Variant,
    as_json,
    setting_name,
)

JSON_NAME, MARKDOWN_NAME, PLOT_NAME = "results.json", "results.md", "accuracy_vs_latency.png"


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def summarize(runs: list[Run], histories: dict[str, list[dict]], measured: dict[str, dict]) -> list[dict]:
    """One row per variant: final-epoch test accuracy per seed, mean and std, size, latency, training speed."""
    rows = []
    variants = {run.variant.key: run.variant for run in runs}
    for variant in variants.values():
        mine = [run for run in runs if run.variant.key == variant.key]
        top1 = [histories[run.name][-1]["top1"] for run in mine]
        epochs = [row for run in mine for row in histories[run.name]]
        mean, std = mean_std(top1)
        rows.append(dict(key=variant.key, label=variant.label, model=variant.model,
                         model_kwargs=as_json(variant.model_kwargs), seeds=[run.seed for run in mine], top1=top1,
                         top1_mean=mean, top1_std=std, top1_best=max(top1),
                         train_images_per_s=statistics.fmean(row["images_per_s"] for row in epochs),
                         epoch_s=statistics.fmean(row["epoch_s"] for row in epochs), **measured[variant.key]))
    return rows


def estimate_full_s(rows: list[dict], quick: Plan, full: Plan) -> float:
    """Training seconds the ``full`` plan would take, from a ``quick`` study's per-epoch timings: each variant's
    training rate scaled to the full training set, plus its measured per-epoch rest (evaluation, saving)."""
    batch = full.recipe["batch_size"]
    used = (quick.train_subset or FASHION_MNIST_TRAIN_IMAGES) // quick.recipe["batch_size"] * quick.recipe["batch_size"]
    total = 0.0
    for row in rows:
        rest = max(0.0, row["epoch_s"] - used / row["train_images_per_s"])
        epoch_s = FASHION_MNIST_TRAIN_IMAGES // batch * batch / row["train_images_per_s"] + rest
        seeds = full.headline_seeds if row["key"] in HEADLINE else full.ablation_seeds
        total += seeds * full.recipe["epochs"] * epoch_s
    return total


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def format_mean_std(mean: float, std: float | None) -> str:
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def findings(results: dict) -> list[str]:
    """The headline comparison and what each ablation changes, computed from the rows."""
    rows = {row["key"]: row for row in results["rows"]}
    if BASELINE not in rows or PATNET not in rows:
        return []
    base, pat = rows[BASELINE], rows[PATNET]

    def std(row: dict) -> str:
        return "n/a" if row["top1_std"] is None else f"{row['top1_std']:.2f}"

    best_seed = pat["seeds"][pat["top1"].index(pat["top1_best"])]
    lines = [f"PATNet-T0 minus FasterNet-T0: {pat['top1_mean'] - base['top1_mean']:+.2f} points of test accuracy "
             f"(means over {len(pat['top1'])} and {len(base['top1'])} seeds, seed std {std(pat)} and {std(base)}), "
             f"at {pat['ratio']:.2f}x FasterNet-T0's single-thread latency and {pat['macs'] / base['macs']:.2f}x "
             "its MACs.",
             f"Best PATNet-T0 run: {pat['top1_best']:.2f}% (seed {best_seed}); best FasterNet-T0 run: "
             f"{base['top1_best']:.2f}%."]
    for key, row in rows.items():
        if key not in HEADLINE:
            lines.append(f"{row['label']}: {row['top1_mean'] - pat['top1_mean']:+.2f} points against PATNet-T0's "
                         f"mean ({len(row['top1'])} seed(s)), latency {row['latency_ms'] / pat['latency_ms']:.2f}x "
                         f"and MACs {row['macs'] / pat['macs']:.2f}x PATNet-T0's.")
    return lines


def to_markdown(results: dict) -> str:
    recipe = results["recipe"]
    machine = results["machine"]
    invocations = results["invocations"]
    subset = results["train_subset"]
    data = (f"{subset} of the {FASHION_MNIST_TRAIN_IMAGES} training images (seeded choice)" if subset
            else "all training images")
    lines = [
        f"# Fashion-MNIST study ({results['plan']}): PATNet-T0 against FasterNet-T0, PAT-block ablations", "",
        f"- Command: `{results['command']}`",
        f"- Wall time: {format_duration(results['wall_s'])} over {len(invocations)} invocation(s); training "
        f"{format_duration(results['train_s'])} of it (sum of all runs' epoch times)",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores; torch {machine['torch']}, timm {machine['timm']}; "
        f"1-minute load average {results['load_average_end']} when latency was measured",
        f"- Data: {data}; test accuracy on the {results['test_images']} test images",
        "- Recipe (every run): " + ", ".join(f"{k}={v}" for k, v in recipe.items()),
        f"- Finished {results['finished']}", "",
    ]
    ratio_head = f"Latency / {results['rows'][0]['label'].split(' (')[0]}"
    headers = ["Model", "Seeds", "Test top-1 (%)", "Best", "Params (M)", "MACs (M)", "Latency (ms)", ratio_head,
               "Train img/s"]
    table = [[row["label"], str(len(row["top1"])), format_mean_std(row["top1_mean"], row["top1_std"]),
              f"{row['top1_best']:.2f}", f"{row['params'] / 1e6:.2f}", f"{row['macs'] / 1e6:.1f}",
              f"{row['latency_ms']:.2f}",
              f"{row['ratio']:.2f} [{row['ratio_p10']:.2f}, {row['ratio_p90']:.2f}]",
              f"{row['train_images_per_s']:.0f}"] for row in results["rows"]]
    size = "x".join(map(str, results["rows"][0]["input_size"]))
    lat = results["latency"]
    lines += [markdown_table(headers, table, text_columns=1), "",
              "Test top-1: final-epoch accuracy, mean ± sample std over seeds (no checkpoint is chosen by test "
              f"accuracy). Params and MACs: training form, batch 1, {size} input. Latency: deploy form (BN folded), "
              f"batch 1, 1 thread, fp32, {size}, {lat['warmup']} warm-up + {lat['iters']} timed calls per model, all "
              "models timed in alternation in one process, median; the ratio is the median of per-call ratios "
              "[10th, 90th percentile]. Train img/s: mean training throughput (2 threads, with data loading).", "",
              f"![accuracy against latency]({PLOT_NAME})", "", "## Per seed", ""]
    most = max(len(row["top1"]) for row in results["rows"])
    lines += [markdown_table(["Model", *(f"seed {s}" for s in range(most))],
                             [[row["label"], *(f"{t:.2f}" for t in row["top1"]), *[""] * (most - len(row["top1"]))]
                              for row in results["rows"]], text_columns=1), ""]
    found = findings(results)
    if found:
        lines += ["## Findings", "", *(f"- {line}" for line in found), ""]
    if results.get("estimate_full_s") is not None:
        epochs = PLANS["full"].recipe["epochs"]
        lines += ["## Full-study estimate", "",
                  "From this run's per-variant training rates and per-epoch evaluation time, one epoch of every run "
                  f"of the full study takes about {format_duration(results['estimate_full_s'] / epochs)}, so "
                  f"`patnet study` ({epochs} epochs) would train for about "
                  f"{format_duration(results['estimate_full_s'])}.",
                  ""]
    return "\n".join(lines)


def plot(results: dict, path: str | os.PathLike) -> None:
    """Test accuracy (mean, with seed std as error bars) against single-thread CPU latency, one point per model."""
    fig, ax = pyplot().subplots(figsize=(6.4, 4.8), dpi=150)
    for i, row in enumerate(results["rows"]):
        ax.errorbar(row["latency_ms"], row["top1_mean"], yerr=row["top1_std"] or 0, fmt="os^Dv"[i % 5],
                    capsize=3, markersize=7, label=f"{row['label']} ({len(row['top1'])} seed(s))")
    size = "x".join(map(str, results["rows"][0]["input_size"][1:]))
    ax.set_xlabel(f"CPU latency, deploy form, batch 1, 1 thread, {size} (ms, median)")
    ax.set_ylabel("Fashion-MNIST test top-1 (%), mean ± std")
    ax.set_title(f"Study '{results['plan']}': {results['machine']['cpu']}", fontsize=9)
    ax.grid(True, linestyle=":", linewidth=0.8)
    ax.legend(fontsize=7)
    save_figure(fig, path, dpi=150)


def tuning_markdown(results: dict, variants: tuple[Variant, ...]) -> str:
    data = (f"{results['train_images']} training images (seeded choice), scored on {results['holdout_images']} "
            "other training images held out; the test set is not used" if results["train_images"]
            else "the base recipe's data")
    fixed = {k: v for k, v in results["base"].items() if k not in ("lr", "no_aug", "epochs", "warmup_epochs")}
    lines = ["# Tuning the study recipe: one grid for both families", "",
             f"- Command: `{results['command']}`",
             f"- Wall time: {format_duration(results['wall_s'])} ({results['epochs_trained']} epochs trained by this "
             "invocation)",
             f"- Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores",
             f"- Data: {data}",
             f"- Each run: {results['epochs']} epochs, warm-up {results['warmup_epochs']} epochs, seed 0; "
             "otherwise the study recipe: " + ", ".join(f"{k}={v}" for k, v in fixed.items()), ""]
    headers = ["Setting", *(f"{v.label} (%)" for v in variants), "Mean (%)"]
    best = setting_name(results["best"])
    table = [[f"**{best}**" if row["name"] == best else row["name"], *(f"{row['top1'][v.key]:.2f}" for v in variants),
              f"{row['mean']:.2f}"] for row in results["rows"]]
    lines += [markdown_table(headers, table, text_columns=1), "",
              f"Held-out top-1 after the last epoch. Chosen (best mean over the families): **{best}**.", ""]
    return "\n".join(lines)

