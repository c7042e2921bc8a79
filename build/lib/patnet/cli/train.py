"""``patnet train``: train any timm model (PATNet by default) on Fashion-MNIST, an image folder or a synthetic set.

Flags keep timm's ``train.py`` names. A flag left out takes its value from ``--preset`` (or, with
``--resume``, from the checkpoint's config), else the default shown.
"""
from __future__ import annotations

import argparse

from ..data import DATASETS
from ..engine import PRESETS, TrainConfig, make_config, resume_config, train
from ..errors import InvalidValueError
from .common import DEVICE_HELP, KeywordArguments, add_config_options, config_overrides

_DEFAULTS = TrainConfig()

# (flags, config field, type or action, help)
_OPTIONS = [
    (("--model",), "model", str, "timm model name"),
    (("--model-kwargs",), "model_kwargs", KeywordArguments, "extra model arguments, KEY=VALUE ..."),
    (("--patch-size",), "patch_size", int, "stem kernel size (model default when left out)"),
    (("--patch-stride",), "patch_stride", int, "stem stride, PATNet only (defaults to the kernel size)"),
    (("--drop-path",), "drop_path", float, "stochastic-depth rate (model default when left out)"),
    (("--dataset",), "dataset", str, f"one of {', '.join(DATASETS)}"),
    (("--data-dir",), "data_dir", str, "Fashion-MNIST IDX folder, or image folder with train/ and val/"),
    (("--img-size",), "img_size", int, "input side in pixels (dataset default: 64 for Fashion-MNIST, 224 folder)"),
    (("-b", "--batch-size"), "batch_size", int, "images per process and step"),
    (("--epochs",), "epochs", int, "epochs to train"),
    (("--opt",), "opt", str, "timm optimizer name"),
    (("--lr",), "lr", float, "learning rate (default: --lr-base x global batch / 256)"),
    (("--lr-base",), "lr_base", float, "learning rate per 256 images"),
    (("--momentum",), "momentum", float, "momentum (SGD-like optimizers) or beta1 (Adam-like), in [0, 1) "
                                          "(default: the optimizer's own)"),
    (("--weight-decay",), "weight_decay", float, "weight decay"),
    (("--clip-grad",), "clip_grad", float, "clip the gradient norm to this value"),
    (("--sched",), "sched", str, "timm scheduler name"),
    (("--warmup-epochs",), "warmup_epochs", float, "linear warm-up length in epochs (may be fractional)"),
    (("--warmup-lr",), "warmup_lr", float, "learning rate at the start of warm-up"),
    (("--min-lr",), "min_lr", float, "learning rate at the end of the schedule"),
    (("--smoothing",), "smoothing", float, "label smoothing"),
    (("--mixup",), "mixup", float, "Mixup alpha (0 = off)"),
    (("--cutmix",), "cutmix", float, "CutMix alpha (0 = off)"),
    (("--aa",), "aa", str, "RandAugment policy, e.g. rand-m7-mstd0.5-inc1"),
    (("--hflip",), "hflip", float, "horizontal-flip probability"),
    (("--no-aug",), "no_aug", "store_true", "no training augmentation"),
    (("--model-ema",), "model_ema", "store_true", "keep an exponential moving average of the weights"),
    (("--model-ema-decay",), "model_ema_decay", float, "EMA decay"),
    (("--amp",), "amp", "store_true", "mixed precision (float16 on CUDA, bfloat16 on CPU)"),
    (("--channels-last",), "channels_last", "store_true", "channels-last memory format"),
    (("--sync-bn",), "sync_bn", "store_true", "synchronised batch norm across processes (CUDA only)"),
    (("--output",), "output", str, "run directory (checkpoints, metrics, plots)"),
    (("--seed",), "seed", int, "random seed"),
    (("-j", "--workers"), "workers", int, "data-loading worker processes"),
    (("--device",), "device", str, DEVICE_HELP),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), help="start from a named recipe "
                        "(quick: short Fashion-MNIST run; paper-*: the authors' ImageNet recipe per variant)")
    parser.add_argument("--resume", metavar="PATH", help="continue a run: its directory or a checkpoint in it")
    add_config_options(parser, _OPTIONS, _DEFAULTS)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The config: checkpoint's (on resume) or preset's values, then the flags given on the command line."""
    given = config_overrides(args, TrainConfig)
    if args.resume:
        if args.preset:
            raise InvalidValueError("--preset and --resume cannot be combined: a resumed run keeps its own config")
        return resume_config(args.resume, **given)
    return make_config(args.preset, **given)


def run(args: argparse.Namespace) -> int:
    train(config_from_args(args), resume=args.resume)
    return 0
