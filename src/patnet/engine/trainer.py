"""The training loop: any timm model by name, timm's optimizer, scheduler, Mixup/CutMix, EMA and losses,
DDP under ``torchrun``, and resumable checkpoints.

Resume semantics: checkpoints are written at the end of each epoch, with every process's RNG states.
A run stopped at any moment (even SIGKILL mid-epoch) and resumed from ``last`` repeats the interrupted
epoch from its start and, on the same machine and thread count, reaches bit-identical weights and metrics.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import timm
import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, NativeScaler, distribute_bn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from ..data import build_dataset, dataset_info
from . import checkpoint as ckpt
from .config import TrainConfig
from .distributed import (DistContext, ShardSampler, all_gather_objects, all_reduce_sum, barrier,
                          init_distributed, shutdown)
from .evaluate import evaluate
from .report import plot_confusion, plot_curves, write_history
from .rng import capture_rng_state, restore_rng_state, seed_everything


class NonFiniteLossError(ValueError):
    """The training loss became NaN or infinite."""


def model_kwargs(config: TrainConfig) -> dict:
    """Keyword arguments for ``timm.create_model`` beyond the class and channel counts."""
    kwargs = dict(config.model_kwargs)
    for key, value in (("patch_size", config.patch_size), ("patch_stride", config.patch_stride),
                       ("drop_path_rate", config.drop_path)):
        if value is not None:
            kwargs[key] = value
    return kwargs


def create_model(name: str, num_classes: int, in_chans: int, kwargs: dict) -> torch.nn.Module:
    """``timm.create_model`` with one-line errors for unknown names and unsupported keyword arguments."""
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ValueError(f"unknown model {name!r}; e.g. {', '.join(close) or 'patnet_t0, fasternet_t0, resnet18'}")
    try:
        return timm.create_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except TypeError as exc:
        raise ValueError(f"cannot build {name} with {kwargs}: {exc}") from None


def check_input_size(model: torch.nn.Module, in_chans: int, img_size: int) -> None:
    """Run two blank images through ``model`` so that an input size it cannot take fails now, with advice."""
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, in_chans, img_size, img_size))
    except (RuntimeError, ValueError, AssertionError) as exc:  # timm checks input sizes with assert
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"the model cannot take {img_size}x{img_size} images ({reason}); "
                         "raise --img-size or make the stem smaller with --patch-size/--patch-stride") from None


def build_criterion(config: TrainConfig, mixing: bool) -> torch.nn.Module:
    """Soft-target cross-entropy under Mixup/CutMix (which smooth the labels), else (smoothed) cross-entropy."""
    if mixing:
        return SoftTargetCrossEntropy()
    if config.smoothing > 0:
        return LabelSmoothingCrossEntropy(config.smoothing)
    return torch.nn.CrossEntropyLoss()


def resume_config(path: str | os.PathLike, **overrides) -> TrainConfig:
    """The config a checkpoint was trained with, with ``overrides`` applied (e.g. more ``epochs``)."""
    state = ckpt.load_state(ckpt.resolve_checkpoint(path))
    config = TrainConfig.from_dict({**state["config"], **overrides})
    config.validate()
    return config


def train(config: TrainConfig, resume: str | os.PathLike | None = None) -> list[dict]:
    """Train as ``config`` says (continuing checkpoint ``resume`` if given); return the per-epoch metrics."""
    config.validate()
    ctx = init_distributed(config.device)
    try:
        return _Run(config, ctx, resume).fit()
    finally:
        shutdown(ctx)


class _Run:
    """One training run on one process; all processes of a DDP run hold one each."""

    def __init__(self, config: TrainConfig, ctx: DistContext, resume: str | os.PathLike | None):
        self.config, self.ctx = config, ctx
        self.run_dir = Path(config.output)
        seed_everything(config.seed + ctx.rank)
        info = dataset_info(config.dataset)
        self.img_size = config.img_size or info.img_size
        aug = dict(hflip=config.hflip, auto_augment=config.aa, no_aug=config.no_aug)
        train_set = build_dataset(config.dataset, "train", config.data_dir, self.img_size, **aug)
        val_set = build_dataset(config.dataset, "val", config.data_dir, self.img_size)
        self.classes = train_set.classes
        self.metadata = dict(model=config.model, model_kwargs=model_kwargs(config), num_classes=len(self.classes),
                             in_chans=info.in_chans, class_names=self.classes, dataset=config.dataset,
                             img_size=self.img_size)

        model = create_model(config.model, len(self.classes), info.in_chans, self.metadata["model_kwargs"])
        check_input_size(model, info.in_chans, self.img_size)
        state = self._load_resume_state(resume, model) if resume is not None else None
        model.to(ctx.device)
        if config.channels_last:
            model.to(memory_format=torch.channels_last)
        if config.sync_bn:
            if ctx.device.type != "cuda":
                raise ValueError("--sync-bn needs CUDA devices (torch's SyncBatchNorm does not run on CPU); drop it")
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model
        self.ema = ModelEmaV3(model, decay=config.model_ema_decay) if config.model_ema else None

        per_process = len(train_set) // ctx.world_size
        if per_process < config.batch_size:
            raise ValueError(f"the training split has {per_process} images per process, fewer than one batch of "
                             f"{config.batch_size}; lower -b/--batch-size")
        self.sampler = DistributedSampler(train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                          seed=config.seed, drop_last=True)
        loader_args = dict(num_workers=config.workers, pin_memory=ctx.device.type == "cuda")
        # drop_last: a last batch of one sample would break batch-norm statistics.
        self.train_loader = DataLoader(train_set, config.batch_size, sampler=self.sampler, drop_last=True,
                                       **loader_args)
        self.val_loader = DataLoader(val_set, config.batch_size,
                                     sampler=ShardSampler(len(val_set), ctx.rank, ctx.world_size), **loader_args)

        self.global_batch = config.batch_size * ctx.world_size
        lr = config.lr if config.lr is not None else config.lr_base * self.global_batch / 256
        self.optimizer = create_optimizer_v2(model, opt=config.opt, lr=lr, weight_decay=config.weight_decay,
                                             momentum=config.momentum)
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, sched=config.sched, num_epochs=config.epochs, warmup_epochs=config.warmup_epochs,
            warmup_lr=config.warmup_lr, min_lr=config.min_lr, step_on_epochs=False,
            updates_per_epoch=len(self.train_loader))
        mixing = config.mixup > 0 or config.cutmix > 0
        self.mixup = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, label_smoothing=config.smoothing,
                           num_classes=len(self.classes)) if mixing else None
        self.criterion = build_criterion(config, mixing)
        use_cuda = ctx.device.type == "cuda"
        self.autocast_dtype = (torch.float16 if use_cuda else torch.bfloat16) if config.amp else None
        self.scaler = NativeScaler(device="cuda") if config.amp and use_cuda else None
        if use_cuda:
            torch.backends.cudnn.benchmark = True

        self.start_epoch, self.history = 0, []
        self.best_top1, self.best_epoch = -1.0, 0
        if state is not None:
            self._restore_training_state(state)
        self.ddp_model = (torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if use_cuda else None) if ctx.distributed else model)

    def _load_resume_state(self, resume, model) -> dict:
        checkpoint_dir = ckpt.resolve_checkpoint(resume)
        meta = ckpt.read_metadata(checkpoint_dir / ckpt.WEIGHTS)
        if meta["model"] != self.config.model:
            raise ValueError(f"checkpoint {checkpoint_dir} holds a {meta['model']} model, not {self.config.model}; "
                             f"resume with --model {meta['model']} or start a new run in another --output")
        if meta["num_classes"] != len(self.classes):
            raise ValueError(f"checkpoint {checkpoint_dir} was trained on {meta['num_classes']} classes but "
                             f"--dataset {self.config.dataset} has {len(self.classes)}; resume on the same data "
                             "or start a new run")
        if meta["class_names"] != self.classes:
            raise ValueError(f"checkpoint {checkpoint_dir} was trained on classes {meta['class_names'][:5]}... "
                             f"but the dataset has {self.classes[:5]}...; resume on the same data")
        ckpt.load_into(model, ckpt.load_weights(checkpoint_dir / ckpt.WEIGHTS), checkpoint_dir / ckpt.WEIGHTS)
        state = ckpt.load_state(checkpoint_dir)
        state["checkpoint_dir"] = checkpoint_dir
        return state

    def _restore_training_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            ema_file = state["checkpoint_dir"] / ckpt.EMA_WEIGHTS
            if not ema_file.is_file():
                raise ValueError(f"{state['checkpoint_dir']} has no EMA weights; resume without --model-ema")
            ckpt.load_into(self.ema.module, ckpt.load_weights(ema_file), ema_file)
        self.start_epoch, self.history = state["epoch"], list(state["history"])
        self.best_top1, self.best_epoch = state["best_top1"], state["best_epoch"]
        rng_states = state["rng"]
        if len(rng_states) == self.ctx.world_size:
            restore_rng_state(rng_states[self.ctx.rank])
        else:
            seed_everything(self.config.seed + 1000 * self.start_epoch + self.ctx.rank)
            if self.ctx.is_main:
                print(f"note: the checkpoint was written by {len(rng_states)} process(es), this run has "
                      f"{self.ctx.world_size}; training continues but will not replay the original run exactly")

    def fit(self) -> list[dict]:
        config, ctx = self.config, self.ctx
        if ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            print(f"training {config.model} on {config.dataset} ({len(self.classes)} classes, "
                  f"{self.img_size}x{self.img_size}), {ctx.world_size} process(es) on {ctx.device}, "
                  f"global batch {self.global_batch}, epochs {self.start_epoch + 1}..{config.epochs}", flush=True)
        result = None
        for epoch in range(self.start_epoch, config.epochs):
            self.sampler.set_epoch(epoch)
            start = time.perf_counter()
            train_loss, images_per_s = self._train_one_epoch(epoch)
            if ctx.distributed:
                distribute_bn(self.model, ctx.world_size, reduce=False)  # evaluate rank 0's BN statistics
            result = evaluate(self.model, self.val_loader, len(self.classes), ctx, config.channels_last,
                              self.autocast_dtype)
            row = {"epoch": epoch + 1, "train_loss": train_loss, **result.as_dict()}
            if self.ema is not None:
                ema_result = evaluate(self.ema.module, self.val_loader, len(self.classes), ctx,
                                      config.channels_last, self.autocast_dtype)
                row.update(ema_top1=ema_result.top1, ema_top5=ema_result.top5)
            row.update(lr=self.optimizer.param_groups[0]["lr"], images_per_s=images_per_s,
                       epoch_s=time.perf_counter() - start)
            self.history.append(row)
            if result.top1 > self.best_top1:
                self.best_top1, self.best_epoch = result.top1, epoch + 1
            self._save(epoch + 1)
            if ctx.is_main:
                print(f"epoch {epoch + 1}/{config.epochs}  train_loss {train_loss:.4f}  val_loss {result.loss:.4f}  "
                      f"top1 {result.top1:.2f}  top5 {result.top5:.2f}  {images_per_s:.0f} img/s  "
                      f"{row['epoch_s']:.0f} s", flush=True)
        if ctx.is_main and self.history:
            plot_curves(self.history, self.run_dir / "curves.png")
            if result is not None and len(self.classes) <= 20:
                plot_confusion(result.confusion, self.classes, self.run_dir / "confusion.png",
                               title=f"{config.model}, epoch {config.epochs}")
            print(f"best top1 {self.best_top1:.2f} at epoch {self.best_epoch}; checkpoints in {self.run_dir}/last "
                  f"and {self.run_dir}/best, metrics in {self.run_dir}/metrics.csv", flush=True)
        return self.history

    def _train_one_epoch(self, epoch: int) -> tuple[float, float]:
        config, ctx = self.config, self.ctx
        self.ddp_model.train()
        steps = len(self.train_loader)
        num_updates = epoch * steps
        loss_total, start = 0.0, time.perf_counter()
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                   disable=None if ctx.is_main else True)
        log_every = max(1, steps // 40)  # in tens of steps: about four lines per epoch
        for step, (images, targets) in enumerate(bar):
            images, targets = images.to(ctx.device, non_blocking=True), targets.to(ctx.device, non_blocking=True)
            if self.mixup is not None:
                images, targets = self.mixup(images, targets)
            if config.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(ctx.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
                loss = self.criterion(self.ddp_model(images), targets)
            mean_loss = all_reduce_sum(loss.detach().float().clone(), ctx).item() / ctx.world_size
            if not math.isfinite(mean_loss):
                raise NonFiniteLossError(
                    f"the training loss became {mean_loss} at epoch {epoch + 1}, step {step + 1}; training stopped. "
                    f"{self._last_good()} Lower --lr, set --clip-grad, or turn off --amp.")
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler(loss, self.optimizer, clip_grad=config.clip_grad, parameters=self.model.parameters())
            else:
                loss.backward()
                if config.clip_grad is not None:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.clip_grad)
                self.optimizer.step()
            num_updates += 1
            self.scheduler.step_update(num_updates=num_updates)
            if self.ema is not None:
                self.ema.update(self.model, step=num_updates)
            loss_total += mean_loss
            if step % 10 == 0 or step == steps - 1:
                rate = (step + 1) * self.global_batch / (time.perf_counter() - start)
                lr = self.optimizer.param_groups[0]["lr"]
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}", refresh=False)
                if bar.disable and ctx.is_main and step // 10 % log_every == 0:  # no terminal: log lines instead
                    print(f"  epoch {epoch + 1} step {step + 1}/{steps}  loss {mean_loss:.4f}  lr {lr:.2e}  "
                          f"{rate:.0f} img/s", flush=True)
        elapsed = time.perf_counter() - start
        return loss_total / steps, steps * self.global_batch / elapsed

    def _last_good(self) -> str:
        last = self.run_dir / "last"
        if last.exists():
            return f"The last good checkpoint, {last} (epoch {len(self.history)}), is kept."
        return "No checkpoint was written yet."

    def _save(self, epoch: int) -> None:
        """Write checkpoint ``epoch`` (rank 0), point ``last`` (and ``best``) at it, drop older ones."""
        rng_states = all_gather_objects(capture_rng_state(), self.ctx)
        if self.ctx.is_main:
            state = dict(epoch=epoch, optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                         scaler=self.scaler.state_dict() if self.scaler is not None else {}, rng=rng_states,
                         config=self.config.to_dict(), history=self.history, best_top1=self.best_top1,
                         best_epoch=self.best_epoch)
            metadata = dict(self.metadata, epoch=epoch, top1=self.history[-1]["top1"])
            directory = ckpt.save_checkpoint(self.run_dir, epoch, self.model, metadata, state,
                                             self.ema.module if self.ema is not None else None)
            ckpt.point(self.run_dir / "last", directory)
            if self.best_epoch == epoch:
                ckpt.point(self.run_dir / "best", directory)
            ckpt.prune_checkpoints(self.run_dir)
            write_history(self.run_dir, self.history)
        barrier(self.ctx)
