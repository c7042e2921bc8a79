"""Training configuration, its checks, and named presets (a quick run, the authors' ImageNet recipes)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from timm.data import rand_augment_transform
from timm.optim import OptimInfo, get_optimizer_info

from ..errors import InvalidTypeError, InvalidValueError

# The meaning of a stored config: 1 (no version stored) had momentum 0.9 by default, which timm used only for
# optimizers with a momentum; 2: momentum None is the optimizer's own default, and sets Adam-like beta1.
CONFIG_VERSION = 2
# timm's schedulers that step per update; "plateau" needs a metric per epoch and "none" leaves no schedule.
SCHEDULES = ("cosine", "tanh", "step", "multistep", "poly", "wsd", "rsqrt", "constant")
_FLAGS = {"batch_size": "-b/--batch-size", "workers": "-j/--workers"}  # fields whose flag is not --field-name


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
    momentum: float | None = None  # None: the optimizer's own; SGD-like: momentum, Adam-like: beta1
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
        return config_from_dict(cls, values, "training")

    def validate(self) -> None:
        """Raise a one-line error naming the first bad value and what would be accepted."""
        check_field_types(self)

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
        for flag, value in (("--warmup-lr", self.warmup_lr), ("--min-lr", self.min_lr)):
            check(value >= 0, flag, value, "a learning rate >= 0")
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
        most = 4 * (os.cpu_count() or 1)  # beyond that, loader processes only compete for the cores
        check(0 <= self.workers <= most, "-j/--workers", self.workers, f"an integer in [0, {most}]")
        check(bool(self.output.strip()), "--output", self.output, "a folder name")
        check(self.data_dir is None or bool(self.data_dir.strip()), "--data-dir", self.data_dir, "a folder name")
        check(0 <= self.seed < 2 ** 31, "--seed", self.seed, "an integer in [0, 2**31)")
        check(self.aa is None or _is_rand_augment(self.aa), "--aa", self.aa,
              "a timm RandAugment policy such as rand-m9-mstd0.5-inc1")
        _check_schedule(self)
        optimizer_info(self.opt)
        _check_momentum(self.opt, self.momentum)


def _flag(name: str) -> str:
    """The command-line flag of config field ``name``."""
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` has type ``hint`` (an int is a float, a bool is not a number)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits(value, option) for option in typing.get_args(hint))
    hint = typing.get_origin(hint) or hint
    if hint is type(None):
        return value is None
    if hint in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if hint is float else hint)


def _describe(hint: Any) -> str:
    """``int | None`` as "an int or None"."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(hint))
    hint = typing.get_origin(hint) or hint
    names = {type(None): "None", int: "an integer", float: "a number", str: "a string", bool: "True or False"}
    return names.get(hint, f"a {hint.__name__}")


def check_field_types(config: Any, keyword_fields: tuple[str, ...] = ("model_kwargs",)) -> None:
    """Each field of dataclass ``config`` of its hinted type, every number finite, and the ``keyword_fields``
    (dicts of keyword arguments) storable as JSON with string keys (checkpoints keep them)."""
    for name, hint in typing.get_type_hints(type(config)).items():
        value = getattr(config, name)
        if not _fits(value, hint):
            raise InvalidTypeError(f"{_flag(name)} {value!r} is invalid: expected {_describe(hint)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidValueError(f"{_flag(name)} {value!r} is invalid: expected a finite number")
    for name in keyword_fields:
        value = getattr(config, name)
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise InvalidValueError(f"{_flag(name)} {value!r} is invalid: expected plain values (numbers, strings, "
                                    "lists), e.g. act_layer='gelu' rather than a class") from None
        if not all(isinstance(key, str) for key in value):
            raise InvalidTypeError(f"{_flag(name)} {value!r} is invalid: expected keyword names as keys")


def config_from_dict(config_class: type, values: dict[str, Any], what: str) -> Any:
    """Dataclass ``config_class`` from ``values``; unknown names are a one-line error naming ``what`` options."""
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidValueError(f"unknown {what} option(s): {', '.join(unknown)}")
    return config_class(**values)


def _check_schedule(config: "TrainConfig") -> None:
    if config.sched not in SCHEDULES:
        raise InvalidValueError(f"--sched {config.sched!r} is invalid: choose one of {', '.join(SCHEDULES)} "
                                "(timm's schedulers that step per update)")
    if config.sched in ("wsd", "rsqrt") and config.warmup_epochs >= config.epochs:
        raise InvalidValueError(f"--sched {config.sched} needs --warmup-epochs ({config.warmup_epochs}) below "
                                f"--epochs ({config.epochs}): its decay phase follows the warm-up")


def optimizer_info(opt: str) -> OptimInfo:
    """timm's description of optimizer ``opt`` (a ``lookahead_`` prefix allowed); unknown names are an error."""
    try:
        return get_optimizer_info(opt.lower().split("_")[-1])
    except ValueError:
        raise InvalidValueError(f"--opt {opt!r} is not a timm optimizer; e.g. adamw, sgd, lamb "
                                "(timm.optim.list_optimizers() lists them)") from None


def _check_momentum(opt: str, momentum: float | None) -> None:
    if momentum is None:
        return
    if not 0 <= momentum < 1:
        raise InvalidValueError(f"--momentum {momentum!r} is invalid: expected a number in [0, 1)")
    info = optimizer_info(opt)
    if not (info.has_momentum or info.has_betas):
        raise InvalidValueError(f"--momentum does not apply to --opt {opt}, which has neither momentum nor betas; "
                                "drop --momentum")


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


def upgrade_config(values: dict[str, Any], version: int = 1) -> dict[str, Any]:
    """A config dict stored under :data:`CONFIG_VERSION` ``version``, in today's terms (the same run)."""
    values = dict(values)
    if version < 2 and values.get("momentum") is not None:
        info = optimizer_info(values.get("opt", TrainConfig.opt))
        if not info.has_momentum:  # timm ignored it for these: their own default was used
            values["momentum"] = None
    return values


def make_config(preset: str | None = None, **overrides: Any) -> TrainConfig:
    """A config from ``preset`` (or the defaults) with ``overrides`` applied, validated."""
    if preset is not None and preset not in PRESETS:
        raise InvalidValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    config = TrainConfig.from_dict({**(PRESETS[preset] if preset else {}), **overrides})
    config.validate()
    return config
