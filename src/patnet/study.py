"""``patnet study``: PATNet-T0 against timm's FasterNet-T0 on Fashion-MNIST, with an ablation of each PAT block.

Every run trains under one recipe (:data:`RECIPE`) with the training engine. :func:`run_study` skips
finished runs and resumes unfinished ones from their ``last`` checkpoint, so a study can be run in
pieces; then it measures each variant's trained model (params, MACs, single-thread CPU latency of the
deploy form, all variants timed in alternation with :func:`patnet.bench.compare`) and writes
``results.json``, ``results.md`` and ``accuracy_vs_latency.png``.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shlex
import statistics
import struct
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .bench import compare
from .bench.report import load_average, machine_info, markdown_table
from .data import build_dataset, dataset_info, fashion_mnist
from .data.datasets import FASHION_MNIST_FILES
from .deploy import deploy
from .engine import TrainConfig, make_config, train
from .engine import checkpoint as ckpt
from .engine.inference import load_trained_model
from .fileio import write_text_atomic
from .flops import count_macs, count_params


@dataclass(frozen=True)
class Variant:
    """One model of the study: a timm model name with keyword arguments."""
    key: str
    label: str
    model: str
    model_kwargs: dict = field(default_factory=dict)


BASELINE, PATNET = "fasternet_t0", "patnet_t0"
VARIANTS = (
    Variant(BASELINE, "FasterNet-T0 (timm)", "fasternet_t0"),
    Variant(PATNET, "PATNet-T0", "patnet_t0"),
    Variant("patnet_t0_pconv", "PATNet-T0, PConv only", "patnet_t0", {"mixers": ("pconv",) * 4}),
    Variant("patnet_t0_no_sf", "PATNet-T0 without PAT_sf", "patnet_t0",
            {"mixers": ("pat_ch", "pat_ch", "pat_ch", "pconv")}),
    Variant("patnet_t0_sp", "PATNet-T0 with PAT_sp", "patnet_t0", {"spatial_attn": True}),
)
HEADLINE = (BASELINE, PATNET)

# One recipe for every run. 64 px with both families' default stems (kernel = stride = 4) gives 16x16 tokens
# in stage 1 and 2x2 in stage 4, where PATNet's PAT_sf self-attention works. lr and augmentation were chosen by
# `patnet study --tune` (TUNING below; docs/study/tuning/results.md): lr 1e-3 without augmentation had the best
# held-out accuracy averaged over both families. 6 epochs: about 1 h 45 min for all 9 runs, within the issue's
# ~2 hours.
RECIPE = dict(dataset="fashion-mnist", img_size=64, batch_size=128, epochs=6, opt="adamw", lr=1e-3,
              weight_decay=0.05, sched="cosine", warmup_epochs=0.5, warmup_lr=1e-5, min_lr=1e-5, smoothing=0.1,
              no_aug=True, drop_path=0.0)
FASHION_MNIST_TRAIN_IMAGES = 60000
# Config fields that name places rather than change what is trained.
_PLACE_FIELDS = ("output", "data_dir", "workers", "device")


@dataclass(frozen=True)
class Plan:
    """Which runs a study holds: seeds per variant, the recipe, an optional training subset, latency settings."""
    name: str
    headline_seeds: int
    ablation_seeds: int
    recipe: dict
    train_subset: int | None = None  # train on this many Fashion-MNIST training images (seeded choice)
    variants: tuple[Variant, ...] = VARIANTS
    latency_warmup: int = 10
    latency_iters: int = 200


PLANS = {
    "full": Plan("full", headline_seeds=3, ablation_seeds=1, recipe=RECIPE),
    # The same pipeline in minutes: one epoch on a fifth of the training images, the full test set.
    "quick": Plan("quick", headline_seeds=2, ablation_seeds=1, recipe={**RECIPE, "epochs": 1, "warmup_epochs": 0.2},
                  train_subset=12000),
}


@dataclass(frozen=True)
class Run:
    variant: Variant
    seed: int
    config: TrainConfig

    @property
    def dir(self) -> Path:
        return Path(self.config.output)

    @property
    def name(self) -> str:
        return f"{self.variant.key} seed {self.seed}"


def plan_runs(plan: Plan, output: str | os.PathLike) -> list[Run]:
    """The runs of ``plan``, each in ``output/runs/<variant>/seed<N>``: seed 0 of every variant first, so a study
    run in pieces has one seed of everything early."""
    output = Path(output)
    data_dir = str(subset_dir(output, plan.train_subset)) if plan.train_subset else None
    runs = []
    for seed in range(max(plan.headline_seeds, plan.ablation_seeds)):
        for variant in plan.variants:
            if seed >= (plan.headline_seeds if variant.key in HEADLINE else plan.ablation_seeds):
                continue
            runs.append(make_run(variant, seed, plan.recipe, data_dir, output / "runs" / variant.key / f"seed{seed}"))
    return runs


def make_run(variant: Variant, seed: int, recipe: dict, data_dir: str | None, run_dir: Path) -> Run:
    """``variant`` trained with ``recipe`` and ``seed`` on ``data_dir``, in ``run_dir``."""
    config = make_config(**{**recipe, "model": variant.model, "model_kwargs": dict(variant.model_kwargs),
                            "seed": seed, "data_dir": data_dir, "output": str(run_dir)})
    return Run(variant, seed, config)


def _plain(value):
    return json.loads(json.dumps(value))  # tuples and lists compare equal


def saved_state(run: Run) -> dict | None:
    """The training state of ``run``'s last checkpoint (None before its first epoch ends); ValueError when the
    checkpoint was trained with another recipe."""
    if not (run.dir / "last").exists():
        return None
    state = ckpt.load_state(ckpt.resolve_checkpoint(run.dir))
    planned = run.config.to_dict()
    for key, value in planned.items():
        if key not in _PLACE_FIELDS and _plain(state["config"].get(key)) != _plain(value):
            raise ValueError(f"{run.dir} was trained with {key}={state['config'].get(key)!r} but the study's "
                             f"recipe has {value!r}; move that run away or pass another --output")
    return state


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (the format :func:`patnet.data.read_idx` reads)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def subset_dir(output: Path, count: int, holdout: int = 0) -> Path:
    """Where :func:`write_train_subset` puts ``count`` training images (and ``holdout`` held-out ones)."""
    return output / "data" / (f"fashion-mnist-train{count}" + (f"-holdout{holdout}" if holdout else ""))


def write_train_subset(dest: str | os.PathLike, count: int, source: str | os.PathLike | None = None,
                       seed: int = 0, holdout: int = 0) -> Path:
    """A Fashion-MNIST folder at ``dest`` with ``count`` training images (a seeded random choice) and, as its
    evaluation split, the full test set, or with ``holdout`` > 0 that many other training images (the test set
    stays unseen); kept when it already exists."""
    dest = Path(dest)
    if dest.is_dir():
        return dest
    train_set, test_set = fashion_mnist("train", source), fashion_mnist("val", source)
    if not 1 <= count <= len(train_set) - holdout:
        raise ValueError(f"a training subset must hold 1 to {len(train_set) - holdout} images, got {count}")
    order = np.random.default_rng(seed).permutation(len(train_set))
    chosen, held_out = np.sort(order[holdout:holdout + count]), np.sort(order[:holdout])
    evaluation = ((train_set.images[held_out], train_set.labels[held_out]) if holdout
                  else (test_set.images, test_set.labels))
    staging = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    staging.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in (("train", (train_set.images[chosen], train_set.labels[chosen])),
                                    ("val", evaluation)):
        image_file, label_file = FASHION_MNIST_FILES[split]
        write_idx(staging / image_file, images)
        write_idx(staging / label_file, labels)
    os.replace(staging, dest)
    return dest


def train_all(runs: list[Run], log=print) -> int:
    """Train every unfinished run (resuming partial ones); return the number of epochs trained."""
    trained = 0
    for index, run in enumerate(runs, 1):
        state = saved_state(run)
        done = state["epoch"] if state else 0
        prefix = f"[study {index}/{len(runs)}] {run.name}"
        if done >= run.config.epochs:
            log(f"{prefix}: finished ({done} epochs), skipped", flush=True)
            continue
        log(f"{prefix}: {f'resuming after epoch {done}' if done else 'starting'} in {run.dir}", flush=True)
        train(run.config, resume=run.dir if state else None)
        trained += run.config.epochs - done
    return trained


def measure(runs: list[Run], warmup: int, iters: int) -> dict[str, dict]:
    """Params and MACs (training form) and single-thread batch-1 CPU latency (deploy form, in alternation) of
    each variant's first trained run, at the resolution it was trained at."""
    models, sizes, input_size = {}, {}, None
    for run in runs:
        key = run.variant.key
        if key in models:
            continue
        model, meta = load_trained_model(run.dir)
        input_size = (meta["in_chans"], meta["img_size"], meta["img_size"])
        sizes[key] = dict(params=count_params(model), macs=count_macs(model, input_size))
        models[key] = deploy(model)
    baseline = BASELINE if BASELINE in models else next(iter(models))
    comparison = compare(models, baseline=baseline, input_size=input_size, threads=1, warmup=warmup, iters=iters)
    measured = {}
    for key in models:
        ratio = comparison.ratios.get(key)  # the baseline has none: its ratio is 1 by definition
        measured[key] = dict(sizes[key], latency_ms=comparison.stats[key].median_ms,
                             latency_mean_ms=comparison.stats[key].mean_ms, ratio=ratio.median if ratio else 1.0,
                             ratio_p10=ratio.p10 if ratio else 1.0, ratio_p90=ratio.p90 if ratio else 1.0,
                             input_size=list(input_size))
    return measured


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
                         model_kwargs=_plain(variant.model_kwargs), seeds=[run.seed for run in mine], top1=top1,
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


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def _pm(mean: float, std: float | None) -> str:
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def findings(results: dict) -> list[str]:
    """The headline comparison and what each ablation changes, computed from the rows."""
    rows = {row["key"]: row for row in results["rows"]}
    if BASELINE not in rows or PATNET not in rows:
        return []
    base, pat = rows[BASELINE], rows[PATNET]

    def std(row: dict) -> str:
        return "n/a" if row["top1_std"] is None else f"{row['top1_std']:.2f}"

    target = 94.5
    verdict = "reached" if pat["top1_best"] >= target else f"missed by {target - pat['top1_best']:.2f} points"
    lines = [f"PATNet-T0 minus FasterNet-T0: {pat['top1_mean'] - base['top1_mean']:+.2f} points of test accuracy "
             f"(means over {len(pat['top1'])} and {len(base['top1'])} seeds, seed std {std(pat)} and {std(base)}), "
             f"at {pat['ratio']:.2f}x FasterNet-T0's single-thread latency and {pat['macs'] / base['macs']:.2f}x "
             "its MACs.",
             f"Best PATNet-T0 run: {pat['top1_best']:.2f}% (issue 6 asks for {target}%: {verdict})."]
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
        f"- Wall time: {_duration(results['wall_s'])} over {len(invocations)} invocation(s); training "
        f"{_duration(results['train_s'])} of it (sum of all runs' epoch times)",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores; torch {machine['torch']}, timm {machine['timm']}; "
        f"1-minute load average {results['load_average_end']} when latency was measured",
        f"- Data: {data}; test accuracy on the {results['test_images']} test images",
        "- Recipe (every run): " + ", ".join(f"{k}={v}" for k, v in recipe.items()),
        f"- Finished {results['finished']}", "",
    ]
    ratio_head = f"Latency / {results['rows'][0]['label'].split(' (')[0]}"
    headers = ["Model", "Seeds", "Test top-1 (%)", "Best", "Params (M)", "MACs (M)", "Latency (ms)", ratio_head,
               "Train img/s"]
    table = [[row["label"], str(len(row["top1"])), _pm(row["top1_mean"], row["top1_std"]), f"{row['top1_best']:.2f}",
              f"{row['params'] / 1e6:.2f}", f"{row['macs'] / 1e6:.1f}", f"{row['latency_ms']:.2f}",
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
                  f"of the full study takes about {_duration(results['estimate_full_s'] / epochs)}, so "
                  f"`patnet study` ({epochs} epochs) would train for about {_duration(results['estimate_full_s'])}.",
                  ""]
    return "\n".join(lines)


def plot(results: dict, path: str | os.PathLike) -> None:
    """Test accuracy (mean, with seed std as error bars) against single-thread CPU latency, one point per model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=150)
    for i, row in enumerate(results["rows"]):
        ax.errorbar(row["latency_ms"], row["top1_mean"], yerr=row["top1_std"] or 0, fmt="os^Dv"[i % 5],
                    capsize=3, markersize=7, label=f"{row['label']} ({len(row['top1'])} seed(s))")
    size = "x".join(map(str, results["rows"][0]["input_size"][1:]))
    ax.set_xlabel(f"CPU latency, deploy form, batch 1, 1 thread, {size} (ms, median)")
    ax.set_ylabel("Fashion-MNIST test top-1 (%), mean ± std")
    ax.set_title(f"Study '{results['plan']}': {results['machine']['cpu']}", fontsize=9)
    ax.grid(True, linestyle=":", linewidth=0.8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


JSON_NAME, MARKDOWN_NAME, PLOT_NAME = "results.json", "results.md", "accuracy_vs_latency.png"


def _check_dir(path: Path, flag: str) -> Path:
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file; pass a directory")
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_study(plan: Plan, output: str | os.PathLike, report_dir: str | os.PathLike, command: str,
              log=print) -> dict:
    """Train what ``plan`` still lacks under ``output``, measure, and write the report to ``report_dir``."""
    start, started = time.perf_counter(), datetime.now(timezone.utc)
    output, report_dir = _check_dir(Path(output), "--output"), _check_dir(Path(report_dir), "--report-dir")
    if plan.train_subset:
        if plan.recipe["dataset"] != "fashion-mnist":
            raise ValueError(f"a training subset needs the fashion-mnist dataset, not {plan.recipe['dataset']}")
        write_train_subset(subset_dir(output, plan.train_subset), plan.train_subset)
    runs = plan_runs(plan, output)
    trained = train_all(runs, log)
    histories = {run.name: saved_state(run)["history"] for run in runs}
    log(f"[study] measuring params, MACs and single-thread latency of {len(plan.variants)} models", flush=True)
    measured = measure(runs, plan.latency_warmup, plan.latency_iters)
    rows = summarize(runs, histories, measured)
    first = runs[0].config
    test_images = len(build_dataset(first.dataset, "val", first.data_dir,
                                    first.img_size or dataset_info(first.dataset).img_size))

    invocations_file = output / "invocations.json"
    invocations = json.loads(invocations_file.read_text()) if invocations_file.is_file() else []
    invocations.append(dict(command=command, started=started.isoformat(timespec="seconds"),
                            wall_s=round(time.perf_counter() - start, 1), epochs_trained=trained))
    write_text_atomic(invocations_file, json.dumps(invocations, indent=1) + "\n")

    results = dict(plan=plan.name, command=command, recipe=plan.recipe, train_subset=plan.train_subset,
                   test_images=test_images,
                   machine=machine_info(), load_average_end=load_average(), invocations=invocations,
                   wall_s=sum(i["wall_s"] for i in invocations),
                   train_s=sum(row["epoch_s"] for history in histories.values() for row in history),
                   latency=dict(warmup=plan.latency_warmup, iters=plan.latency_iters, threads=1, batch=1),
                   finished=datetime.now(timezone.utc).isoformat(timespec="seconds"), rows=rows,
                   estimate_full_s=(estimate_full_s(rows, plan, PLANS["full"])
                                    if plan.name == "quick" and plan.recipe["dataset"] == "fashion-mnist" else None))
    write_text_atomic(report_dir / JSON_NAME, json.dumps(results, indent=1) + "\n")
    write_text_atomic(report_dir / MARKDOWN_NAME, to_markdown(results))
    plot(results, report_dir / PLOT_NAME)
    log(f"[study] report: {report_dir / MARKDOWN_NAME}, {report_dir / PLOT_NAME}, {report_dir / JSON_NAME}",
        flush=True)
    return results


@dataclass(frozen=True)
class Tuning:
    """The one tuning of :data:`RECIPE`, for both headline families alike: a grid of learning rates and
    augmentation on/off, each setting trained on a seeded choice of training images and scored on other held-out
    training images (never the test set); the setting with the best mean over the families wins."""
    base: dict
    lrs: tuple[float, ...] = (1e-3, 2e-3, 4e-3)
    no_aug: tuple[bool, ...] = (True, False)
    epochs: int = 2
    warmup_epochs: float = 0.2
    train_images: int | None = 12000  # None: the base recipe's own data (tests use the synthetic set)
    holdout_images: int = 10000
    variants: tuple[Variant, ...] = tuple(v for v in VARIANTS if v.key in HEADLINE)

    def settings(self) -> list[dict]:
        return [dict(lr=lr, no_aug=no_aug) for lr in self.lrs for no_aug in self.no_aug]


TUNING = Tuning(RECIPE)


def setting_name(setting: dict) -> str:
    return f"lr {setting['lr']:g}, {'no augmentation' if setting['no_aug'] else 'pad-crop-flip'}"


def tuning_runs(tuning: Tuning, output: str | os.PathLike) -> list[tuple[dict, Run]]:
    """(setting, run) pairs, each run in ``output/runs/<variant>/lr<lr>-<aug|noaug>``."""
    output = Path(output)
    data_dir = (str(subset_dir(output, tuning.train_images, tuning.holdout_images)) if tuning.train_images
                else tuning.base.get("data_dir"))
    pairs = []
    for setting in tuning.settings():
        recipe = {**tuning.base, **setting, "epochs": tuning.epochs, "warmup_epochs": tuning.warmup_epochs}
        folder = f"lr{setting['lr']:g}-{'noaug' if setting['no_aug'] else 'aug'}"
        pairs += [(setting, make_run(variant, 0, recipe, data_dir, output / "runs" / variant.key / folder))
                  for variant in tuning.variants]
    return pairs


def run_tuning(tuning: Tuning, output: str | os.PathLike, report_dir: str | os.PathLike, command: str,
               log=print) -> dict:
    """Train the tuning grid (skipping finished runs, resuming others), pick the best setting and write
    ``results.md`` and ``results.json`` to ``report_dir``."""
    start, started = time.perf_counter(), datetime.now(timezone.utc)
    output, report_dir = _check_dir(Path(output), "--output"), _check_dir(Path(report_dir), "--report-dir")
    pairs = tuning_runs(tuning, output)
    if tuning.train_images:
        write_train_subset(subset_dir(output, tuning.train_images, tuning.holdout_images), tuning.train_images,
                           holdout=tuning.holdout_images)
    trained = train_all([run for _, run in pairs], log)
    rows = []
    for setting in tuning.settings():
        top1 = {run.variant.key: saved_state(run)["history"][-1]["top1"] for s, run in pairs if s == setting}
        rows.append(dict(setting, name=setting_name(setting), top1=top1, mean=statistics.fmean(top1.values())))
    best = max(rows, key=lambda row: row["mean"])
    results = dict(command=command, base=tuning.base, epochs=tuning.epochs, warmup_epochs=tuning.warmup_epochs,
                   train_images=tuning.train_images, holdout_images=tuning.holdout_images,
                   machine=machine_info(), started=started.isoformat(timespec="seconds"),
                   wall_s=round(time.perf_counter() - start, 1), epochs_trained=trained, rows=rows,
                   best=dict(lr=best["lr"], no_aug=best["no_aug"]))
    write_text_atomic(report_dir / JSON_NAME, json.dumps(results, indent=1) + "\n")
    write_text_atomic(report_dir / MARKDOWN_NAME, tuning_markdown(results, tuning.variants))
    log(f"[tune] best: {best['name']}; report: {report_dir / MARKDOWN_NAME}", flush=True)
    return results


def tuning_markdown(results: dict, variants: tuple[Variant, ...]) -> str:
    data = (f"{results['train_images']} training images (seeded choice), scored on {results['holdout_images']} "
            "other training images held out; the test set is not used" if results["train_images"]
            else "the base recipe's data")
    fixed = {k: v for k, v in results["base"].items() if k not in ("lr", "no_aug", "epochs", "warmup_epochs")}
    lines = ["# Tuning the study recipe: one grid for both families", "",
             f"- Command: `{results['command']}`",
             f"- Wall time: {_duration(results['wall_s'])} ({results['epochs_trained']} epochs trained by this "
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    full, quick = PLANS["full"], PLANS["quick"]
    parser.description = (f"Train fasternet_t0 and patnet_t0 ({full.headline_seeds} seeds each) and 3 ablations "
                          f"of patnet_t0 ({full.ablation_seeds} seed each) on Fashion-MNIST under one recipe, then "
                          "report test accuracy, params, MACs and CPU latency. Finished runs are skipped, "
                          "unfinished ones resumed: the study can be run in pieces.")
    parser.add_argument("--quick", action="store_true",
                        help=f"small version (a few minutes): {quick.recipe['epochs']} epoch on {quick.train_subset} "
                             f"training images, {quick.headline_seeds} seeds for the headline models")
    parser.add_argument("--tune", action="store_true",
                        help=f"instead of the study, the grid that chose its recipe: lr {TUNING.lrs} x "
                             f"augmentation on/off for both headline models, {TUNING.epochs} epochs on "
                             f"{TUNING.train_images} training images, scored on {TUNING.holdout_images} held-out "
                             "training images")
    parser.add_argument("--output", metavar="DIR",
                        help="run directories (default: output/study, output/study-quick with --quick, "
                             "output/study-tune with --tune)")
    parser.add_argument("--report-dir", metavar="DIR",
                        help="where results.md, results.json and the plot go (default: docs/study/full, "
                             "docs/study/quick or docs/study/tuning)")


def run(args: argparse.Namespace) -> int:
    if args.quick and args.tune:
        raise ValueError("--quick and --tune are different jobs; pass one of them")
    name = "tune" if args.tune else "quick" if args.quick else "full"
    output = args.output or {"full": "output/study", "quick": "output/study-quick", "tune": "output/study-tune"}[name]
    report_dir = args.report_dir or f"docs/study/{'tuning' if args.tune else name}"
    parts = ["patnet", "study"] + ["--quick"] * args.quick + ["--tune"] * args.tune
    parts += [item for flag, value in (("--output", args.output), ("--report-dir", args.report_dir)) if value
              for item in (flag, value)]
    if args.tune:
        run_tuning(TUNING, output, report_dir, shlex.join(parts))
    else:
        run_study(PLANS[name], output, report_dir, shlex.join(parts))
    return 0
