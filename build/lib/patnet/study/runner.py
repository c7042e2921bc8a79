"""Running a study: prepare its data, train what is missing (resuming what is unfinished), measure, report."""
from __future__ import annotations

import json
import os
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

from ..bench import compare
from ..bench.report import load_average, machine_info
from ..data import build_dataset, dataset_info, write_train_subset
from ..deploy import deploy
from ..engine import checkpoint as ckpt
from ..engine import train
from ..engine.config import upgrade_config
from ..engine.inference import load_trained_model
from ..errors import InvalidValueError
from ..fileio import write_text_atomic
from ..flops import count_macs, count_params
from .plan import (
    BASELINE,
    PLACE_FIELDS,
    PLANS,
    Plan,
    Run,
    Tuning,
    as_json,
    plan_runs,
    setting_name,
    subset_dir,
    tuning_runs,
)
from .report import (
    JSON_NAME,
    MARKDOWN_NAME,
    PLOT_NAME,
    estimate_full_s,
    plot,
    summarize,
    to_markdown,
    tuning_markdown,
)


def check_recipe(run_dir: Path, stored: dict, planned: dict, ignored: tuple[str, ...] = PLACE_FIELDS) -> None:
    """A one-line error when the run in ``run_dir`` was trained with another recipe than ``planned``."""
    for key, value in planned.items():
        if key not in ignored and as_json(stored.get(key)) != as_json(value):
            raise InvalidValueError(f"{run_dir} was trained with {key}={stored.get(key)!r} but the study's "
                                    f"recipe has {value!r}; move that run away or pass another --output")


def saved_state(run: Run) -> dict | None:
    """The training state of ``run``'s last checkpoint (None before its first epoch ends); ValueError when the
    checkpoint was trained with another recipe."""
    if not (run.dir / "last").exists():
        return None
    state = ckpt.load_state(ckpt.resolve_checkpoint(run.dir))
    stored = upgrade_config(state["config"], state.get("config_version", 1))  # a run of an older release
    check_recipe(run.dir, stored, run.config.to_dict())
    return state


def train_all(runs: list, log=print, state_of=None, train_run=None, label: str = "study") -> int:
    """Train every unfinished run (resuming partial ones); return the number of epochs trained.

    ``state_of(run)`` gives a run's saved state (default :func:`saved_state`), ``train_run(config, resume=...)``
    trains it (default :func:`patnet.engine.train`); runs need ``dir``, ``name`` and ``config.epochs``.
    """
    state_of, train_run = state_of or saved_state, train_run or train
    trained = 0
    for index, run in enumerate(runs, 1):
        state = state_of(run)
        done = state["epoch"] if state else 0
        prefix = f"[{label} {index}/{len(runs)}] {run.name}"
        if done >= run.config.epochs:
            log(f"{prefix}: finished ({done} epochs), skipped", flush=True)
            continue
        log(f"{prefix}: {f'resuming after epoch {done}' if done else 'starting'} in {run.dir}", flush=True)
        train_run(run.config, resume=run.dir if state else None)
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


def prepare_dir(path: Path, flag: str) -> Path:
    """``path`` as a folder (created if missing); a one-line error naming ``flag`` when it is a file."""
    if path.exists() and not path.is_dir():
        raise InvalidValueError(f"{flag} {path} is a file; pass a directory")
    path.mkdir(parents=True, exist_ok=True)
    return path


def log_invocation(output: Path, command: str, started: datetime, wall_s: float, epochs_trained: int) -> list[dict]:
    """Append this invocation to ``output/invocations.json`` (a study may take several); return them all."""
    path = output / "invocations.json"
    invocations = json.loads(path.read_text()) if path.is_file() else []
    invocations.append(dict(command=command, started=started.isoformat(timespec="seconds"), wall_s=round(wall_s, 1),
                            epochs_trained=epochs_trained))
    write_text_atomic(path, json.dumps(invocations, indent=1) + "\n")
    return invocations


def run_study(plan: Plan, output: str | os.PathLike, report_dir: str | os.PathLike, command: str,
              log=print) -> dict:
    """Train what ``plan`` still lacks under ``output``, measure, and write the report to ``report_dir``."""
    start, started = time.perf_counter(), datetime.now(timezone.utc)
    output, report_dir = prepare_dir(Path(output), "--output"), prepare_dir(Path(report_dir), "--report-dir")
    if plan.train_subset:
        if plan.recipe["dataset"] != "fashion-mnist":
            raise InvalidValueError(f"a training subset needs the fashion-mnist dataset, not {plan.recipe['dataset']}")
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

    invocations = log_invocation(output, command, started, time.perf_counter() - start, trained)

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


def run_tuning(tuning: Tuning, output: str | os.PathLike, report_dir: str | os.PathLike, command: str,
               log=print) -> dict:
    """Train the tuning grid (skipping finished runs, resuming others), pick the best setting and write
    ``results.md`` and ``results.json`` to ``report_dir``."""
    start, started = time.perf_counter(), datetime.now(timezone.utc)
    output, report_dir = prepare_dir(Path(output), "--output"), prepare_dir(Path(report_dir), "--report-dir")
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

