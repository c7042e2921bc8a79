"""The training loop: any timm model by name, timm's optimizer, scheduler, Mixup/CutMix, EMA and losses,
DDP under ``torchrun``, and resumable checkpoints.

Resume semantics: checkpoints are written at the end of each epoch, with every process's RNG states.
A run stopped at any moment (even SIGKILL mid-epoch) and resumed from ``last`` repeats the interrupted
epoch from its start and, on the same machine and thread count, reaches bit-identical weights and metrics.
A run resumes in the folder that holds its checkpoint now (it may have been moved). An epoch whose weights
or validation loss are not finite stops the run before anything of it is written; a checkpoint that cannot
be written (full disk, read-only folder) stops it with the previous checkpoint intact.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch
from timm.utils import distribute_bn, random_seed
from tqdm import tqdm

from ..device import out_of_memory_errors
from ..errors import InvalidTypeError, InvalidValueError, UnwritablePathError
from ..fileio import make_directory
from . import builders
from . import checkpoint as ckpt
from .config import CONFIG_VERSION, TrainConfig, upgrade_config
from .distributed import DistContext, all_gather_objects, all_reduce_sum, barrier, init_distributed, shutdown
from .evaluate import evaluate
from .report import plot_confusion, plot_curves, write_history
from .rng import capture_rng_state, restore_rng_state

LOG_EVERY_STEPS = 10  # progress (and the loss check, which needs the loss of every process) every 10 steps


class NonFiniteLossError(InvalidValueError):
    """The training loss, the weights or the validation loss became NaN or infinite."""


def resume_config(path: str | os.PathLike, **overrides) -> TrainConfig:
    """The config a checkpoint was trained with, with ``overrides`` applied (e.g. more ``epochs``).

    The run continues where the checkpoint is: ``output`` becomes the run folder that holds it (``RUN``,
    ``RUN/last``, ``RUN/best`` and ``RUN/checkpoints/epoch-N`` all mean ``RUN``, wherever it was moved or
    copied), unless ``overrides`` gives another ``output``.
    """
    checkpoint_dir = ckpt.resolve_checkpoint(path)
    state = ckpt.load_state(checkpoint_dir)
    stored = upgrade_config(state["config"], state.get("config_version", 1))
    if overrides.get("output") is None:
        overrides["output"] = str(ckpt.run_directory(checkpoint_dir))
    config = TrainConfig.from_dict({**stored, **overrides})
    config.validate()
    return config


def train(config: TrainConfig, resume: str | os.PathLike | None = None) -> list[dict]:
    """Train as ``config`` says (continuing checkpoint ``resume`` if given); return the per-epoch metrics."""
    if not isinstance(config, TrainConfig):
        raise InvalidTypeError(f"train() takes a TrainConfig (e.g. make_config('quick', epochs=3)), got "
                               f"{type(config).__name__}")
    config.validate()
    ctx = init_distributed(config.device)
    try:
        return Run(config, ctx, resume).fit()
    finally:
        shutdown(ctx)


class Run:
    """One training run on one process; all processes of a DDP run hold one each."""

    def __init__(self, config: TrainConfig, ctx: DistContext, resume: str | os.PathLike | None):
        self.config, self.ctx = config, ctx
        self.run_dir = Path(config.output)
        if ctx.is_main:  # an output that cannot be written fails now, not after loading data and model
            make_directory(self.run_dir)
        random_seed(config.seed, ctx.rank)
        self.data = builders.build_data(config)
        self.classes = self.data.classes
        self.metadata = self.data.metadata(config)
        model = builders.build_model(config, self.data)
        state = self._load_resume_state(resume, model) if resume is not None else None
        self.model = builders.place_model(model, config, ctx)
        builders.check_batch_memory(self.model, config, self.data, ctx.device)
        self.ema = builders.build_ema(self.model, config)
        self.sampler, self.train_loader, self.val_loader = builders.build_loaders(config, self.data, ctx)
        self.global_batch = config.batch_size * ctx.world_size
        self.optimizer, self.scheduler = builders.build_optimization(config, self.model, self.global_batch,
                                                                     len(self.train_loader))
        self.mixup = builders.build_mixup(config, len(self.classes))
        self.criterion = builders.build_criterion(config, self.mixup is not None)
        self.autocast_dtype, self.scaler = builders.build_precision(config, ctx)
        self.start_epoch, self.history = 0, []
        self.best_top1, self.best_epoch = -1.0, 0
        if state is not None:
            self._restore_training_state(state)
        self.ddp_model = builders.wrap_ddp(self.model, ctx)

    def _load_resume_state(self, resume, model) -> dict:
        checkpoint_dir = ckpt.resolve_checkpoint(resume)
        meta = ckpt.read_metadata(checkpoint_dir / ckpt.WEIGHTS)
        if meta["model"] != self.config.model:
            raise InvalidValueError(f"checkpoint {checkpoint_dir} holds a {meta['model']} model, not "
                                    f"{self.config.model}; resume with --model {meta['model']} or start a new run "
                                    "in another --output")
        if meta["num_classes"] != len(self.classes):
            raise InvalidValueError(f"checkpoint {checkpoint_dir} was trained on {meta['num_classes']} classes but "
                                    f"--dataset {self.config.dataset} has {len(self.classes)}; resume on the same "
                                    "data or start a new run")
        if meta["class_names"] != self.classes:
            raise InvalidValueError(f"checkpoint {checkpoint_dir} was trained on classes {meta['class_names'][:5]}... "
                                    f"but the dataset has {self.classes[:5]}...; resume on the same data")
        state = ckpt.load_state(checkpoint_dir)
        if state["epoch"] >= self.config.epochs:
            raise InvalidValueError(f"checkpoint {checkpoint_dir} has already trained {state['epoch']} epoch(s) and "
                                    f"--epochs is {self.config.epochs}: nothing to do; pass --epochs N with "
                                    f"N > {state['epoch']} to train more")
        weights = ckpt.load_weights(checkpoint_dir / ckpt.WEIGHTS)
        ckpt.check_finite(weights, f"checkpoint {checkpoint_dir}", "resume from an earlier checkpoint or start again")
        ckpt.load_into(model, weights, checkpoint_dir / ckpt.WEIGHTS)
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
                raise InvalidValueError(f"{state['checkpoint_dir']} has no EMA weights; resume without --model-ema")
            ckpt.load_into(self.ema.module, ckpt.load_weights(ema_file), ema_file)
        self.start_epoch, self.history = state["epoch"], list(state["history"])
        self.best_top1, self.best_epoch = state["best_top1"], state["best_epoch"]
        rng_states = state["rng"]
        if len(rng_states) == self.ctx.world_size:
            restore_rng_state(rng_states[self.ctx.rank])
        else:
            random_seed(self.config.seed + 1000 * self.start_epoch, self.ctx.rank)
            if self.ctx.is_main:
                print(f"note: the checkpoint was written by {len(rng_states)} process(es), this run has "
                      f"{self.ctx.world_size}; training continues but will not replay the original run exactly")

    def fit(self) -> list[dict]:
        config, ctx = self.config, self.ctx
        if ctx.is_main:
            print(f"training {config.model} on {config.dataset} ({len(self.classes)} classes, "
                  f"{self.data.img_size}x{self.data.img_size}), {ctx.world_size} process(es) on {ctx.device}, "
                  f"global batch {self.global_batch}, epochs {self.start_epoch + 1}..{config.epochs}", flush=True)
        result = None
        for epoch in range(self.start_epoch, config.epochs):
            start = time.perf_counter()
            with out_of_memory_errors(f"training on batches of {config.batch_size}",
                                      "lower -b/--batch-size or --img-size, or use --amp"):
                train_loss, images_per_s = self.train_one_epoch(epoch)
                result, row = self._evaluate(epoch, train_loss)
            self._check_finite_result(epoch, result.loss)
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
            self._final_report(result)
        return self.history

    def _evaluate(self, epoch: int, train_loss: float):
        """Validation metrics of the model (and of its EMA) after ``epoch``, as a history row."""
        if self.ctx.distributed:
            distribute_bn(self.model, self.ctx.world_size, reduce=False)  # evaluate rank 0's BN statistics
        args = (self.val_loader, len(self.classes), self.ctx, self.config.channels_last, self.autocast_dtype)
        result = evaluate(self.model, *args)
        row = {"epoch": epoch + 1, "train_loss": train_loss, **result.as_dict()}
        if self.ema is not None:
            ema_result = evaluate(self.ema.module, *args)
            row.update(ema_top1=ema_result.top1, ema_top5=ema_result.top5)
        return result, row

    def _final_report(self, result) -> None:
        plot_curves(self.history, self.run_dir / "curves.png")
        if result is not None and len(self.classes) <= 20:
            plot_confusion(result.confusion, self.classes, self.run_dir / "confusion.png",
                           title=f"{self.config.model}, epoch {self.config.epochs}")
        print(f"best top1 {self.best_top1:.2f} at epoch {self.best_epoch}; checkpoints in {self.run_dir}/last "
              f"and {self.run_dir}/best, metrics in {self.run_dir}/metrics.csv", flush=True)

    def train_one_epoch(self, epoch: int) -> tuple[float, float]:
        """One pass over the training split; returns the mean loss over all processes and images/s."""
        ctx = self.ctx
        self.sampler.set_epoch(epoch)
        self.ddp_model.train()
        steps = len(self.train_loader)
        num_updates = epoch * steps
        loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)  # this process's, since the last log
        logged_sum, logged_step, start = 0.0, -1, time.perf_counter()
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{self.config.epochs}", leave=False,
                   disable=None if ctx.is_main else True)
        for step, (images, targets) in enumerate(bar):
            loss_sum += self._step(images, targets).detach().double()
            num_updates += 1
            self.scheduler.step_update(num_updates=num_updates)
            if self.ema is not None:
                self.ema.update(self.model, step=num_updates)
            if step % LOG_EVERY_STEPS == 0 or step == steps - 1:
                interval_sum = all_reduce_sum(loss_sum, ctx).item() / ctx.world_size
                loss_sum.zero_()
                self._check_finite(interval_sum, epoch, step)
                logged_sum += interval_sum
                self._log_progress(bar, interval_sum / (step - logged_step), epoch, step, steps, start)
                logged_step = step
        return logged_sum / steps, steps * self.global_batch / (time.perf_counter() - start)

    def _step(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Forward, backward and an optimizer step on one batch; returns this process's loss."""
        config, device = self.config, self.ctx.device
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if self.mixup is not None:
            images, targets = self.mixup(images, targets)
        if config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            loss = self.criterion(self.ddp_model(images), targets)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler(loss, self.optimizer, clip_grad=config.clip_grad, parameters=self.model.parameters())
        else:
            loss.backward()
            if config.clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.clip_grad)
            self.optimizer.step()
        return loss

    def _check_finite(self, loss_sum: float, epoch: int, step: int) -> None:
        if not math.isfinite(loss_sum):
            raise NonFiniteLossError(
                f"the training loss became {loss_sum} at epoch {epoch + 1}, step {step + 1}; training stopped. "
                f"{self._last_good()} Lower --lr, set --clip-grad, or turn off --amp.")

    def _log_progress(self, bar, loss: float, epoch: int, step: int, steps: int, start: float) -> None:
        """Show ``loss`` (the mean over all processes since the last log), learning rate and images/s."""
        rate = (step + 1) * self.global_batch / (time.perf_counter() - start)
        lr = self.optimizer.param_groups[0]["lr"]
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}", refresh=False)
        every = max(1, steps // (4 * LOG_EVERY_STEPS))  # no terminal: about four lines per epoch instead
        if bar.disable and self.ctx.is_main and step // LOG_EVERY_STEPS % every == 0:
            print(f"  epoch {epoch + 1} step {step + 1}/{steps}  loss {loss:.4f}  lr {lr:.2e}  {rate:.0f} img/s",
                  flush=True)

    def _check_finite_result(self, epoch: int, val_loss: float) -> None:
        """Stop, writing nothing, when the weights (or the EMA's) or the validation loss are not finite."""
        bad = ckpt.non_finite_count(self.model.state_dict())
        if self.ema is not None:
            bad += ckpt.non_finite_count(self.ema.module.state_dict())
        if bad or not math.isfinite(val_loss):
            what = f"{bad} weight tensors hold NaN or infinite values" if bad else f"the validation loss is {val_loss}"
            raise NonFiniteLossError(f"training diverged in epoch {epoch + 1}: {what}; no checkpoint was written for "
                                     f"it. {self._last_good()} Lower --lr, set --clip-grad, or turn off --amp.")

    def _last_good(self) -> str:
        last = self.run_dir / "last"
        if not last.exists():
            return "No checkpoint was written yet."
        epoch = ckpt.read_metadata(last / ckpt.WEIGHTS)["epoch"]
        return f"The last good checkpoint, {last} (epoch {epoch}), is kept."

    def _save(self, epoch: int) -> None:
        """Write checkpoint ``epoch`` (rank 0), point ``last`` (and ``best``) at it, drop older ones."""
        rng_states = all_gather_objects(capture_rng_state(), self.ctx)
        if self.ctx.is_main:
            state = dict(epoch=epoch, optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                         scaler=self.scaler.state_dict() if self.scaler is not None else {}, rng=rng_states,
                         config=self.config.to_dict(), config_version=CONFIG_VERSION, history=self.history,
                         best_top1=self.best_top1, best_epoch=self.best_epoch)
            metadata = dict(self.metadata, epoch=epoch, top1=self.history[-1]["top1"])
            try:
                directory = ckpt.save_checkpoint(self.run_dir, epoch, self.model, metadata, state,
                                                 self.ema.module if self.ema is not None else None)
                ckpt.point(self.run_dir / "last", directory)
                if self.best_epoch == epoch:
                    ckpt.point(self.run_dir / "best", directory)
                ckpt.prune_checkpoints(self.run_dir)
                write_history(self.run_dir, self.history)
            except UnwritablePathError as exc:
                raise UnwritablePathError(f"{exc}. {self._last_good()} Resume with `patnet train --resume "
                                          f"{self.run_dir}` once it can be written.") from None
        barrier(self.ctx)
