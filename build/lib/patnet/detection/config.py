"""Detection training configuration, its checks, the datasets' defaults, and the presets.

Presets: ``coco-1x`` (the authors' Mask R-CNN recipe: COCO 2017, 12 epochs, lr steps at epochs 8 and 11,
500 linear warm-up iterations, AdamW with lr 2e-4 per 16 images for T0-S and 1e-4 for M and L, weight decay
1e-4, 1333x800, random flip; the lr is scaled to the global batch) and ``fm-scenes`` (sized for Fashion-MNIST
scenes on a 2-core CPU).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..engine.config import check_field_types, config_from_dict
from ..errors import InvalidValueError
from .models import ARCHS, DEFAULT_ANCHOR_SIZES


@dataclass(frozen=True)
class DetectionData:
    """A dataset's defaults: splits, image channels and normalisation, whether it is generated here."""
    train_split: str
    val_split: str
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    generated: bool


DATASETS = {
    "coco": DetectionData("train2017", "val2017", 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), False),
    "fm-scenes": DetectionData("train", "val", 1, (0.2860,), (0.3530,), True),
    "synthetic": DetectionData("train", "val", 1, (0.25,), (0.35,), True),
}


@dataclass
class DetectConfig:
    """Everything a detection run depends on; names follow ``patnet train`` and mmdetection's recipes."""
    arch: str = "maskrcnn"
    backbone: str = "patnet_t0"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    backbone_weights: str | None = None  # a `patnet train` checkpoint or a weights file
    dataset: str = "coco"
    data_dir: str | None = None  # COCO folder; for generated sets, where they are written (default output/data)
    train_split: str | None = None  # None: the dataset's default
    val_split: str | None = None
    scenes: dict[str, Any] = field(default_factory=dict)  # SceneSpec overrides for generated sets
    epochs: int = 12
    batch_size: int = 2  # images per process and step
    lr: float | None = None  # None: lr_base * global batch / 16
    lr_base: float = 2e-4
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    lr_steps: tuple[int, ...] = (8, 11)
    clip_grad: float | None = None
    min_size: int = 800
    max_size: int = 1333
    levels: tuple[int, ...] | None = None  # None: the arch's default
    fpn_channels: int = 256
    frozen_stages: int = -1
    norm_eval: bool = True
    anchor_sizes: tuple[int, ...] = DEFAULT_ANCHOR_SIZES
    box_head_dim: int = 1024
    mask_head_layers: tuple[int, ...] = (256, 256, 256, 256)
    detector_kwargs: dict[str, Any] = field(default_factory=dict)
    hflip: float = 0.5
    amp: bool = False
    output: str = "output/detect"
    seed: int = 42
    workers: int = 0
    device: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "DetectConfig":
        return config_from_dict(cls, {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()},
                                "detection")

    @property
    def data(self) -> DetectionData:
        return DATASETS[self.dataset]

    @property
    def splits(self) -> tuple[str, str]:
        return self.train_split or self.data.train_split, self.val_split or self.data.val_split

    def validate(self) -> None:
        """Raise a one-line error naming the first bad value and what would be accepted."""
        def check(ok: bool, flag: str, value: Any, expected: str) -> None:
            if not ok:
                raise InvalidValueError(f"{flag} {value!r} is invalid: expected {expected}")

        check_field_types(self, ("backbone_kwargs", "detector_kwargs", "scenes"))
        check(self.arch in ARCHS, "--arch", self.arch, f"one of {', '.join(ARCHS)}")
        check(self.dataset in DATASETS, "--dataset", self.dataset, f"one of {', '.join(DATASETS)}")
        check(self.dataset != "coco" or self.data_dir is not None, "--data-dir", self.data_dir,
              "a COCO folder D with D/annotations/instances_<split>.json and D/<split>/ (--dataset coco)")
        check(self.epochs >= 1, "--epochs", self.epochs, "an integer >= 1")
        check(self.batch_size >= 1, "-b/--batch-size", self.batch_size, "an integer >= 1")
        check(self.lr is None or self.lr > 0, "--lr", self.lr, "a positive number")
        check(self.lr_base > 0, "--lr-base", self.lr_base, "a positive number")
        check(self.weight_decay >= 0, "--weight-decay", self.weight_decay, "a number >= 0")
        check(self.warmup_iters >= 0, "--warmup-iters", self.warmup_iters, "an integer >= 0")
        check(list(self.lr_steps) == sorted(self.lr_steps) and all(0 < s <= self.epochs for s in self.lr_steps),
              "--lr-steps", list(self.lr_steps), f"increasing epochs in 1..{self.epochs}")
        check(self.clip_grad is None or self.clip_grad > 0, "--clip-grad", self.clip_grad, "a positive norm")
        check(32 <= self.min_size <= self.max_size, "--min-size/--max-size", (self.min_size, self.max_size),
              "32 <= min <= max")
        check(self.fpn_channels >= 8, "--fpn-channels", self.fpn_channels, "an integer >= 8")
        check(self.frozen_stages >= -1, "--frozen-stages", self.frozen_stages, "-1 (none), 0 (stem) or a stage count")
        check(all(s >= 1 for s in self.anchor_sizes), "--anchor-sizes", list(self.anchor_sizes), "positive sizes")
        check(self.box_head_dim >= 1, "--box-head-dim", self.box_head_dim, "an integer >= 1")
        check(len(self.mask_head_layers) >= 1 and min(self.mask_head_layers) >= 1, "--mask-head-layers",
              list(self.mask_head_layers), "one or more positive widths")
        check(0 <= self.hflip <= 1, "--hflip", self.hflip, "a probability in [0, 1]")
        check(self.workers >= 0, "--workers", self.workers, "an integer >= 0")


