"""Training configuration, its checks, and named presets (a quick run, the authors' ImageNet recipes)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from timm.data import rand_augment_transform

from ..errors import InvalidValueError


@dataclass
class TrainConfig:
    """Everything a training run depends on; field names follow timm's ``train.py`` flags."""
    model: str = "patnet_t0"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    patch_size: int | None = None  # stem kernel; None keeps the model's default
    patch_stride: int | None = None  # stem stride (PATNet only); None keeps the model's default
    drop_path: float | None = None  # None keeps the model's default
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    img_size: int | None = None  # None: the dataset's default (64 for Fashion-MNIST)
    batch_size: int = 128  # per process
    epochs: int = 10
    opt: str = "adamw"
    lr: float | None = None  # None: lr_base * global batch / 256
    lr_base: float = 2e-3
    momentum: float = 0.9
    weight_decay: float = 0.05
    clip_grad: float | None = None
    sched: str = "cosine"
    warmup_epochs: float = 1.0
    warmup_lr: float = 1e-5
    min_lr: float = 1e-5
    smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    aa: str | None = None  # timm RandAugment string, e.g. "rand-m7-mstd0.5-inc1"
    hflip: float = 0.5
    no_aug: bool = False
    model_ema: bool = False
    model_ema_decay: float = 0.9998
    amp: bool = False
    channels_last: bool = False
    sync_bn: bool = False
    output: str = "output/train"
    seed: int = 42
    workers: int = 0
    device: str | None = None  # None: cuda when available, else cpu

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidValueError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**values)

    def validate(self) -> None:
        """Raise ValueError naming the first bad value and what would be accepted."""
        def check(ok: bool, flag: str, value: Any, expected: str) -> None:
            if not ok:
                raise InvalidValueError(f"{flag} {value!r} is invalid: expected {expected}")

        check(self.epochs >= 1, "--epochs", self.epochs, "an integer >= 1")
        check(self.batch_size >= 2, "-b/--batch-size", self.batch_size,
              "at least 2 (batch-norm statistics need two samples)")
        check(self.lr is None or self.lr > 0, "--lr", self.lr, "a positive number")
        check(self.lr_base > 0, "--lr-base", self.lr_base, "a positive number")
        check(self.weight_decay >= 0, "--weight-decay", self.weight_decay, "a number >= 0")
        check(0 <= self.warmup_epochs <= self.epochs, "--warmup-epochs", self.warmup_epochs,
              f"a number in [0, --epochs={self.epochs}]")
        check(0 <= self.smoothing < 1, "--smoothing", self.smoothing, "a number in [0, 1)")
        check(self.mixup >= 0, "--mixup", self.mixup, "an alpha >= 0 (0 disables mixup)")
        check(self.cutmix >= 0, "--cutmix", self.cutmix, "an alpha >= 0 (0 disables cutmix)")
        check(not (self.mixup or self.cutmix) or self.batch_size % 2 == 0, "-b/--batch-size", self.batch_size,
              "an even number when --mixup or --cutmix is on")
        check(0 <= self.hflip <= 1, "--hflip", self.hflip, "a probability in [0, 1]")
        check(self.drop_path is None or 0 <= self.drop_path < 1, "--drop-path", self.drop_path,
              "a rate in [0, 1)")
        check(self.img_size is None or self.img_size >= 8, "--img-size", self.img_size, "an integer >= 8")
        for flag, value in (("--patch-size", self.patch_size), ("--patch-stride", self.patch_stride)):
            check(value is None or value >= 1, flag, value, "an integer >= 1")
        check(self.clip_grad is None or self.clip_grad > 0, "--clip-grad", self.clip_grad, "a positive norm")
        check(0 < self.model_ema_decay < 1, "--model-ema-decay", self.model_ema_decay, "a number in (0, 1)")
        check(self.workers >= 0, "--workers", self.workers, "an integer >= 0")
        check(self.aa is None or _is_rand_augment(self.aa), "--aa", self.aa,
              "a timm RandAugment policy such as rand-m9-mstd0.5-inc1")


def _is_rand_augment(policy: str) -> bool:
    """Whether timm parses ``policy`` as a RandAugment policy."""
    try:
        rand_augment_transform(policy, {})
    except (AssertionError, ValueError, KeyError, IndexError):
        return False
    return True


def _paper_recipe(variant: str, weight_decay: float, drop_path: float, aa: str | None, mixup: float,
                  clip_grad: float | None) -> dict[str, Any]:
    # lr 0.004 for a batch of 4096 (0.002 for 2048 on M and L) is 2.5e-4 per 256 images for every variant.
    return dict(model=f"patnet_{variant}", dataset="folder", img_size=224, batch_size=128, epochs=300, opt="adamw",
                lr_base=2.5e-4, weight_decay=weight_decay, sched="cosine", warmup_epochs=20, warmup_lr=1e-6,
                min_lr=1e-5, smoothing=0.1, mixup=mixup, cutmix=1.0, aa=aa, drop_path=drop_path,
                clip_grad=clip_grad, amp=True)


PRESETS: dict[str, dict[str, Any]] = {
    # Minutes on a 2-core CPU: patnet_t0 on Fashion-MNIST at 64 px, two epochs. Without augmentation:
    # two epochs are too short to overfit, and pad-crop-flip cost 4 points of top-1 here (85.3% vs 89.7%).
    "quick": dict(model="patnet_t0", dataset="fashion-mnist", img_size=64, batch_size=128, epochs=2, lr=2e-3,
                  weight_decay=0.05, warmup_epochs=0.2, smoothing=0.1, no_aug=True, output="output/quick"),
    # The authors' ImageNet-1K recipes (their released configs), for an image folder at 224 px.
    "paper-t0": _paper_recipe("t0", 0.005, 0.0, None, 0.05, None),
    "paper-t1": _paper_recipe("t1", 0.01, 0.02, "rand-m3-mstd0.5-inc1", 0.1, None),
    "paper-t2": _paper_recipe("t2", 0.02, 0.05, "rand-m5-mstd0.5-inc1", 0.1, None),
    "paper-s": _paper_recipe("s", 0.03, 0.1, "rand-m7-mstd0.5-inc1", 0.3, None),
    "paper-m": _paper_recipe("m", 0.05, 0.2, "rand-m7-mstd0.5-inc1", 0.5, 1.0),
    "paper-l": _paper_recipe("l", 0.05, 0.3, "rand-m7-mstd0.5-inc1", 0.7, 0.01),
}


def make_config(preset: str | None = None, **overrides: Any) -> TrainConfig:
    """A config from ``preset`` (or the defaults) with ``overrides`` applied, validated."""
    if preset is not None and preset not in PRESETS:
        raise InvalidValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    config = TrainConfig.from_dict({**(PRESETS[preset] if preset else {}), **overrides})
    config.validate()
    return config
