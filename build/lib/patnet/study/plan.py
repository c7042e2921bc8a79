"""What a study trains: the variants, the recipe, the plans (full, quick) and the tuning grid, as runs.

A :class:`Run` is a variant, a seed and the training config that trains it in its own folder; nothing
here trains or measures anything.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..engine import TrainConfig, make_config


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
# held-out accuracy averaged over both families. 6 epochs: about 1 h 45 min for all 9 runs, within a ~2-hour
# budget on a 2-core CPU.
RECIPE = dict(dataset="fashion-mnist", img_size=64, batch_size=128, epochs=6, opt="adamw", lr=1e-3,
              weight_decay=0.05, sched="cosine", warmup_epochs=0.5, warmup_lr=1e-5, min_lr=1e-5, smoothing=0.1,
              no_aug=True, drop_path=0.0)
FASHION_MNIST_TRAIN_IMAGES = 60000
# Config fields that name places rather than change what is trained.
PLACE_FIELDS = ("output", "data_dir", "workers", "device")


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


def subset_dir(output: Path, count: int, holdout: int = 0) -> Path:
    """Where :func:`write_train_subset` puts ``count`` training images (and ``holdout`` held-out ones)."""
    return output / "data" / (f"fashion-mnist-train{count}" + (f"-holdout{holdout}" if holdout else ""))


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



def as_json(value):
    """``value`` as it reads back from JSON (tuples become lists): for comparing configs and writing rows."""
    return json.loads(json.dumps(value))
