"""Training a detector: timm's AdamW and multistep schedule with linear warm-up, COCOeval after every epoch,
atomic resumable checkpoints (the classification engine's), DDP under ``torchrun``.

A run stopped at any moment (SIGKILL included) resumes from ``last``: the interrupted epoch is repeated from
its start with every process's RNG states restored.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import random_seed
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from ..data.coco import collate
from ..engine import checkpoint as ckpt
from ..engine.distributed import (
    DistContext,
    ShardSampler,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    init_distributed,
    shutdown,
)
from ..engine.report import write_history
from ..engine.rng import capture_rng_state, restore_rng_state
from ..errors import InvalidValueError
from .coco_eval import evaluate_results
from .config import DetectConfig
from .data import DetectionSplits, build_splits
from .inference import TASK, check_dataset_classes
from .models import DEFAULT_LEVELS, build_detector
from .report import plot_detection_curves

LOG_EVERY_STEPS = 10


class DivergedError(InvalidValueError):
    """The detection loss or weights became NaN or infinite."""


def detector_metadata(config: DetectConfig, data: DetectionSplits) -> dict:
    """What rebuilds the detector for ``patnet detect eval``/``predict`` (with the dataset's category ids)."""
    levels = config.levels if config.levels is not None else DEFAULT_LEVELS[config.arch]
    return dict(task=TASK, model=f"{config.arch}:{config.backbone}", arch=config.arch, backbone=config.backbone,
                backbone_kwargs=config.backbone_kwargs, class_names=data.class_names,
                category_ids=data.category_ids, in_chans=config.data.in_chans, image_mean=list(config.data.mean),
                image_std=list(config.data.std), levels=list(levels), fpn_channels=config.fpn_channels,
                anchor_sizes=list(config.anchor_sizes), min_size=config.min_size, max_size=config.max_size,
                box_head_dim=config.box_head_dim, mask_head_layers=list(config.mask_head_layers),
                detector_kwargs=config.detector_kwargs, dataset=config.dataset, data_dir=str(data.root))


def build_model(config: DetectConfig, data: DetectionSplits, weights: bool = True) -> torch.nn.Module:
    meta = detector_metadata(config, data)
    return build_detector(config.arch, config.backbone, len(data.class_names), in_chans=meta["in_chans"],
                          levels=meta["levels"], fpn_channels=config.fpn_channels, frozen_stages=config.frozen_stages,
                          norm_eval=config.norm_eval, anchor_sizes=config.anchor_sizes, min_size=config.min_size,
                          max_size=config.max_size, image_mean=meta["image_mean"], image_std=meta["image_std"],
                          backbone_weights=config.backbone_weights if weights else None,
                          backbone_kwargs=config.backbone_kwargs, box_head_dim=config.box_head_dim,
                          mask_head_layers=config.mask_head_layers, **config.detector_kwargs)


def resume_detect_config(path: str | os.PathLike, **overrides) -> DetectConfig:
    """The config a detection checkpoint was trained with, ``overrides`` applied; it continues in its own folder."""
    directory = ckpt.resolve_checkpoint(path)
    state = ckpt.load_state(directory)
    place = {} if "output" in overrides else {"output": str(ckpt.run_directory(directory))}
    config = DetectConfig.from_dict({**state["config"], **place, **overrides})
    config.validate()
    return config


def train_detector(config: DetectConfig, resume: str | os.PathLike | None = None) -> list[dict]:
    """Train as ``config`` says (continuing checkpoint ``resume`` if given); return the per-epoch metrics."""
    config.validate()
    ctx = init_distributed(config.device)
    try:
        return DetectRun(config, ctx, resume).fit()
    finally:
        shutdown(ctx)


class DetectRun:
    """One detection run on one process; every process of a DDP run holds one."""

    def __init__(self, config: DetectConfig, ctx: DistContext, resume: str | os.PathLike | None):
        self.config, self.ctx = config, ctx
        self.run_dir = Path(config.output)
        random_seed(config.seed, ctx.rank)
        self.data = build_splits(config)
        self.metadata = detector_metadata(config, self.data)
        state = self._resume_state(resume) if resume is not None else None
        self.model = build_model(config, self.data, weights=state is None)
        if state is not None:
            ckpt.load_into(self.model, ckpt.load_weights(state["checkpoint_dir"] / ckpt.WEIGHTS),
                           state["checkpoint_dir"])
        self.model.to(ctx.device)
        self._build_loaders()
        self._build_optimization()
        self.start_epoch, self.history, self.best_ap, self.best_epoch = 0, [], -1.0, 0
        if state is not None:
            self._restore(state)
        self.ddp_model = (torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=True) if ctx.distributed else self.model)

    def _build_loaders(self) -> None:
        config, ctx, train_set = self.config, self.ctx, self.data.train_set
        if len(train_set) // ctx.world_size < config.batch_size:
            raise InvalidValueError(f"the training split has {len(train_set)} images for {ctx.world_size} "
                                    f"process(es), fewer than one batch of {config.batch_size}; lower -b")
        self.sampler = DistributedSampler(train_set, ctx.world_size, ctx.rank, shuffle=True, seed=config.seed,
                                          drop_last=True)
        self.train_loader = DataLoader(train_set, config.batch_size, sampler=self.sampler, drop_last=True,
                                       num_workers=config.workers, collate_fn=collate)
        self.val_sampler = ShardSampler(len(self.data.val_set), ctx.rank, ctx.world_size)

    def _build_optimization(self) -> None:
        config = self.config
        self.global_batch = config.batch_size * self.ctx.world_size
        lr = config.lr if config.lr is not None else config.lr_base * self.global_batch / 16
        steps = len(self.train_loader)
        self.optimizer = create_optimizer_v2(self.model, opt="adamw", lr=lr, weight_decay=config.weight_decay)
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, sched="multistep", num_epochs=config.epochs, decay_milestones=list(config.lr_steps),
            decay_rate=0.1, warmup_epochs=min(config.warmup_iters / steps, config.epochs), warmup_lr=lr * 1e-3,
            min_lr=0.0, step_on_epochs=False, updates_per_epoch=steps)
        use_cuda = self.ctx.device.type == "cuda"
        self.autocast_dtype = (torch.float16 if use_cuda else torch.bfloat16) if config.amp else None
        self.scaler = torch.amp.GradScaler("cuda") if config.amp and use_cuda else None

    def _resume_state(self, resume) -> dict:
        directory = ckpt.resolve_checkpoint(resume)
        meta = ckpt.read_metadata(directory / ckpt.WEIGHTS)
        for key in ("task", "arch", "backbone", "class_names"):
            if meta.get(key) != self.metadata[key]:
                raise InvalidValueError(f"checkpoint {directory} has {key}={meta.get(key)!r} but this run has "
                                        f"{self.metadata[key]!r}; resume with the same detector and data, or start "
                                        "a new run in another --output")
        state = ckpt.load_state(directory)
        state["checkpoint_dir"] = directory
        return state

    def _restore(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch, self.history = state["epoch"], list(state["history"])
        self.best_ap, self.best_epoch = state["best_ap"], state["best_epoch"]
        if self.start_epoch >= self.config.epochs:
            raise InvalidValueError(f"{state['checkpoint_dir']} has already trained {self.start_epoch} epochs; "
                                    f"pass --epochs N with N > {self.start_epoch} to train more")
        rng = state["rng"]
        if len(rng) == self.ctx.world_size:
            restore_rng_state(rng[self.ctx.rank])
        else:
            random_seed(self.config.seed + 1000 * self.start_epoch, self.ctx.rank)

    def fit(self) -> list[dict]:
        config, ctx = self.config, self.ctx
        if ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            print(f"training {config.arch} on {config.backbone}, {config.dataset} ({len(self.data.class_names)} "
                  f"classes, {len(self.data.train_set)} training images), {ctx.world_size} process(es) on "
                  f"{ctx.device}, global batch {self.global_batch}, epochs {self.start_epoch + 1}..{config.epochs}",
                  flush=True)
        for epoch in range(self.start_epoch, config.epochs):
            start = time.perf_counter()
            losses, images_per_s = self.train_one_epoch(epoch)
            metrics = self.evaluate()
            row = dict(epoch=epoch + 1, **losses, **{k: v for k, v in metrics.items() if not k.endswith("per_class")},
                       lr=self.optimizer.param_groups[0]["lr"], images_per_s=images_per_s,
                       epoch_s=time.perf_counter() - start)
            self.history.append(row)
            if ctx.is_main and row["bbox_AP"] > self.best_ap:
                self.best_ap, self.best_epoch = row["bbox_AP"], epoch + 1
            self._save(epoch + 1)
            if ctx.is_main:
                masks = f"  segm AP {row['segm_AP']:.2f}" if "segm_AP" in row else ""
                print(f"epoch {epoch + 1}/{config.epochs}  loss {row['loss']:.4f}  bbox AP {row['bbox_AP']:.2f}"
                      f"{masks}  {images_per_s:.1f} img/s  {row['epoch_s']:.0f} s", flush=True)
        if ctx.is_main and self.history:
            plot_detection_curves(self.history, self.run_dir / "curves.png")
            print(f"best bbox AP {self.best_ap:.2f} at epoch {self.best_epoch}; checkpoints in {self.run_dir}/last "
                  f"and {self.run_dir}/best, metrics in {self.run_dir}/metrics.csv", flush=True)
        return self.history

    def train_one_epoch(self, epoch: int) -> tuple[dict, float]:
        """One pass over the training images; the mean of each loss over all processes, and images/s."""
        ctx = self.ctx
        self.sampler.set_epoch(epoch)
        self.ddp_model.train()
        steps = len(self.train_loader)
        sums, totals, logged_step, start = None, None, -1, time.perf_counter()
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{self.config.epochs}", leave=False,
                   disable=None if ctx.is_main else True)
        for step, (images, targets) in enumerate(bar):
            losses = self._step(images, targets, epoch * steps + step + 1)
            values = torch.stack([losses[k].detach().double() for k in sorted(losses)] + [sum(losses.values())
                                                                                          .detach().double()])
            sums = values if sums is None else sums + values
            if step % LOG_EVERY_STEPS == 0 or step == steps - 1:
                reduced = all_reduce_sum(sums, ctx) / ctx.world_size
                if not torch.isfinite(reduced).all():
                    raise DivergedError(f"the detection loss became {reduced[-1].item()} at epoch {epoch + 1}, step "
                                        f"{step + 1}; training stopped. {self._last_good()} Lower --lr or set "
                                        "--clip-grad.")
                totals = reduced if totals is None else totals + reduced
                sums = None
                rate = (step + 1) * self.global_batch / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{reduced[-1].item() / (step - logged_step):.4f}", img_s=f"{rate:.1f}",
                                refresh=False)
                logged_step = step
        names = sorted(losses) + ["loss"]
        means = {name: float(value) / steps for name, value in zip(names, totals)}
        return means, steps * self.global_batch / (time.perf_counter() - start)

    def _step(self, images: list, targets: list, num_updates: int) -> dict:
        device = self.ctx.device
        images = [image.to(device, non_blocking=True) for image in images]
        targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
        with torch.autocast(device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            losses = self.ddp_model(images, targets)
        loss = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.config.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step_update(num_updates=num_updates)
        return losses

    def evaluate(self) -> dict:
        """COCOeval of the model on the validation split (rank 0 scores every process's detections)."""
        from .inference import detect_dataset

        val_set = self.data.val_set
        check_dataset_classes(self.metadata, val_set)
        results = detect_dataset(self.model, val_set, self.config.batch_size, self.config.workers, self.val_sampler)
        gathered = [r for part in all_gather_objects(results, self.ctx) for r in part]
        if not self.ctx.is_main:
            return {}
        iou_types = ("bbox", "segm") if self.config.arch == "maskrcnn" else ("bbox",)
        return evaluate_results(val_set.coco, gathered, iou_types, image_ids=val_set.image_ids)

    def _last_good(self) -> str:
        last = self.run_dir / "last"
        if last.exists():
            return f"The last good checkpoint, {last} (epoch {len(self.history)}), is kept."
        return "No checkpoint was written yet."

    def _save(self, epoch: int) -> None:
        """Checkpoint ``epoch`` (rank 0), only when every weight is finite; ``last``/``best`` moved atomically."""
        rng_states = all_gather_objects(capture_rng_state(), self.ctx)
        if self.ctx.is_main:
            if ckpt.non_finite_count(self.model.state_dict()):
                raise DivergedError(f"after epoch {epoch} some weights are NaN or infinite; training stopped. "
                                    f"{self._last_good()} Lower --lr or set --clip-grad.")
            state = dict(epoch=epoch, optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                         scaler=self.scaler.state_dict() if self.scaler is not None else {}, rng=rng_states,
                         config=self.config.to_dict(), history=self.history, best_ap=self.best_ap,
                         best_epoch=self.best_epoch)
            metadata = dict(self.metadata, epoch=epoch, bbox_AP=self.history[-1]["bbox_AP"])
            directory = ckpt.save_checkpoint(self.run_dir, epoch, self.model, metadata, state)
            ckpt.point(self.run_dir / "last", directory)
            if self.best_epoch == epoch:
                ckpt.point(self.run_dir / "best", directory)
            ckpt.prune_checkpoints(self.run_dir)
            write_history(self.run_dir, self.history)
        barrier(self.ctx)
