"""The parts of a training run, each built from the config by one small function.

:class:`patnet.engine.trainer` composes them: data, model, loaders, optimizer and schedule, loss
(with Mixup/CutMix), precision, and the DDP wrapper.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2, get_optimizer_class
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, NativeScaler
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..data import build_dataset, dataset_info
from ..device import check_memory, forward_bytes, is_out_of_memory, out_of_memory_errors
from ..errors import InvalidValueError
from ..models import create_model
from .config import TrainConfig, optimizer_info
from .distributed import DistContext, ShardSampler


@dataclass
class TrainData:
    """The two splits of a run's dataset, its class names, and what a checkpoint records about them."""
    train_set: Dataset
    val_set: Dataset
    classes: list[str]
    in_chans: int
    img_size: int

    def metadata(self, config: TrainConfig) -> dict[str, Any]:
        """What ``patnet eval``/``predict`` (and timm, through config.json) need to rebuild the model and its
        transform."""
        return dict(model=config.model, model_kwargs=model_kwargs(config), num_classes=len(self.classes),
                    in_chans=self.in_chans, class_names=self.classes, dataset=config.dataset,
                    img_size=self.img_size, data_config=data_config(config.dataset))


def data_config(dataset: str) -> dict[str, Any]:
    """How the evaluation transform of ``dataset`` (``patnet.data.transforms``) prepares an image, in timm's
    terms: photos are resized (bicubic) and centre-cropped at 0.9, small images squashed to size (bilinear)."""
    info = dataset_info(dataset)
    resize = (dict(interpolation="bicubic", crop_pct=0.9, crop_mode="center") if info.photos
              else dict(interpolation="bilinear", crop_pct=1.0, crop_mode="squash"))
    return dict(mean=list(info.mean), std=list(info.std), **resize)


def build_data(config: TrainConfig) -> TrainData:
    """The training split (with the config's augmentation) and the validation split."""
    info = dataset_info(config.dataset)
    img_size = config.img_size or info.img_size
    aug = dict(hflip=config.hflip, auto_augment=config.aa, no_aug=config.no_aug)
    train_set = build_dataset(config.dataset, "train", config.data_dir, img_size, **aug)
    val_set = build_dataset(config.dataset, "val", config.data_dir, img_size)
    return TrainData(train_set, val_set, list(train_set.classes), info.in_chans, img_size)


def model_kwargs(config: TrainConfig) -> dict:
    """Keyword arguments for the model beyond the class and channel counts."""
    kwargs = dict(config.model_kwargs)
    for key, value in (("patch_size", config.patch_size), ("patch_stride", config.patch_stride),
                       ("drop_path_rate", config.drop_path)):
        if value is not None:
            kwargs[key] = value
    return kwargs


def build_model(config: TrainConfig, data: TrainData) -> torch.nn.Module:
    """The model the config names, sized for the data, checked to take its image size (on the CPU)."""
    model = create_model(config.model, num_classes=len(data.classes), in_chans=data.in_chans,
                         **model_kwargs(config))
    check_input_size(model, data.in_chans, data.img_size)
    return model


def check_input_size(model: torch.nn.Module, in_chans: int, img_size: int) -> None:
    """Run two blank images through ``model`` (when they fit in memory) so that an input size it cannot take
    fails now, with advice."""
    model.eval()
    what, fix = f"a forward pass over two {img_size}x{img_size} images", "lower --img-size"
    check_memory(forward_bytes(model, 2, in_chans, img_size, img_size), torch.device("cpu"), what, fix)
    with out_of_memory_errors(what, fix):
        try:
            with torch.no_grad():
                model(torch.zeros(2, in_chans, img_size, img_size))
        except (RuntimeError, ValueError, AssertionError) as exc:  # timm checks input sizes with assert
            if is_out_of_memory(exc):
                raise
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InvalidValueError(f"the model cannot take {img_size}x{img_size} images ({reason}); raise "
                                    "--img-size or make the stem smaller with --patch-size/--patch-stride") from None


def check_batch_memory(model: torch.nn.Module, config: TrainConfig, data: TrainData, device: torch.device) -> None:
    """Refuse, before training starts, a batch whose forward pass alone cannot fit on ``device``."""
    size = data.img_size
    check_memory(forward_bytes(model, config.batch_size, data.in_chans, size, size), device,
                 f"training on batches of {config.batch_size} images of {size}x{size}",
                 "lower -b/--batch-size or --img-size")


