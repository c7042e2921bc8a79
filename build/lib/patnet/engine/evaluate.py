"""Evaluation: loss, top-1/top-5 accuracy and the confusion matrix, summed over all processes."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .distributed import DistContext, all_reduce_sum


@dataclass
class EvalResult:
    loss: float
    top1: float  # percent
    top5: float  # percent (top-k with k = number of classes when there are fewer than 5)
    count: int
    confusion: torch.Tensor  # [true class, predicted class] counts

    def as_dict(self) -> dict:
        return {"val_loss": self.loss, "top1": self.top1, "top5": self.top5}


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader, num_classes: int, ctx: DistContext, channels_last: bool = False,
             autocast_dtype: torch.dtype | None = None) -> EvalResult:
    """Evaluate ``model`` on this process's shard of ``loader`` and combine the sums of all processes."""
    model.eval()
    k = min(5, num_classes)
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    hits = torch.zeros(2, dtype=torch.int64, device=ctx.device)  # top-1, top-k
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=ctx.device)
    for images, targets in loader:
        images, targets = images.to(ctx.device), targets.to(ctx.device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(ctx.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").double()
        top = logits.topk(k, dim=1).indices
        hits[0] += (top[:, 0] == targets).sum()
        hits[1] += (top == targets[:, None]).any(dim=1).sum()
        confusion += torch.bincount(targets * num_classes + top[:, 0],
                                    minlength=num_classes * num_classes).view(num_classes, num_classes)
    all_reduce_sum(loss_sum, ctx), all_reduce_sum(hits, ctx), all_reduce_sum(confusion, ctx)
    count = int(confusion.sum())
    return EvalResult(loss=float(loss_sum) / count, top1=100.0 * int(hits[0]) / count,
                      top5=100.0 * int(hits[1]) / count, count=count, confusion=confusion.cpu())
