"""Run reports: per-epoch metrics as CSV and JSON, training-curve and confusion-matrix PNGs."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import torch

from ..fileio import write_text_atomic
from ..plotting import pyplot, save_figure


def write_history(run_dir: str | os.PathLike, history: list[dict]) -> None:
    """Write ``metrics.csv`` and ``metrics.json`` (one row per epoch)."""
    run_dir = Path(run_dir)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(run_dir / "metrics.csv", buffer.getvalue())
    write_text_atomic(run_dir / "metrics.json", json.dumps(history, indent=1) + "\n")


def plot_curves(history: list[dict], path: str | os.PathLike) -> None:
    """Loss, accuracy and learning rate against epochs."""
    plt = pyplot()
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(13, 3.6))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], "o-", label="val")
    ax_loss.set(title="loss", xlabel="epoch")
    ax_loss.legend()
    ax_acc.plot(epochs, [r["top1"] for r in history], "o-", label="top-1")
    ax_acc.plot(epochs, [r["top5"] for r in history], "o-", label="top-5")
    ax_acc.set(title="val accuracy (%)", xlabel="epoch")
    ax_acc.legend()
    ax_lr.plot(epochs, [r["lr"] for r in history], "o-")
    ax_lr.set(title="learning rate (end of epoch)", xlabel="epoch")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_confusion(confusion: torch.Tensor, class_names: list[str], path: str | os.PathLike,
                   title: str = "confusion matrix") -> None:
    """Row-normalised confusion matrix (true class by row) with the counts written in each cell."""
    plt = pyplot()
    counts = confusion.double()
    rates = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.55 * n))
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black")
    save_figure(fig, path)
