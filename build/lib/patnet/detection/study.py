"""The detection study: Mask R-CNN on Fashion-MNIST scenes with PATNet-T0 and FasterNet-T0 backbones.

Each backbone is first pretrained on Fashion-MNIST classification (one recipe for both, as the paper starts
from ImageNet weights), then trained as Mask R-CNN's backbone under one detection recipe, several seeds each.
Like the classification study it can run in pieces: finished runs are skipped, an unfinished one resumes
from its last checkpoint. Then it measures params, MACs and the latency of the backbone and of the whole
detector (deploy form, alternated, one thread), scores an untrained detector as the floor, and writes the
report (:mod:`.study_report`).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..data import write_train_subset
from ..engine import checkpoint as ckpt
from ..study import RECIPE, Variant, make_run, train_all
from ..study.plan import PLACE_FIELDS, subset_dir
from ..study.runner import check_recipe, log_invocation, prepare_dir
from .config import DetectConfig, make_detect_config
from .data import data_root
from .engine import train_detector
from .study_report import measure, untrained_ap, write_report

BACKBONES = ("fasternet_t0", "patnet_t0")
LABELS = {"fasternet_t0": "FasterNet-T0 (timm)", "patnet_t0": "PATNet-T0"}


@dataclass(frozen=True)
class DetectionStudyPlan:
    """What the study trains: scenes, the pretraining recipe, the detection recipe, seeds, timing settings."""
    name: str
    seeds: int
    scenes: dict
    pretrain: dict  # a `patnet train` recipe (Fashion-MNIST classification)
    detect: dict  # overrides of the fm-scenes detection preset
    pretrain_subset: int | None = None  # pretrain on this many training images (seeded choice)
    pretrain_holdout: int = 0  # > 0: score pretraining on that many other training images, not the test set
    backbones: tuple[str, ...] = BACKBONES
    latency_warmup: int = 5
    latency_iters: int = 60
    latency_images: int = 20  # validation canvases cycled through when timing whole detectors


# See docs/detection/README.md for how the sizes were chosen (time per image measured on the 2-core CPU).
PLANS = {
    "full": DetectionStudyPlan(
        "full", seeds=2,
        scenes=dict(canvas=128, min_items=2, max_items=4, min_scale=1.0, max_scale=2.5, train_canvases=2500,
                    val_canvases=300),
        pretrain={**RECIPE, "epochs": 3},
        detect=dict(epochs=4, lr_steps=(3,))),
    "quick": DetectionStudyPlan(
        "quick", seeds=2,
        scenes=dict(canvas=128, min_items=2, max_items=4, min_scale=1.0, max_scale=2.5, train_canvases=200,
                    val_canvases=50),
        pretrain={**RECIPE, "epochs": 1, "warmup_epochs": 0.2}, pretrain_subset=6000,
        detect=dict(epochs=1, lr_steps=(1,), warmup_iters=20), latency_iters=10, latency_images=5),
}


@dataclass(frozen=True)
class DetectionRun:
    backbone: str
    seed: int
    config: DetectConfig

    @property
    def dir(self) -> Path:
        return Path(self.config.output)

    @property
    def name(self) -> str:
        return f"{self.backbone} seed {self.seed}"


def pretrain_data(plan: DetectionStudyPlan, output: Path) -> Path:
    return subset_dir(output, plan.pretrain_subset, plan.pretrain_holdout)


def pretrain_runs(plan: DetectionStudyPlan, output: Path) -> list:
    """One classification run per backbone, in ``output/pretrain/<backbone>``."""
    data_dir = str(pretrain_data(plan, output)) if plan.pretrain_subset else None
    return [make_run(Variant(backbone, LABELS.get(backbone, backbone), backbone), 0, plan.pretrain, data_dir,
                     output / "pretrain" / backbone) for backbone in plan.backbones]


def detection_runs(plan: DetectionStudyPlan, output: Path) -> list[DetectionRun]:
    """Every backbone x seed, seed 0 of each backbone first, in ``output/detect/<backbone>/seed<N>``."""
    runs = []
    for seed in range(plan.seeds):
        for backbone in plan.backbones:
            config = make_detect_config("fm-scenes", **plan.detect, backbone=backbone, seed=seed,
                                        backbone_weights=str(output / "pretrain" / backbone / "last"),
                                        data_dir=str(output / "data" / "fm-scenes"), scenes=dict(plan.scenes),
                                        output=str(output / "detect" / backbone / f"seed{seed}"))
            runs.append(DetectionRun(backbone, seed, config))
    return runs


def detection_state(run: DetectionRun) -> dict | None:
    """The state of ``run``'s last checkpoint (None before its first epoch); an error if another recipe made it."""
    if not (run.dir / "last").exists():
        return None
    state = ckpt.load_state(ckpt.resolve_checkpoint(run.dir))
    check_recipe(run.dir, state["config"], run.config.to_dict(), PLACE_FIELDS + ("backbone_weights",))
    return state


def run_detection_study(plan: DetectionStudyPlan, output: str | os.PathLike, report_dir: str | os.PathLike,
                        command: str, log=print) -> dict:
    """Pretrain and train what ``plan`` still lacks under ``output``, measure, and write the report."""
    start, started = time.perf_counter(), datetime.now(timezone.utc)
    output, report_dir = prepare_dir(Path(output), "--output"), prepare_dir(Path(report_dir), "--report-dir")
    if plan.pretrain_subset:
        write_train_subset(pretrain_data(plan, output), plan.pretrain_subset, holdout=plan.pretrain_holdout)
    runs = detection_runs(plan, output)
    data_root(runs[0].config)  # the scenes, written once
    trained = train_all(pretrain_runs(plan, output), log) + train_all(
        runs, log, state_of=detection_state, train_run=train_detector, label="detection study")
    log("[detection study] scoring untrained detectors, measuring params, MACs and latency", flush=True)
    floor = {backbone: untrained_ap(next(r for r in runs if r.backbone == backbone)) for backbone in plan.backbones}
    measured = measure(runs, plan)
    invocations = log_invocation(output, command, started, time.perf_counter() - start, trained)
    results = write_report(plan, runs, floor, measured, invocations, command, report_dir)
    log(f"[detection study] report: {report_dir}", flush=True)
    return results