def place_model(model: torch.nn.Module, config: TrainConfig, ctx: DistContext) -> torch.nn.Module:
    """``model`` on the run's device and memory format, with synchronised BN when asked for."""
    model.to(ctx.device)
    if ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    if config.sync_bn:
        if ctx.device.type != "cuda":
            raise InvalidValueError("--sync-bn needs CUDA devices (torch's SyncBatchNorm does not run on CPU); "
                                    "drop it")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def build_ema(model: torch.nn.Module, config: TrainConfig) -> ModelEmaV3 | None:
    return ModelEmaV3(model, decay=config.model_ema_decay) if config.model_ema else None


def build_loaders(config: TrainConfig, data: TrainData, ctx: DistContext
                  ) -> tuple[DistributedSampler, DataLoader, DataLoader]:
    """The training sampler (reshuffled per epoch), the training loader and this process's validation shard."""
    per_process = len(data.train_set) // ctx.world_size
    if per_process < config.batch_size:
        raise InvalidValueError(f"the training split has {per_process} images per process, fewer than one batch "
                                f"of {config.batch_size}; lower -b/--batch-size")
    sampler = DistributedSampler(data.train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=config.seed, drop_last=True)
    loader_args = dict(num_workers=config.workers, pin_memory=ctx.device.type == "cuda")
    # drop_last: a last batch of one sample would break batch-norm statistics.
    train_loader = DataLoader(data.train_set, config.batch_size, sampler=sampler, drop_last=True, **loader_args)
    val_loader = DataLoader(data.val_set, config.batch_size,
                            sampler=ShardSampler(len(data.val_set), ctx.rank, ctx.world_size), **loader_args)
    return sampler, train_loader, val_loader


def learning_rate(config: TrainConfig, global_batch: int) -> float:
    """``--lr``, or ``--lr-base`` scaled linearly to the global batch (per 256 images)."""
    return config.lr if config.lr is not None else config.lr_base * global_batch / 256


def momentum_arguments(opt: str, momentum: float | None) -> dict[str, Any]:
    """``--momentum`` as optimizer ``opt`` takes it: ``momentum`` for SGD-like optimizers, the first of the
    ``betas`` (the rest kept at the optimizer's defaults) for Adam-like ones, nothing when it is None."""
    if momentum is None:
        return {}
    info = optimizer_info(opt)
    if info.has_momentum:
        return dict(momentum=momentum)
    defaults = (info.defaults or {}).get("betas")
    if defaults is None:
        defaults = inspect.signature(get_optimizer_class(info, bind_defaults=False)).parameters["betas"].default
    return dict(betas=(momentum, *tuple(defaults or ())[1:]))  # Adafactor's default None: it reads beta1 only


def build_optimization(config: TrainConfig, model: torch.nn.Module, global_batch: int, steps_per_epoch: int):
    """timm's optimizer and per-step scheduler (warm-up, then ``--sched``) for the run."""
    try:
        optimizer = create_optimizer_v2(model, opt=config.opt, lr=learning_rate(config, global_batch),
                                        weight_decay=config.weight_decay,
                                        **momentum_arguments(config.opt, config.momentum))
        scheduler, _ = create_scheduler_v2(
            optimizer, sched=config.sched, num_epochs=config.epochs, warmup_epochs=config.warmup_epochs,
            warmup_lr=config.warmup_lr, min_lr=config.min_lr, step_on_epochs=False,
            updates_per_epoch=steps_per_epoch)
    except (ValueError, TypeError, AssertionError, ImportError) as exc:  # torch's and timm's own argument checks
        raise InvalidValueError(f"--opt {config.opt} / --sched {config.sched} cannot be set up with these "
                                f"values: {' '.join(str(exc).split())}") from None
    return optimizer, scheduler


def build_mixup(config: TrainConfig, num_classes: int) -> Mixup | None:
    if config.mixup <= 0 and config.cutmix <= 0:
        return None
    return Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, label_smoothing=config.smoothing,
                 num_classes=num_classes)


def build_criterion(config: TrainConfig, mixing: bool) -> torch.nn.Module:
    """Soft-target cross-entropy under Mixup/CutMix (which smooth the labels), else (smoothed) cross-entropy."""
    if mixing:
        return SoftTargetCrossEntropy()
    if config.smoothing > 0:
        return LabelSmoothingCrossEntropy(config.smoothing)
    return torch.nn.CrossEntropyLoss()


def build_precision(config: TrainConfig, ctx: DistContext) -> tuple[torch.dtype | None, NativeScaler | None]:
    """``--amp``: float16 with a loss scaler on CUDA, bfloat16 on the CPU; otherwise full precision."""
    if not config.amp:
        return None, None
    if ctx.device.type == "cuda":
        return torch.float16, NativeScaler(device="cuda")
    return torch.bfloat16, None


def wrap_ddp(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """``model`` under DistributedDataParallel when there are several processes, else itself."""
    if not ctx.distributed:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