def _lr_base_for(backbone: str) -> float:
    """The authors' rate per 16 images: 1e-4 for the M and L backbones, 2e-4 for the smaller ones."""
    return 1e-4 if backbone.rsplit("_", 1)[-1] in ("m", "l") else 2e-4


PRESETS: dict[str, dict[str, Any]] = {
    "coco-1x": dict(arch="maskrcnn", dataset="coco", epochs=12, batch_size=2, lr_steps=(8, 11), warmup_iters=500,
                    weight_decay=1e-4, min_size=800, max_size=1333, hflip=0.5),
    # Fashion-MNIST scenes (128 px grayscale canvases) on a 2-core CPU: small anchors, a narrow FPN and
    # fewer sampled RoIs keep an epoch in minutes (docs/detection/README.md says how it was sized).
    "fm-scenes": dict(arch="maskrcnn", dataset="fm-scenes", epochs=6, batch_size=4, lr_base=8e-4, lr_steps=(5,),
                      warmup_iters=100, weight_decay=1e-4, min_size=128, max_size=128, fpn_channels=64,
                      anchor_sizes=(8, 16, 32, 64, 128), box_head_dim=256, mask_head_layers=(64, 64), hflip=0.5,
                      detector_kwargs=dict(rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300,
                                           rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=150,
                                           box_batch_size_per_image=64, box_detections_per_img=30)),
}


def scaled_lr_steps(steps: tuple[int, ...], epochs: int, new_epochs: int) -> tuple[int, ...]:
    """``steps`` of an ``epochs``-long schedule at the same fractions of ``new_epochs`` (each in 1..new_epochs):
    the 1x schedule's (8, 11) of 12 epochs becomes the 2x schedule's (16, 22) of 24, and (1,) of 1."""
    if new_epochs < 1:
        return tuple(steps)  # validate() names the bad --epochs
    return tuple(sorted({min(new_epochs, max(1, round(s * new_epochs / epochs))) for s in steps}))


def make_detect_config(preset: str | None = None, **overrides: Any) -> DetectConfig:
    """A config from ``preset`` (or the defaults) with ``overrides`` applied, validated."""
    if preset is not None and preset not in PRESETS:
        raise InvalidValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    values = dict(PRESETS[preset]) if preset else {}
    if preset == "coco-1x" and "lr_base" not in overrides:
        values["lr_base"] = _lr_base_for(overrides.get("backbone", DetectConfig.backbone))
    if "epochs" in overrides and "lr_steps" not in overrides and isinstance(overrides["epochs"], int):
        values["lr_steps"] = scaled_lr_steps(values.get("lr_steps", DetectConfig.lr_steps),
                                             values.get("epochs", DetectConfig.epochs), overrides["epochs"])
    config = DetectConfig.from_dict({**values, **overrides})
    config.validate()
    return config
